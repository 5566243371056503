"""Random generator states saved with every checkpoint, for exact
resumes."""
import logging
import random
from typing import Optional

import numpy as np
import torch
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from ...utils.versions import check_verified

check_verified('mmengine', 'how IterBasedTrainLoop resumes')


def capture_rng_states() -> dict:
    """The states of Python's, numpy's and torch's global generators."""
    states = dict(
        python=random.getstate(),
        numpy=np.random.get_state(),
        torch=torch.get_rng_state())
    if torch.cuda.is_available():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    """Set the global generators to ``states`` (from
    :func:`capture_rng_states`); CUDA states are skipped without a GPU."""
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states['cuda'])


class _RestoreAfterReplay:
    """Wraps an IterBasedTrainLoop's data iterator: after the ``replayed``
    batches that mmengine fetches again on resume (to advance the sampler),
    restore the generator states, so the first new batch is drawn exactly as
    in an uninterrupted run."""

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


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save the global random generator states in every checkpoint and
    restore them on resume.

    Drop path, random augmentations (with ``num_workers=0``) and the RoI
    samplers draw from the global torch, numpy and Python generators, which
    stock mmengine neither saves nor restores; with this hook a resumed run
    draws the same numbers as an uninterrupted one. Validation runs with the
    generators saved and put back, so it does not shift training's draws.
    In multi-process runs, rank 0's states are saved and every rank
    restores them.
    """

    priority = 'VERY_HIGH'

    def __init__(self):
        self._loaded: Optional[dict] = None
        self._before_val: Optional[dict] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['rng_states'] = capture_rng_states()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        self._loaded = checkpoint.get('rng_states')

    def before_train(self, runner) -> None:
        states, self._loaded = self._loaded, None
        if states is None or runner.iter == 0:
            # Nothing saved, or weights loaded to fine-tune, not resumed.
            return
        loop = runner.train_loop
        # IterBasedTrainLoop.run fetches loop.iter batches from
        # dataloader_iterator again on resume: verified with mmengine 0.10.7.
        if isinstance(loop, IterBasedTrainLoop) and loop.iter > 0:
            loop.dataloader_iterator = _RestoreAfterReplay(
                loop.dataloader_iterator, loop.iter, states)
            return
        restore_rng_states(states)
        if getattr(loop.dataloader, 'persistent_workers', False):
            print_log(
                'Resuming an epoch-based run with persistent data-loader '
                'workers: the new workers start from their first epoch\'s '
                'random state, so augmentations from here on differ from an '
                'uninterrupted run. For an exact resume set '
                'train_dataloader.persistent_workers=False.',
                logger='current',
                level=logging.WARNING)

    def before_val(self, runner) -> None:
        self._before_val = capture_rng_states()

    def after_val(self, runner) -> None:
        if self._before_val is not None:
            restore_rng_states(self._before_val)
            self._before_val = None
