"""The library versions mmfca's overrides of library internals were
verified with, checked where they are used.

A few mmfca classes override or read parts of mmengine, mmcv and timm that
are not public API (names with a leading underscore, or behaviour the
library does not document). Each such site says so in a one-line comment,
and its module calls :func:`check_verified` when it is imported: outside
the range in :data:`VERIFIED_VERSIONS`, a warning names the package, the
installed version and the verified range. It warns rather than refuses
because pyproject.toml already bounds what pip installs, and a newer
release usually keeps these parts: an error would stop environments that
work. Where an override would silently stop taking effect (the library no
longer has the private method it replaces), :func:`require_attribute`
raises instead.
"""
import re
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Dict, Optional, Set, Tuple

# Import name -> (distribution name, first verified version, first version
# not verified). mmfca was verified with mmengine 0.10.7, mmcv 2.1.0,
# mmpretrain 1.2.0, mmsegmentation 1.2.2, mmdet 3.3.0 and timm 1.0.31
# together; patch releases are taken to keep the internals. mmfca relies on
# no internals of mmpretrain, mmseg and mmdet today: they are listed as the
# set verified together.
VERIFIED_VERSIONS: Dict[str, Tuple[str, str, str]] = {
    'mmengine': ('mmengine', '0.10.7', '0.11.0'),
    'mmcv': ('mmcv', '2.1.0', '2.2.0'),
    'mmpretrain': ('mmpretrain', '1.2.0', '1.3.0'),
    'mmseg': ('mmsegmentation', '1.2.2', '1.3.0'),
    'mmdet': ('mmdet', '3.3.0', '3.4.0'),
    'timm': ('timm', '1.0.0', '1.1.0'),
    # Optional: the detectors' ONNX route (deployment.mmdeploy_compat).
    'mmdeploy': ('mmdeploy', '1.3.1', '1.4.0'),
}

_checked: Set[str] = set()


def installed_version(package: str) -> Optional[str]:
    """The installed version of ``package`` (an import name of
    :data:`VERIFIED_VERSIONS`), or None if it is not installed."""
    try:
        return version(VERIFIED_VERSIONS[package][0])
    except PackageNotFoundError:
        return None


def release(text: str) -> Tuple[int, ...]:
    """The release numbers of a version string, ``'2.1.0rc1'`` -> ``(2, 1,
    0)``: enough to place an installed version in a verified range (a
    pre-release of a verified version counts as that version)."""
    numbers = re.match(r'\d+(?:\.\d+)*', text)
    if numbers is None:
        raise ValueError(f'Cannot read the version {text!r}.')
    return tuple(int(part) for part in numbers.group().split('.'))


def verified_range(package: str) -> str:
    """The verified range of ``package``, as text."""
    _, low, high = VERIFIED_VERSIONS[package]
    return f'>={low}, <{high}'


def check_verified(package: str, relies_on: str) -> None:
    """Warn, once per package and process, when ``package`` is installed
    outside the range mmfca's use of its internals was verified with.

    Args:
        package (str): Import name, a key of :data:`VERIFIED_VERSIONS`.
        relies_on (str): What of it mmfca relies on, for the message.
    """
    if package not in VERIFIED_VERSIONS:
        raise KeyError(f'{package!r} has no verified range; add it to '
                       f'VERIFIED_VERSIONS in {__name__}.')
    if package in _checked:
        return
    _checked.add(package)
    installed = installed_version(package)
    if installed is None:
        return
    _, low, high = VERIFIED_VERSIONS[package]
    if release(low) <= release(installed) < release(high):
        return
    warnings.warn(
        f'mmfca relies on internals of {package} ({relies_on}, among '
        f'others) that were verified with {package} '
        f'{verified_range(package)}, but {installed} is installed. If '
        f'training, resuming or loading misbehaves, install a verified '
        f'version (see requirements.txt).',
        stacklevel=2)


def require_attribute(owner: type, name: str, package: str) -> None:
    """Refuse to go on when ``owner`` (a class of ``package``) lacks the
    private attribute ``name`` that mmfca overrides: the override would
    never be called.

    Raises:
        ImportError: naming the class, the attribute, the installed
            version and the verified range.
    """
    if not hasattr(owner, name):
        raise ImportError(
            f'mmfca overrides {owner.__module__}.{owner.__qualname__}.'
            f'{name}, which {package} {installed_version(package)} does '
            f'not have (verified: {package} {verified_range(package)}), so '
            f'the override would silently never run. Install a verified '
            f'version of {package}.')
