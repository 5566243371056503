from .hooks import (LabelRangeHook, NonFiniteLossHook, RNGStateHook,
                    SafeCheckpointHook)
from .optimizers import (AnyDeviceAmpOptimWrapper,
                         FcaFormerLearningRateDecayOptimizerConstructor)
from .runner import ReliableRunner, find_resumable_checkpoint

__all__ = [
    'AnyDeviceAmpOptimWrapper',
    'FcaFormerLearningRateDecayOptimizerConstructor', 'ReliableRunner',
    'SafeCheckpointHook', 'RNGStateHook', 'NonFiniteLossHook',
    'LabelRangeHook', 'find_resumable_checkpoint'
]
