"""mmfca's OpenMMLab side: the backbone, the engine and the data helpers,
registered in mmengine's root registries (which the registries of
mmpretrain, mmseg and mmdet fall back to).

``import mmfca`` imports this module where mmengine is installed. Without
mmcv, the modules that need it (the backbone's norm layers, the image
loader) are registered as stand-ins that raise an ImportError naming mmcv
when a config builds them, so that a config never runs with something
silently missing.
"""
import importlib.util
from typing import Callable, List

#: The packages the OpenMMLab side needs, and how to get them.
REQUIRED = {
    'mmengine':
    'pip install "mmengine>=0.10.7,<0.11"',
    'mmcv': ('bash tools/setup_env.sh (mmcv 2.1.0 is built from its sdist '
             'with its ops; see docs/get_started.md)'),
}


def importable(name: str) -> bool:
    """Whether the top-level package ``name`` can be imported, without
    importing it (an import hook that refuses it counts as missing)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing_packages() -> List[str]:
    """The packages of :data:`REQUIRED` that cannot be imported."""
    return [name for name in REQUIRED if not importable(name)]


def require_openmmlab(what: str) -> None:
    """Raise an ImportError that names ``what``, the missing packages and
    how to install them, unless mmengine and mmcv are importable."""
    missing = missing_packages()
    if missing:
        how = '; '.join(f'{name}: {REQUIRED[name]}' for name in missing)
        raise ImportError(
            f'{what} needs {" and ".join(missing)}, which '
            f'{"is" if len(missing) == 1 else "are"} not installed ({how}). '
            f'The timm models need torch and timm alone: '
            f'timm.create_model("fcaformer_l2") after import mmfca.')


def _stand_in(name: str, what: str) -> Callable:
    """A builder registered as ``name`` that refuses, naming what is
    missing."""

    def build(*args, **kwargs):
        require_openmmlab(f"The config's {what} type={name!r}")

    build.__name__ = build.__qualname__ = name
    return build


def _register_without_mmcv() -> None:
    from mmengine.registry import MODELS, TRANSFORMS

    from .datasets import TRANSFORM_MODULES
    MODELS.register_module(
        'FcaFormer', module=_stand_in('FcaFormer', 'backbone'))
    for name in TRANSFORM_MODULES:
        TRANSFORMS.register_module(name, module=_stand_in(name, 'transform'))


#: The codebases whose base configs mmfca's configs inherit (``mmseg::``).
BASE_CONFIG_PACKAGES = ('mmpretrain', 'mmseg', 'mmdet')


def map_base_config_packages() -> None:
    """Point mmengine's config loader at the distribution that installed
    each codebase, so that ``mmseg::_base_/...`` resolves under OpenMMLab's
    ``mmsegmentation`` and OneDL's ``onedl-mmsegmentation`` alike (the same
    for mmdet and mmpretrain). The loader reads these bases before it runs a
    config's ``custom_imports``: this serves the tools that import mmfca
    first (mmfca's own ``tools/train.py`` and ``tools/test.py``). Only an
    entry naming a distribution that is not installed changes."""
    from importlib.metadata import PackageNotFoundError, version

    # mmengine.config.utils.MODULE2PACKAGE, the loader's import-name ->
    # distribution table (verified with mmengine 0.10.7, onedl 0.10.12).
    from mmengine.config.utils import MODULE2PACKAGE

    from .utils.versions import distribution_of
    for module in BASE_CONFIG_PACKAGES:
        mapped = MODULE2PACKAGE.get(module)
        if mapped is None:
            continue
        try:
            version(mapped)
            continue
        except PackageNotFoundError:
            found = distribution_of(module)
        if found is not None:
            MODULE2PACKAGE[module] = found


def register_all() -> None:
    """Register every OpenMMLab module of mmfca (mmengine must be
    importable)."""
    map_base_config_packages()
    from . import engine  # noqa: F401
    from .datasets import checks, seeded_sampling  # noqa: F401
    from .utils import mac_counting  # noqa: F401  counts attention MACs
    if not importable('mmcv'):
        _register_without_mmcv()
        return
    from .datasets import annotation_size, transforms  # noqa: F401
    from .models import backbones  # noqa: F401
