"""mmfca: FcaFormer for mmpretrain, mmsegmentation and mmdetection.

``import mmfca`` (or ``custom_imports = dict(imports=['mmfca'])`` in a
config) registers the FcaFormer backbone and the training helpers in the
registries of each installed codebase, and allow-lists mmengine's checkpoint
contents for torch's ``weights_only`` loading.
"""
from . import timm_models  # noqa: F401  registers fcaformer_l1..l4 in timm
from .engine import (AnyDeviceAmpOptimWrapper,
                     FcaFormerLearningRateDecayOptimizerConstructor)
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

__all__ = [
    'FcaFormer', 'AnyDeviceAmpOptimWrapper',
    'FcaFormerLearningRateDecayOptimizerConstructor', '__version__'
]
