"""Checkpoint reading (torch alone), and MAC counting and a tensor-in,
tensor-out view of OpenMMLab models (both need mmengine: they are imported
when first used, so that ``import mmfca.utils`` needs torch alone)."""
import importlib
from typing import Any

from .serialization import (checkpoint_globals, load_checkpoint_file,
                            safe_globals)

#: Names that need mmengine, and the modules that define them.
_NEEDS_MMENGINE = {
    'complexity': '.mac_counting',
    'TensorForward': '.tensor_forward',
}

__all__ = [
    'complexity', 'checkpoint_globals', 'load_checkpoint_file', 'safe_globals',
    'TensorForward'
]


def __getattr__(name: str) -> Any:
    if name not in _NEEDS_MMENGINE:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    module = importlib.import_module(_NEEDS_MMENGINE[name], __name__)
    return getattr(module, name)
