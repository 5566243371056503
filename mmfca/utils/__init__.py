"""Checkpoint reading (torch alone), MAC counting (needs mmengine) and a
tensor-in, tensor-out view of models (torch alone; OpenMMLab models where
their codebase is loaded). The last two are imported when first used, so
that ``import mmfca.utils`` needs torch alone."""
import importlib
from typing import Any

from .serialization import (checkpoint_globals, load_checkpoint_file,
                            safe_globals)

#: Names imported when first used, and the modules that define them.
_LAZY = {
    'complexity': '.mac_counting',
    'TensorForward': '.tensor_forward',
}

__all__ = [
    'complexity', 'checkpoint_globals', 'load_checkpoint_file', 'safe_globals',
    'TensorForward'
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    module = importlib.import_module(_LAZY[name], __name__)
    return getattr(module, name)
