"""Hooks that make training runs safe to interrupt and quick to fail.

:class:`~mmfca.engine.runner.ReliableRunner` installs all four; with the
stock Runner they can be listed in ``custom_hooks`` (and the checkpoint hook
in ``default_hooks.checkpoint``).
"""
import glob
import logging
import math
import os
import os.path as osp
import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.runner import IterBasedTrainLoop

TMP_MARK = '.tmp-'


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old or the new
    content, never a part of it."""
    tmp = f'{path}{TMP_MARK}{os.getpid()}'
    with open(tmp, 'w') as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


class SafeCheckpointHook(CheckpointHook):
    """mmengine's :class:`CheckpointHook`, with checkpoints that survive a
    crash while saving.

    The stock hook writes ``iter_N.pth`` in place, and with
    ``max_keep_ckpts`` deletes the oldest checkpoint *before* writing the
    new one, so a kill during the write can leave a truncated latest file
    and no intact one. Here, on a local disk, a checkpoint is written to a
    temporary name and renamed when complete, ``last_checkpoint`` is
    replaced atomically after it, and old checkpoints are removed only
    then. Leftover temporary files of a killed run are removed when the
    next run starts. Arguments are those of :class:`CheckpointHook`.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and self._is_local():
            for path in glob.glob(osp.join(self.out_dir, f'*{TMP_MARK}*')):
                print_log(f'Removing {path}, left by an interrupted save.',
                          logger='current')
                os.remove(path)

    def _is_local(self) -> bool:
        return self.file_client_args is None and isinstance(
            self.file_backend, LocalBackend)

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not self._is_local():
            return super()._save_checkpoint_with_step(runner, step, meta)
        expired = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            self.keep_ckpt_ids.append(step)
            while len(self.keep_ckpt_ids) > self.max_keep_ckpts:
                expired.append(self.keep_ckpt_ids.popleft())
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        tmp_name = f'{filename}{TMP_MARK}{os.getpid()}'
        runner.save_checkpoint(
            self.out_dir,
            tmp_name,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        os.replace(osp.join(self.out_dir, tmp_name), self.last_ckpt)
        atomic_write_text(
            osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in expired:
            path = osp.join(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.remove(path)


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


class NonFiniteLossHook(Hook):
    """Stop training at the first NaN or infinite loss, before anything is
    saved from the poisoned weights.

    Raises:
        FloatingPointError: Naming the iteration, the epoch, the losses that
            are not finite and the last checkpoint written.
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self,
                         runner,
                         batch_idx: int,
                         data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        bad = {}
        for name, value in (outputs or {}).items():
            if 'loss' not in name:
                continue
            value = float(value.detach() if isinstance(
                value, torch.Tensor) else value)
            if not math.isfinite(value):
                bad[name] = value
        if not bad:
            return
        last = runner.message_hub.get_info('last_ckpt') or 'none yet'
        losses = ', '.join(f'{name}={value}' for name, value in bad.items())
        raise FloatingPointError(
            f'Training stopped at iteration {runner.iter + 1} (epoch '
            f'{runner.epoch + 1}): {losses}. Nothing was saved from this '
            f'iteration; the last checkpoint is {last}. Lower the learning '
            f'rate, clip gradients (optim_wrapper.clip_grad) or check the '
            f'data, then resume with --resume.')


class LabelRangeHook(Hook):
    """Check every training batch's labels against the model's classes
    before the forward pass.

    A label map (mmseg) or class label (mmpretrain) with a class beyond
    ``num_classes`` otherwise ends in an index error deep in the loss, or
    trains on garbage. Segmentation labels equal to the decode head's
    ``ignore_index`` are allowed.

    Raises:
        ValueError: Naming the file, the offending classes and the fix.
    """

    priority = 'HIGH'

    @staticmethod
    def _classes(model):
        model = model.module if is_model_wrapper(model) else model
        decode_head = getattr(model, 'decode_head', None)
        if hasattr(decode_head, 'num_classes'):
            return 'gt_sem_seg', decode_head.num_classes, getattr(
                decode_head, 'ignore_index', 255)
        head = getattr(model, 'head', None)
        if head is not None and hasattr(head, 'num_classes'):
            return 'gt_label', head.num_classes, None
        return None

    def before_train_iter(self, runner, batch_idx: int,
                          data_batch=None) -> None:
        found = self._classes(runner.model)
        if found is None or not isinstance(data_batch, dict):
            return
        field, num_classes, ignore_index = found
        for sample in data_batch.get('data_samples', []):
            labels = getattr(sample, field, None)
            if labels is None:
                continue
            labels = getattr(labels, 'data', labels)
            wrong = (labels < 0) | (labels >= num_classes)
            if ignore_index is not None:
                wrong &= labels != ignore_index
            if bool(wrong.any()):
                self._refuse(sample, labels[wrong].unique().tolist(),
                             num_classes, ignore_index)

    @staticmethod
    def _refuse(sample, classes, num_classes, ignore_index):
        meta = sample.metainfo
        where = meta.get('seg_map_path') or meta.get('img_path') or \
            'a training sample'
        allowed = f'0..{num_classes - 1}'
        if ignore_index is not None:
            allowed += f' or the ignore index {ignore_index}'
            fix = ('set num_classes of the heads, map the labels '
                   '(reduce_zero_label, label_map) or mark those pixels '
                   f'{ignore_index}')
        else:
            fix = 'set the head\'s num_classes or fix the annotation'
        raise ValueError(
            f'{where} holds class(es) {classes[:10]}, but the model has '
            f'num_classes={num_classes} (allowed: {allowed}). Nothing was '
            f'trained on this batch; {fix}.')
