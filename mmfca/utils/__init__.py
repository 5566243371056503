from .complexity import complexity
from .serialization import (checkpoint_globals, load_checkpoint_file,
                            safe_globals)
from .tensor_forward import TensorForward

__all__ = [
    'complexity', 'checkpoint_globals', 'load_checkpoint_file', 'safe_globals',
    'TensorForward'
]
