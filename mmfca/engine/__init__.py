from .amp import AnyDeviceAmpOptimWrapper
from .layer_decay import FcaFormerLearningRateDecayOptimizerConstructor

__all__ = [
    'AnyDeviceAmpOptimWrapper',
    'FcaFormerLearningRateDecayOptimizerConstructor'
]
