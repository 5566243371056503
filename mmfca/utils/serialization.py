"""Checkpoint files that torch's ``weights_only`` unpickler reads.

Since torch 2.6, :func:`torch.load` unpickles only tensors, containers and
an allow-list of types. mmengine 0.10.7's Runner stores a few of its own
objects and numpy values in every checkpoint (the message hub's history
buffers, numpy scalars; hooks may add numpy arrays) and the official
FcaFormer script an ``argparse.Namespace``.

- Writing: :func:`to_weights_only` stores those mmengine and numpy values
  as tensors in small tagged dicts, which :func:`from_weights_only` turns
  back into the same objects, bit for bit. mmfca's runner applies them to
  every checkpoint it writes and reads, so its checkpoints load with a plain
  ``torch.load(path, weights_only=True)`` (the codebases' own tools and
  inference APIs included) and resume exactly.
- Reading older files: :func:`load_checkpoint_file` reads local files, URLs
  and mmengine storage backends with ``weights_only=True`` unless the
  caller trusts the file, and allows the types above only while it reads
  (:func:`checkpoint_globals`); ``getattr`` is replaced by a function that
  resolves only HistoryBuffer's statistics methods, so nothing executes
  code from a weights file. The rest of the process, ``torch.load``
  included, is left as it is.

mmengine's own readers (``CheckpointLoader``) are not used: its main branch
passes ``weights_only=False`` to every ``torch.load``, which would load
anything a file holds.
"""
import argparse
import copy
import os.path as osp
import pickle
import re
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch

from ..openmmlab import importable
from .versions import check_verified

MapLocation = Optional[Union[str, torch.device, Callable, dict]]


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
            getattr(dtypes, name) for name in dir(dtypes) if
            name.endswith('DType') and isinstance(getattr(dtypes, name), type))
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
    # A private registry of HistoryBuffer (verified with mmengine 0.10.7).
    allowed.update(HistoryBuffer._statistics_methods)
    if owner is HistoryBuffer and name in allowed:
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed in a weights file.')


def safe_globals() -> list:
    """Everything mmfca allows in weight files besides tensors: mmengine's
    HistoryBuffer only where mmengine is installed (a file that holds one
    cannot be read without it anyway)."""
    allowed = [argparse.Namespace] + _numpy_globals()
    if importable('mmengine'):
        # What mmengine's checkpoints pickle, and HistoryBuffer's registry.
        check_verified('mmengine', 'the objects its checkpoints pickle')
        from mmengine.logging.history_buffer import HistoryBuffer
        allowed += [
            HistoryBuffer, (_history_buffer_statistic, 'builtins.getattr')
        ]
    return allowed


@contextmanager
def checkpoint_globals() -> Iterator[None]:
    """Allow :func:`safe_globals` in ``weights_only`` loads inside the
    block.

    Entries that were allowed before (by the user or another library) stay
    allowed afterwards: only what this context added is removed on exit.
    """
    before = set(torch.serialization.get_safe_globals())
    missing = [entry for entry in safe_globals() if entry not in before]
    with torch.serialization.safe_globals(missing):
        yield


# The key that marks a dict of :func:`to_weights_only` as a stored object.
TYPE_KEY = '__mmfca_type__'


def _numpy_to_tensor(value: Union[np.ndarray, np.generic]) -> Any:
    """A numpy array or scalar as a tensor of the same dtype and shape, or
    ``value`` itself for dtypes torch has not (strings, objects)."""
    try:
        return torch.from_numpy(np.array(value))
    except (TypeError, ValueError):
        return value


def _encode(value: Any) -> Any:
    from mmengine.logging.history_buffer import HistoryBuffer
    if isinstance(value, (np.ndarray, np.generic)):
        data = _numpy_to_tensor(value)
        if data is value:
            return value
        kind = 'ndarray' if isinstance(value, np.ndarray) else 'scalar'
        return {TYPE_KEY: f'numpy.{kind}', 'data': data}
    if isinstance(value, HistoryBuffer):
        # The buffer's fields (verified with mmengine 0.10.7); the
        # statistics methods are HistoryBuffer's class-wide registry.
        return {
            TYPE_KEY: 'mmengine.HistoryBuffer',
            'log_history': _encode(value._log_history),
            'count_history': _encode(value._count_history),
            'max_length': value.max_length
        }
    return value


def _decode(value: Any) -> Any:
    if not isinstance(value, dict) or TYPE_KEY not in value:
        return value
    kind = value[TYPE_KEY]
    if kind == 'numpy.ndarray':
        return value['data'].numpy()
    if kind == 'numpy.scalar':
        return value['data'].numpy()[()]
    if kind == 'mmengine.HistoryBuffer':
        from mmengine.logging.history_buffer import HistoryBuffer
        return HistoryBuffer(
            _decode(value['log_history']), _decode(value['count_history']),
            value['max_length'])
    return value


def _map_values(value: Any, function: Callable[[Any], Any]) -> Any:
    """``function`` applied to every value in nested dicts, lists and
    tuples, containers first. A container is copied only where a value in
    it changes: the rest, a model's state dict with its ``_metadata``
    included, is the caller's object."""
    value = function(value)
    if type(value) in (list, tuple):
        items = [_map_values(item, function) for item in value]
        if any(new is not old for new, old in zip(items, value)):
            return type(value)(items)
    elif isinstance(value, dict):
        changed = {}
        for key, item in value.items():
            new = _map_values(item, function)
            if new is not item:
                changed[key] = new
        if changed:
            value = copy.copy(value)
            value.update(changed)
    return value


def to_weights_only(checkpoint: Any) -> Any:
    """``checkpoint`` with the values that torch's ``weights_only``
    unpickler refuses stored as tensors.

    numpy arrays and scalars, and mmengine's ``HistoryBuffer`` (the message
    hub's logged scalars), become dicts marked with :data:`TYPE_KEY` that
    hold tensors of the same dtypes. ``checkpoint`` is not modified.

    Args:
        checkpoint: A checkpoint, as mmengine's ``Runner.save_checkpoint``
            builds it, or any nest of dicts, lists and tuples.

    Returns:
        The same structure, loadable with ``torch.load(weights_only=True)``
        and no allow-list, which :func:`from_weights_only` turns back.
    """
    return _map_values(checkpoint, _encode)


def from_weights_only(checkpoint: Any) -> Any:
    """The inverse of :func:`to_weights_only`: the numpy values and history
    buffers, exactly as they were saved. Values it did not store (an older
    checkpoint's pickled objects) are returned as they are.

    Args:
        checkpoint: A checkpoint as read from a file.
    """
    return _map_values(checkpoint, _decode)


def _read(filename: str, map_location: MapLocation, weights_only: bool,
          backend_args: Optional[dict]) -> Any:
    if filename.startswith(('http://', 'https://')):
        # Cached in torch's hub directory, as mmengine's http loader does.
        return torch.hub.load_state_dict_from_url(
            filename, map_location=map_location, weights_only=weights_only)
    is_uri = re.match(r'[a-zA-Z][\w+.-]*://', filename) is not None
    if not is_uri and not osp.isfile(filename):
        raise FileNotFoundError(
            f'Checkpoint file not found: {filename!r}. Check the path; '
            f'official FcaFormer weights can be used as they are, or '
            f'converted with tools/model_converters/official_to_mmfca.py.')
    if not is_uri and backend_args is None:
        return torch.load(
            filename, map_location=map_location, weights_only=weights_only)
    if not importable('mmengine'):
        raise ImportError(
            f'Reading {filename!r} needs one of mmengine\'s storage '
            f'backends, and mmengine is not installed: pip install '
            f'mmengine, or copy the file to a local path.')
    from mmengine.fileio import get_file_backend
    backend = get_file_backend(filename, backend_args=backend_args)
    with backend.get_local_path(filename) as path:
        return torch.load(
            path, map_location=map_location, weights_only=weights_only)


def load_checkpoint_file(filename: str,
                         map_location: MapLocation = None,
                         trusted: bool = False,
                         backend_args: Optional[dict] = None,
                         trust_option: Optional[str] = None) -> Any:
    """Read a checkpoint with ``weights_only=True`` and mmfca's allow-list.

    Args:
        filename (str): A local path, an ``http(s)://`` URL (downloaded once
            into torch's hub cache) or a URI of an mmengine storage backend
            (``s3://...`` with ``backend_args``).
        map_location: Where the tensors go, as in :func:`torch.load`.
            Defaults to None (where they were saved).
        trusted (bool): Unpickle whatever the file holds
            (``weights_only=False``). Only for files the user vouched for:
            unpickling can run code. Defaults to False.
        backend_args (dict, optional): Arguments of the storage backend, as
            in :func:`mmengine.fileio.get_file_backend`.
        trust_option (str, optional): How the user vouches for a file
            (e.g. ``'pass --trust-checkpoint'``), for the refusal message.

    Raises:
        FileNotFoundError: A local file does not exist.
        RuntimeError: The file holds objects outside the allow-list (and is
            not trusted), or is not a readable torch checkpoint (for example
            truncated).
    """
    try:
        if trusted:
            return _read(filename, map_location, False, backend_args)
        with checkpoint_globals():
            return _read(filename, map_location, True, backend_args)
    except pickle.UnpicklingError as err:
        if trusted:
            raise RuntimeError(
                f'Cannot read checkpoint {filename!r}: {err}') from err
        advice = f' If you trust the file, {trust_option}.' \
            if trust_option else ''
        raise RuntimeError(
            f'Refusing to load {filename!r}: it holds Python objects that '
            f'are not plain weights, so loading it could run code.{advice} '
            f'torch says: {str(err).splitlines()[0]}') from err
    except (RuntimeError, EOFError) as err:
        raise RuntimeError(
            f'Cannot read checkpoint {filename!r}: the file is truncated or '
            f'not a torch checkpoint ({err}). Download or save it again.'
        ) from err
