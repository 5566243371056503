"""Safe loading of weight files under torch's ``weights_only`` default.

Since torch 2.6, :func:`torch.load` unpickles only tensors, containers and
an allow-list of types. mmengine 0.10.7 stores a few of its own objects and
numpy values in every checkpoint (the message hub's history buffers, numpy
scalars), so resuming and testing its checkpoints fail with an
``UnpicklingError``. :func:`register_safe_globals` adds exactly those types
to torch's allow-list (it runs on ``import mmfca``), and in place of
``getattr`` a function that resolves only HistoryBuffer's statistics
methods; nothing executes code from a weights file.
"""
import argparse
import os
import pickle
from typing import Any

import numpy as np
import torch


def _numpy_globals() -> list:
    """numpy types that appear in pickled numpy scalars and arrays."""
    found = [np.ndarray, np.dtype]
    for module_name in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            module = __import__(module_name, fromlist=['_reconstruct'])
        except ImportError:
            continue
        for name in ('_reconstruct', 'scalar'):
            if hasattr(module, name):
                found.append(getattr(module, name))
        break
    # Per-dtype classes (numpy >= 1.25) used when a dtype is pickled.
    dtypes = getattr(np, 'dtypes', None)
    if dtypes is not None:
        found.extend(
            getattr(dtypes, name) for name in dir(dtypes)
            if name.endswith('DType') and isinstance(
                getattr(dtypes, name), type))
    return found


def _history_buffer_statistic(owner: Any, name: str) -> Any:
    """Stands in for ``getattr`` while unpickling.

    mmengine pickles a HistoryBuffer together with its statistics methods,
    as ``getattr(HistoryBuffer, 'mean')``; this resolves exactly those and
    refuses every other attribute lookup a file might ask for.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    # The four built-in statistics, and any registered with
    # HistoryBuffer.register_statistics in this process.
    allowed = {'min', 'max', 'current', 'mean'}
    allowed.update(HistoryBuffer._statistics_methods)
    if owner is HistoryBuffer and name in allowed:
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed in a weights file.')


def safe_globals() -> list:
    """Everything mmfca allows in weight files besides tensors."""
    from mmengine.logging.history_buffer import HistoryBuffer
    return [
        HistoryBuffer, argparse.Namespace,
        (_history_buffer_statistic, 'builtins.getattr')
    ] + _numpy_globals()


def register_safe_globals() -> None:
    """Allow-list the types mmengine and the official FcaFormer scripts
    store, for every :func:`torch.load` call with ``weights_only=True``."""
    torch.serialization.add_safe_globals(safe_globals())


def load_weights(path: str) -> Any:
    """Load a checkpoint file on the CPU with ``weights_only=True``.

    Args:
        path (str): Local checkpoint path.

    Raises:
        FileNotFoundError: The file does not exist.
        RuntimeError: The file is not a readable torch checkpoint (for
            example truncated), or holds objects outside the allow-list.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f'Checkpoint file not found: {path!r}. Check the path; official '
            f'FcaFormer ImageNet weights can be used as they are, or '
            f'converted with tools/model_converters/official_to_mmfca.py.')
    try:
        # Registered again at every load: the process-wide list is shared
        # with other libraries, whose ``safe_globals`` contexts remove what
        # they added on exit (timm's removes argparse.Namespace).
        register_safe_globals()
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as err:
        raise RuntimeError(
            f'Refusing to load {path!r}: it holds Python objects that are '
            f'not plain weights, so loading it could run code. torch says: '
            f'{err}') from err
    except (RuntimeError, EOFError) as err:
        raise RuntimeError(
            f'Cannot read checkpoint {path!r}: the file is truncated or not '
            f'a torch checkpoint ({err}). Download or save it again.'
        ) from err
