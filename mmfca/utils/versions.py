"""The library versions mmfca's overrides of library internals were
verified with, on either OpenMMLab stack, checked where the overrides run.

A few mmfca classes override or read parts of mmengine, mmcv, mmseg and
timm that are not public API (names with a leading underscore, or
behaviour the library does not document). Each such site says so in a
one-line comment and calls :func:`check_verified` when it is built or
called. The version is read from the imported module (``mmengine.__version__``)
and placed in the range verified for the distribution that installed it:
OpenMMLab's own (``mmengine``) or VBTI's maintained OneDL fork
(``onedl-mmengine``), which keeps the import names. Outside its range the
site refuses, naming the distribution, its version, the verified ranges
and the setting that opts in (:data:`OPT_IN`); opted in, it warns once and
runs. Where an override would silently stop taking effect (the library no
longer has the private method it replaces), :func:`require_attribute`
raises whatever the setting.
"""
import functools
import importlib
import importlib.util
import os
import re
import sys
import warnings
from importlib.metadata import packages_distributions
from typing import Dict, NamedTuple, Optional, Set, Tuple

#: Import name -> {distribution: (first verified version, first version not
#: verified)}. mmfca was verified with each stack as a set: mmengine 0.10.7,
#: mmcv 2.1.0, mmpretrain 1.2.0, mmsegmentation 1.2.2, mmdet 3.3.0
#: (requirements.txt), and onedl-mmengine 0.10.12, onedl-mmcv 2.3.6,
#: onedl-mmpretrain 1.3.6, onedl-mmsegmentation 1.4.2, onedl-mmdetection
#: 3.5.1 (requirements-onedl.txt), with timm 1.0.31 on both. OpenMMLab's
#: patch releases are taken to keep the internals; onedl-mmengine changed
#: how its loop resumes within 0.10.x, so its range is one release.
#: mmpretrain and mmdet have no internals mmfca relies on: they are listed
#: as the sets verified together.
VERIFIED_VERSIONS: Dict[str, Dict[str, Tuple[str, str]]] = {
    'mmengine': {
        'mmengine': ('0.10.7', '0.11.0'),
        'onedl-mmengine': ('0.10.12', '0.10.13'),
    },
    'mmcv': {
        'mmcv': ('2.1.0', '2.2.0'),
        'onedl-mmcv': ('2.3.6', '2.4.0'),
    },
    'mmpretrain': {
        'mmpretrain': ('1.2.0', '1.3.0'),
        'onedl-mmpretrain': ('1.3.6', '1.4.0'),
    },
    'mmseg': {
        'mmsegmentation': ('1.2.2', '1.3.0'),
        'onedl-mmsegmentation': ('1.4.2', '1.5.0'),
    },
    'mmdet': {
        'mmdet': ('3.3.0', '3.4.0'),
        'onedl-mmdetection': ('3.5.1', '3.6.0'),
    },
    'timm': {
        'timm': ('1.0.0', '1.1.0')
    },
    # Optional: the detectors' ONNX route (deployment.mmdeploy_compat).
    'mmdeploy': {
        'mmdeploy': ('1.3.1', '1.4.0')
    },
}
#: The environment variable that lets the overrides run on unverified
#: versions: import names separated by commas (``mmengine,mmcv``), or
#: ``all``.
OPT_IN = 'MMFCA_ALLOW_UNVERIFIED'

_warned: Set[str] = set()


class Installed(NamedTuple):
    """An imported package's version and the distribution that installed
    it."""
    #: The distribution (``onedl-mmengine``), or the import name where no
    #: installed distribution provides the package (a source checkout).
    distribution: str
    version: str

    def __str__(self) -> str:
        return f'{self.distribution} {self.version}'


@functools.lru_cache(maxsize=None)
def _providers() -> Dict[str, Tuple[str, ...]]:
    """Import name -> the installed distributions that provide it."""
    return {
        name: tuple(dists)
        for name, dists in packages_distributions().items()
    }


def distribution_of(package: str) -> Optional[str]:
    """The installed distribution that provides the import package
    ``package`` (``mmseg`` -> ``mmsegmentation`` or
    ``onedl-mmsegmentation``), preferring one :data:`VERIFIED_VERSIONS`
    knows; None if no installed distribution provides it."""
    providers = _providers().get(package, ())
    known = VERIFIED_VERSIONS.get(package, {})
    for name in providers:
        if name.lower() in known:
            return name.lower()
    return providers[0] if providers else None


def installed(package: str) -> Optional[Installed]:
    """The version of the import package ``package`` (a key of
    :data:`VERIFIED_VERSIONS`), read from its ``__version__`` (importing
    it if it is not imported yet), with its distribution; None if it
    cannot be imported."""
    module = sys.modules.get(package)
    if module is None:
        try:
            if importlib.util.find_spec(package) is None:
                return None
            module = importlib.import_module(package)
        except ImportError:
            return None
    version = getattr(module, '__version__', None)
    if not isinstance(version, str):
        raise RuntimeError(
            f'{package} ({getattr(module, "__file__", "?")}) has no '
            f'__version__ string, so mmfca cannot tell whether its '
            f'overrides of {package} were verified with it.')
    return Installed(distribution_of(package) or package, version)


def release(text: str) -> Tuple[int, ...]:
    """The release numbers of a version string, ``'2.1.0rc1'`` -> ``(2, 1,
    0)``: enough to place an installed version in a verified range (a
    pre-release of a verified version counts as that version)."""
    numbers = re.match(r'\d+(?:\.\d+)*', text)
    if numbers is None:
        raise ValueError(f'Cannot read the version {text!r}.')
    return tuple(int(part) for part in numbers.group().split('.'))


def verified_ranges(package: str) -> str:
    """The verified ranges of ``package``, as text, per distribution."""
    return '; '.join(f'{dist} >={low}, <{high}'
                     for dist, (low,
                                high) in VERIFIED_VERSIONS[package].items())


def is_verified(found: Installed, package: str) -> bool:
    """Whether ``found`` lies in the range verified for its distribution
    (a distribution without a range is not verified)."""
    bounds = VERIFIED_VERSIONS[package].get(found.distribution)
    if bounds is None:
        return False
    low, high = bounds
    return release(low) <= release(found.version) < release(high)


def opted_in(package: str) -> bool:
    """Whether :data:`OPT_IN` lets ``package``'s overrides run unverified."""
    names = {
        name.strip()
        for name in os.environ.get(OPT_IN, '').split(',') if name.strip()
    }
    return 'all' in names or package in names


def check_verified(package: str, relies_on: str) -> None:
    """Refuse to run an override of ``package``'s internals on a version
    outside the verified ranges, unless :data:`OPT_IN` names the package
    (then warn, once per package and process). Nothing is checked where
    ``package`` is not installed.

    Args:
        package (str): Import name, a key of :data:`VERIFIED_VERSIONS`.
        relies_on (str): What of it the caller relies on, for the message.

    Raises:
        RuntimeError: naming the distribution, its version, the verified
            ranges and the setting that opts in.
    """
    if package not in VERIFIED_VERSIONS:
        raise KeyError(f'{package!r} has no verified range; add it to '
                       f'VERIFIED_VERSIONS in {__name__}.')
    found = installed(package)
    if found is None or is_verified(found, package):
        return
    what = (f'mmfca relies on internals of {package} ({relies_on}) that '
            f'were verified with {verified_ranges(package)}, and {found} '
            f'is installed')
    if not opted_in(package):
        raise RuntimeError(
            f'{what}: mmfca refuses to run this part unverified. Install a '
            f'verified version (requirements.txt, or requirements-onedl.txt '
            f'for the OneDL forks), or set {OPT_IN}={package} (or all) to '
            f'run it anyway.')
    if package not in _warned:
        _warned.add(package)
        warnings.warn(
            f'{what}; running anyway because {OPT_IN} names {package}. If '
            f'training, resuming or loading misbehaves, install a verified '
            f'version.',
            stacklevel=2)


def require_attribute(owner: type, name: str, package: str) -> None:
    """Refuse to go on when ``owner`` (a class of ``package``) lacks the
    private attribute ``name`` that mmfca overrides: the override would
    never be called.

    Raises:
        ImportError: naming the class, the attribute, the installed
            version and the verified ranges.
    """
    if not hasattr(owner, name):
        raise ImportError(
            f'mmfca overrides {owner.__module__}.{owner.__qualname__}.'
            f'{name}, which {installed(package)} does not have (verified: '
            f'{verified_ranges(package)}), so the override would silently '
            f'never run. Install a verified version of {package}.')
