from .amp_optim_wrapper import (AnyDeviceAmpOptimWrapper,
                                accelerator_available, cpu_computes_bfloat16)
from .layer_decay_optim_wrapper_constructor import \
    FcaFormerLearningRateDecayOptimizerConstructor

__all__ = [
    'AnyDeviceAmpOptimWrapper',
    'FcaFormerLearningRateDecayOptimizerConstructor', 'accelerator_available',
    'cpu_computes_bfloat16'
]
