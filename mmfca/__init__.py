"""mmfca: FcaFormer for timm, mmpretrain, mmsegmentation and mmdetection.

``import mmfca`` needs torch and timm alone: it registers FcaFormer's
classifiers in timm (``timm.create_model('fcaformer_l2')``). Where mmengine
is installed it also registers the OpenMMLab backbone, the training helpers,
the reliable runner and its hooks in mmengine's root registries, which
every codebase's registries fall back to (``custom_imports =
dict(imports=['mmfca'])`` in a config); see :mod:`mmfca.openmmlab`. It
imports none of mmpretrain, mmseg and mmdet.
"""
import importlib
from typing import Any

from .models import timm_models  # noqa: F401  registers fcaformer_l* in timm
from .openmmlab import importable, register_all
from .version import __version__  # noqa: F401

if importable('mmengine'):
    register_all()

#: The OpenMMLab classes ``mmfca.<name>`` gives, and their modules.
_OPENMMLAB_NAMES = {
    'FcaFormer': '.models.backbones',
    'AnyDeviceAmpOptimWrapper': '.engine',
    'FcaFormerLearningRateDecayOptimizerConstructor': '.engine',
    'ReliableRunner': '.engine',
    'SafeCheckpointHook': '.engine',
    'RNGStateHook': '.engine',
    'NonFiniteLossHook': '.engine',
    'LabelRangeHook': '.engine',
    'LoadImageFromFileOrSkip': '.datasets',
    'CheckAnnotationSize': '.datasets',
}

__all__ = ['__version__'] + list(_OPENMMLAB_NAMES)


def __getattr__(name: str) -> Any:
    if name not in _OPENMMLAB_NAMES:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    from .openmmlab import require_openmmlab
    require_openmmlab(f'mmfca.{name}')
    return getattr(
        importlib.import_module(_OPENMMLAB_NAMES[name], __name__), name)
