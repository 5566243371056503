"""mmfca: FcaFormer for mmpretrain, mmsegmentation, mmdetection and timm.

``import mmfca`` (or ``custom_imports = dict(imports=['mmfca'])`` in a
config) registers the FcaFormer backbone, the training helpers, the reliable
runner and its hooks in mmengine's root registries, which every codebase's
registries fall back to, and FcaFormer's classifiers in timm. It imports
neither mmseg nor mmdet.
"""
from .datasets import LoadImageFromFileOrSkip
from .engine import (AnyDeviceAmpOptimWrapper,
                     FcaFormerLearningRateDecayOptimizerConstructor,
                     LabelRangeHook, NonFiniteLossHook, ReliableRunner,
                     RNGStateHook, SafeCheckpointHook)
from .models import timm_models  # noqa: F401  registers fcaformer_l* in timm
from .models import FcaFormer
from .version import __version__

__all__ = [
    'FcaFormer', 'AnyDeviceAmpOptimWrapper',
    'FcaFormerLearningRateDecayOptimizerConstructor', 'ReliableRunner',
    'SafeCheckpointHook', 'RNGStateHook', 'NonFiniteLossHook',
    'LabelRangeHook', 'LoadImageFromFileOrSkip', '__version__'
]
