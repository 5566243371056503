"""Random generator states of every rank, saved with every checkpoint, for
exact resumes."""
import logging
import random
from typing import List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from ...datasets.seeded_sampling import (SeededDefaultSampler,
                                         SeededInfiniteSampler)
from ...utils.versions import check_verified
from ..runner.loops import RESUME_PROTOCOL, ResumableIterBasedTrainLoop


def capture_rng_states() -> dict:
    """The states of Python's, numpy's and torch's global generators, as
    tensors, numbers, strings and containers (a checkpoint holding them
    loads with ``torch.load(weights_only=True)``)."""
    version, python_state, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    states = dict(
        python=dict(
            version=version,
            state=torch.tensor(python_state, dtype=torch.int64),
            gauss_next=gauss_next),
        numpy=dict(
            name=name,
            key=torch.from_numpy(key.astype(np.int64)),
            pos=int(pos),
            has_gauss=int(has_gauss),
            cached_gaussian=float(cached_gaussian)),
        torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Set the global generators to ``states`` (from
    :func:`capture_rng_states`); CUDA states are skipped without a
    GPU."""
    python, numpy_state = states['python'], states['numpy']
    python = (python['version'], tuple(python['state'].cpu().tolist()),
              python['gauss_next'])
    numpy_state = (numpy_state['name'],
                   numpy_state['key'].cpu().numpy().astype(np.uint32),
                   numpy_state['pos'], numpy_state['has_gauss'],
                   numpy_state['cached_gaussian'])
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(states['torch'].cpu())
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state.cpu() for state in states['cuda']])


def checkpoint_due(runner, after_epoch: bool) -> bool:
    """Whether a :class:`~mmengine.hooks.CheckpointHook` of ``runner`` saves
    a checkpoint in this ``after_train_iter`` (or, with ``after_epoch``,
    ``after_train_epoch``): its own conditions, read from its attributes
    (verified with mmengine 0.10.7)."""
    for hook in runner.hooks:
        if not isinstance(hook,
                          CheckpointHook) or hook.by_epoch != after_epoch:
            continue
        if after_epoch:
            due = hook.every_n_epochs(runner, hook.interval, hook.save_begin) \
                or (hook.save_last and hook.is_last_train_epoch(runner))
        else:
            due = hook.every_n_train_iters(
                runner, hook.interval,
                hook.save_begin) or (hook.save_last
                                     and hook.is_last_train_iter(runner))
        if due:
            return True
    return False


class _RestoreAfterReplay:
    """Wraps the data iterator of mmengine's IterBasedTrainLoop: after the
    ``replayed`` batches it fetches again on resume (to advance the
    sampler; mmengine 0.10.7), or after its ``skip_iter`` (onedl-mmengine
    0.10.12), restore the generator states, so the first new batch is
    drawn as in an uninterrupted run (with ``num_workers=0``)."""

    def __init__(self, iterator, replayed: int, states: dict):
        self._iterator = iterator
        self._remaining = replayed
        self._states = states

    def __iter__(self):
        return self

    def __next__(self):
        if self._remaining == 0 and self._states is not None:
            restore_rng_states(self._states)
            self._states = None
        self._remaining -= 1
        return next(self._iterator)

    def skip_iter(self, num_iters: int) -> None:
        """The wrapped iterator's ``skip_iter``, counted as replayed
        batches: the states are restored before the next batch."""
        self._iterator.skip_iter(num_iters)
        # After a skip, onedl-mmengine's iterator creates its DataLoader
        # iterator at the next batch, which draws a base seed from the global
        # generator: create it now, before the states are restored (its
        # private _ensure_iterator, verified with onedl-mmengine 0.10.12).
        ensure = getattr(self._iterator, '_ensure_iterator', None)
        if ensure is not None:
            ensure()
        self._remaining -= num_iters


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save every rank's global random generator states in every checkpoint
    and restore each rank's own on resume.

    Drop path, batch augmentations in the data preprocessor (Mixup,
    CutMix) and the RoI samplers draw from the global torch, numpy and
    Python generators, which stock mmengine neither saves nor restores;
    with this hook a resumed run draws the same numbers as an uninterrupted
    one. Checkpoints are written by rank 0 only, so when a
    :class:`~mmengine.hooks.CheckpointHook` is about to save, the ranks
    gather their states to it first (one small collective per checkpoint).
    Validation runs with the generators saved and put back, so it does not
    shift training's draws.

    The data pipeline's draws are not these: with ``seeded_data_stream``
    (``configs/_base_/mmfca_runtime.py``) every sample is augmented with
    generators seeded from its place in the stream. Without it, with
    mmengine's IterBasedTrainLoop, the states are restored after the loop's
    replay of the batches already trained on.
    """

    priority = 'VERY_HIGH'

    def __init__(self):
        check_verified('mmengine', RESUME_PROTOCOL)
        self._loaded: Optional[dict] = None
        self._before_val: Optional[dict] = None
        # (iteration, states of every rank) gathered for the next save.
        self._gathered: Optional[tuple] = None

    def _gather_if_due(self, runner, after_epoch: bool) -> None:
        if get_world_size() > 1 and checkpoint_due(runner, after_epoch):
            self._gathered = (runner.iter,
                              all_gather_object(capture_rng_states()))

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs=None) -> None:
        self._gather_if_due(runner, after_epoch=False)

    def after_train_epoch(self, runner) -> None:
        self._gather_if_due(runner, after_epoch=True)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        world_size = get_world_size()
        if self._gathered is not None and self._gathered[0] == runner.iter:
            ranks: List[dict] = self._gathered[1]
        else:
            # Inside validation (a best checkpoint): training's states.
            ranks = [self._before_val or capture_rng_states()]
            if world_size > 1:
                print_log(
                    'RNGStateHook: this checkpoint is saved outside the '
                    'CheckpointHook schedule and holds rank 0\'s generator '
                    'states only; a resume from it is not exact on the '
                    'other ranks.',
                    logger='current',
                    level=logging.WARNING)
        self._gathered = None
        checkpoint['rng_states'] = dict(world_size=world_size, ranks=ranks)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = checkpoint.get('rng_states')

    def _own_states(self, saved: dict) -> Optional[dict]:
        """This rank's states in ``saved`` (None if it has none)."""
        rank, world_size = get_rank(), get_world_size()
        if saved['world_size'] != world_size:
            print_log(
                f'The checkpoint was written by {saved["world_size"]} '
                f'processes and the run resumes with {world_size}: ranks '
                f'below {len(saved["ranks"])} restore their generator '
                f'states, the others keep theirs, and the samples are '
                f'grouped into batches differently, so the run is not '
                f'exactly the uninterrupted one.',
                logger='current',
                level=logging.WARNING)
        ranks = saved['ranks']
        return ranks[rank] if rank < len(ranks) else None

    def before_train(self, runner) -> None:
        saved, self._loaded = self._loaded, None
        if saved is None or runner.iter == 0:
            # Nothing saved, or weights loaded to fine-tune, not resumed.
            return
        states = self._own_states(saved)
        if states is None:
            return
        loop = runner.train_loop
        # mmengine's IterBasedTrainLoop.run fetches loop.iter batches from
        # dataloader_iterator again on resume (0.10.7), or skips them with
        # its skip_iter (onedl-mmengine 0.10.12).
        if isinstance(loop, IterBasedTrainLoop) and loop.iter > 0 and \
                not isinstance(loop, ResumableIterBasedTrainLoop):
            loop.dataloader_iterator = _RestoreAfterReplay(
                loop.dataloader_iterator, loop.iter, states)
            return
        restore_rng_states(states)
        seeded = isinstance(loop.dataloader.sampler,
                            (SeededDefaultSampler, SeededInfiniteSampler))
        if getattr(loop.dataloader, 'persistent_workers', False) and \
                not seeded:
            print_log(
                'Resuming an epoch-based run with persistent data-loader '
                'workers: the new workers start from their first epoch\'s '
                'random state, so augmentations from here on differ from an '
                'uninterrupted run. For an exact resume set '
                'seeded_data_stream = True in the config.',
                logger='current',
                level=logging.WARNING)

    def before_val(self, runner) -> None:
        self._before_val = capture_rng_states()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            restore_rng_states(self._before_val)
            self._before_val = None
