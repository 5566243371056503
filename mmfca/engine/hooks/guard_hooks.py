"""Hooks that stop a training run at the first sign of bad numbers or
bad labels."""
import math
from typing import Optional

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
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
            value = float(
                value.detach() if isinstance(value, torch.Tensor) else value)
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


@HOOKS.register_module()
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

    def before_train_iter(self,
                          runner,
                          batch_idx: int,
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
