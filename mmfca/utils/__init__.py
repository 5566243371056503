from .complexity import complexity
from .serialization import load_weights, register_safe_globals, safe_globals
from .tensor_forward import TensorForward

__all__ = ['complexity', 'load_weights', 'register_safe_globals',
           'safe_globals', 'TensorForward']
