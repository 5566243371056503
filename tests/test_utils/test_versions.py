"""The versions mmfca's overrides of library internals were verified
with."""
import warnings

import pytest
from mmengine.utils import digit_version

from mmfca.utils import versions


@pytest.mark.parametrize('package', sorted(versions.VERIFIED_VERSIONS))
def test_the_suite_runs_on_verified_versions(package):
    """A suite that passes on a version outside the range verifies it:
    then widen the range."""
    installed = versions.installed_version(package)
    if installed is None:
        pytest.skip(f'{package} is not installed')
    _, low, high = versions.VERIFIED_VERSIONS[package]
    assert digit_version(low) <= digit_version(installed) < \
        digit_version(high)


def test_an_unverified_version_warns_once_naming_it(monkeypatch):
    monkeypatch.setattr(versions, '_checked', set())
    monkeypatch.setattr(versions, 'installed_version', lambda name: '0.11.2')
    with pytest.warns(
            UserWarning,
            match=r'internals of mmengine \(Runner fields, among others\) '
            r'.*mmengine >=0\.10\.7, <0\.11\.0, but 0\.11\.2 is installed'):
        versions.check_verified('mmengine', 'Runner fields')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        versions.check_verified('mmengine', 'Runner fields')
    with pytest.raises(KeyError, match='VERIFIED_VERSIONS'):
        versions.check_verified('torch', 'anything')


def test_a_private_method_the_library_lacks_is_an_error():

    class Hook:
        pass

    with pytest.raises(
            ImportError,
            match=r'Hook\._save_checkpoint_with_step, which mmengine '
            r'\S+ does not have .*never run'):
        versions.require_attribute(Hook, '_save_checkpoint_with_step',
                                   'mmengine')


@pytest.mark.parametrize('low, high', [('0.10.7', '0.10.12'),
                                       ('0.10.12', '0.11.0'),
                                       ('2.1.0', '2.3.6'), ('1.0.9', '1.0.31'),
                                       ('2.2.0rc1', '2.3.0')])
def test_releases_order_as_mmengine_orders_them(low, high):
    """mmfca reads versions without mmengine (the timm side needs torch and
    timm alone); its order is mmengine's."""
    assert digit_version(low) < digit_version(high)
    assert versions.release(low) < versions.release(high)
    assert versions.release('2.1.0') == (2, 1, 0)
    with pytest.raises(ValueError, match="Cannot read the version 'dev'"):
        versions.release('dev')
