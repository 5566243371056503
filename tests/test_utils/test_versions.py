"""The versions mmfca's overrides of library internals were verified with,
on either stack (OpenMMLab's releases or the OneDL forks), read from the
imported modules."""
import importlib
import warnings
from importlib.metadata import version

import mmengine
import pytest
from mmengine.utils import digit_version

from mmfca.utils import versions


@pytest.mark.parametrize('package', sorted(versions.VERIFIED_VERSIONS))
def test_the_suite_runs_on_verified_versions(package):
    """A suite that passes on a version outside the ranges verifies it:
    then widen the range of its distribution."""
    found = versions.installed(package)
    if found is None:
        pytest.skip(f'{package} cannot be imported')
    module = importlib.import_module(package)
    assert found.version == module.__version__
    # The distribution named is the one that installed the module.
    assert version(found.distribution) == module.__version__
    low, high = versions.VERIFIED_VERSIONS[package][found.distribution]
    assert digit_version(low) <= digit_version(found.version) < \
        digit_version(high)


def test_the_engine_and_mmcv_come_from_one_stack():
    """Both stacks write the same import packages: an environment that
    mixes them runs neither as verified."""
    names = {versions.installed(p).distribution for p in ('mmengine', 'mmcv')}
    assert names in ({'mmengine', 'mmcv'}, {'onedl-mmengine', 'onedl-mmcv'})


def fake_version(monkeypatch, text: str, distribution=None):
    monkeypatch.setattr(mmengine, '__version__', text)
    if distribution is not None:
        monkeypatch.setattr(versions, 'distribution_of',
                            lambda package: distribution)
    monkeypatch.delenv(versions.OPT_IN, raising=False)
    monkeypatch.setattr(versions, '_warned', set())


@pytest.mark.parametrize('distribution, text', [('mmengine', '0.11.2'),
                                                ('onedl-mmengine', '0.10.11'),
                                                ('onedl-mmengine', '0.10.13')])
def test_an_unverified_version_refuses_naming_it_and_the_opt_in(
        monkeypatch, distribution, text):
    fake_version(monkeypatch, text, distribution)
    with pytest.raises(
            RuntimeError,
            match=rf'internals of mmengine \(Runner fields\) that were '
            rf'verified with mmengine >=0\.10\.7, <0\.11\.0; '
            rf'onedl-mmengine >=0\.10\.12, <0\.10\.13, and {distribution} '
            rf'{text} is installed: mmfca refuses .* set '
            rf'MMFCA_ALLOW_UNVERIFIED=mmengine \(or all\)'):
        versions.check_verified('mmengine', 'Runner fields')
    with pytest.raises(KeyError, match='VERIFIED_VERSIONS'):
        versions.check_verified('torch', 'anything')


@pytest.mark.parametrize('setting', ['mmengine', 'mmcv, mmengine', 'all'])
def test_the_opt_in_runs_it_warning_once(monkeypatch, setting):
    fake_version(monkeypatch, '0.11.2')
    monkeypatch.setenv(versions.OPT_IN, setting)
    with pytest.warns(
            UserWarning,
            match=r'0\.11\.2 is installed; running '
            r'anyway because MMFCA_ALLOW_UNVERIFIED names'):
        versions.check_verified('mmengine', 'Runner fields')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        versions.check_verified('mmengine', 'Runner fields')
    monkeypatch.setenv(versions.OPT_IN, 'mmcv')
    with pytest.raises(RuntimeError, match='refuses'):
        versions.check_verified('mmengine', 'Runner fields')


def test_the_overrides_refuse_when_built(monkeypatch):
    """Each override checks where it runs (not at import, so that
    ``import mmfca`` and the timm models stay usable)."""
    from mmfca.datasets import SeededDefaultSampler, SeededInfiniteSampler
    from mmfca.engine.hooks import RNGStateHook, SafeCheckpointHook
    fake_version(monkeypatch, '0.11.2')
    for build in (RNGStateHook, SafeCheckpointHook,
                  lambda: SeededInfiniteSampler(list(range(4))),
                  lambda: SeededDefaultSampler(list(range(4)))):
        with pytest.raises(RuntimeError, match='mmengine 0.11.2'):
            build()
    monkeypatch.setattr(
        mmengine, '__version__', versions.VERIFIED_VERSIONS['mmengine'][
            versions.distribution_of('mmengine')][0])
    RNGStateHook()


def test_a_private_method_the_library_lacks_is_an_error():

    class Hook:
        pass

    with pytest.raises(
            ImportError,
            match=r'Hook\._save_checkpoint_with_step, which '
            r'(onedl-)?mmengine [\d.]+ does not have .*never run'):
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


def test_base_configs_resolve_under_the_installed_distribution(monkeypatch):
    """``mmseg::`` bases: mmengine's loader looks the codebase up by the
    distribution in its table, which names OpenMMLab's; mmfca points it at
    the one installed, and the loader then finds the base file."""
    from mmengine.config import Config
    from mmengine.config.utils import MODULE2PACKAGE

    from mmfca.openmmlab import map_base_config_packages
    installed = versions.installed('mmseg').distribution
    monkeypatch.setitem(MODULE2PACKAGE, 'mmseg', 'no-such-distribution')
    with pytest.raises(ModuleNotFoundError, match='no-such-distribution'):
        Config._get_cfg_path('mmseg::_base_/default_runtime.py', '')
    map_base_config_packages()
    assert MODULE2PACKAGE['mmseg'] == installed
    path, scope = Config._get_cfg_path('mmseg::_base_/default_runtime.py', '')
    assert scope == 'mmseg' and path.endswith('default_runtime.py')
