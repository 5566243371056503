"""mmfca: FcaFormer for mmpretrain, mmsegmentation and mmdetection.

``import mmfca`` (or ``custom_imports = dict(imports=['mmfca'])`` in a
config) registers the FcaFormer backbone, the training helpers, the reliable
runner and its hooks in the registries of each installed codebase, and
allow-lists mmengine's checkpoint contents for torch's ``weights_only``
loading.
"""
from . import timm_models  # noqa: F401  registers fcaformer_l1..l4 in timm
from .datasets import LoadImageFromFileOrSkip
from .engine import (AnyDeviceAmpOptimWrapper,
                     FcaFormerLearningRateDecayOptimizerConstructor,
                     LabelRangeHook, NonFiniteLossHook, ReliableRunner,
                     RNGStateHook, SafeCheckpointHook)
from .models import FcaFormer
from .registry import register_everywhere
from .serialization import register_safe_globals
from .version import __version__

register_safe_globals()
register_everywhere('MODELS', {'FcaFormer': FcaFormer})
register_everywhere('OPTIM_WRAPPER_CONSTRUCTORS', {
    'FcaFormerLearningRateDecayOptimizerConstructor':
    FcaFormerLearningRateDecayOptimizerConstructor
})
register_everywhere('RUNNERS', {'ReliableRunner': ReliableRunner})
register_everywhere(
    'HOOKS', {
        hook.__name__: hook
        for hook in (SafeCheckpointHook, RNGStateHook, NonFiniteLossHook,
                     LabelRangeHook)
    })
register_everywhere('TRANSFORMS',
                    {'LoadImageFromFileOrSkip': LoadImageFromFileOrSkip})

__all__ = [
    'FcaFormer', 'AnyDeviceAmpOptimWrapper',
    'FcaFormerLearningRateDecayOptimizerConstructor', 'ReliableRunner',
    '__version__'
]
