"""The whole mmseg segmentor as one exportable module, with adaptive average
pooling that stays exact for every input size of a dynamic export.

mmseg's UperNet pools its last feature map to 1, 2, 3 and 6 bins per side
(the PPM) with ``nn.AdaptiveAvgPool2d``. Traced for ONNX, torch records
that operator as an ``AveragePool`` with the kernel of the example input
(exact only where the map size divides by the bin count, and only at the
traced size), which is what mmdeploy's static exports do too.
:class:`ExactAdaptiveAvgPool2d` computes the same bins as two averaging
matrices built from the input size at run time (bin ``i`` of ``n`` over a
length ``L`` spans ``floor(i L / n)`` to ``ceil((i + 1) L / n)``, as
PyTorch's kernel), so the trace holds that arithmetic on the input size
and the exported file pools exactly at any size.
"""
import contextlib
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn as nn

from ..utils.tensor_forward import image_meta, is_segmentor
from ..utils.versions import check_verified


def averaging_matrix(length: torch.Tensor, bins: int,
                     like: torch.Tensor) -> torch.Tensor:
    """The ``(bins, length)`` matrix whose product with a vector of
    ``length`` values gives adaptive average pooling's ``bins`` means.

    Args:
        length: Input length; a traced size, so the matrix follows the
            input size in an export.
        bins (int): Output length.
        like (torch.Tensor): The matrix takes its dtype and device.
    """
    index = torch.arange(bins, device=like.device)
    start = torch.div(index * length, bins, rounding_mode='floor')
    end = torch.div(
        (index + 1) * length + bins - 1, bins, rounding_mode='floor')
    position = torch.arange(length, device=like.device)
    inside = (position[None] >= start[:, None]) & (
        position[None] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class ExactAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d`` as matrix products whose weights come from
    the input size at run time: the same bins and means (to float
    rounding), exported exactly for dynamic sizes.

    Args:
        output_size: As ``nn.AdaptiveAvgPool2d``'s (an int or a pair;
            ``None`` keeps that side's size).
    """

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        size = self.output_size
        out_h, out_w = (size, size) if isinstance(size, int) else size
        height, width = inputs.shape[-2:]
        if out_h is not None:
            rows = averaging_matrix(height, out_h, inputs)
            inputs = torch.matmul(rows, inputs)
        if out_w is not None:
            columns = averaging_matrix(width, out_w, inputs)
            inputs = torch.matmul(inputs, columns.t())
        return inputs


@contextlib.contextmanager
def exact_adaptive_pooling(model: nn.Module) -> Iterator[int]:
    """Within the context, every ``nn.AdaptiveAvgPool2d`` of ``model`` with
    an output larger than 1x1 is an :class:`ExactAdaptiveAvgPool2d` (1x1
    exports as ``GlobalAveragePool``, exact at any size); the original
    modules are put back on exit. Yields how many were swapped."""
    # mmseg's PPM (UPerHead, PSPHead) holds its pooling as
    # nn.AdaptiveAvgPool2d modules, swapped here for the export.
    check_verified('mmseg', 'PPM pools with nn.AdaptiveAvgPool2d modules')
    swapped: List[Tuple[nn.Module, str, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is not nn.AdaptiveAvgPool2d:
                continue
            size = child.output_size
            if size in (1, (1, 1)):
                continue
            setattr(parent, name, ExactAdaptiveAvgPool2d(size))
            swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def _single_channel_threshold(model: nn.Module) -> Optional[float]:
    """mmseg's rule for a one-channel head: sigmoid, then a threshold."""
    if model.out_channels > 1:
        return None
    return model.decode_head.threshold


class SegmentorForward(nn.Module):
    """An mmseg segmentor called on normalised images: what mmseg's
    whole-image inference gives (``test_cfg.mode='whole'``), logits at the
    input size as the ``seg_logits`` of ``predict``, or with ``argmax``
    the labels of its ``pred_sem_seg``.

    The images are the data preprocessor's output (normalised, RGB, as for
    the classifier and backbone exports). A config that tests by sliding
    windows (``mode='slide'``) runs this same computation on each crop, so
    a runtime crops, runs the file per crop and averages.

    Args:
        model (nn.Module): An mmseg ``EncoderDecoder``.
        argmax (bool): Output labels, ``(N, 1, H, W)`` int64, instead of
            logits ``(N, C, H, W)``.
    """

    def __init__(self, model: nn.Module, argmax: bool = False):
        super().__init__()
        if not is_segmentor(model):
            raise TypeError(
                f'A segmentor export needs an mmseg segmentor, got '
                f'{type(model).__name__}: use a segmentation config, or '
                f'export a classifier (no flag) or backbone (--dense).')
        self.model = model
        self.argmax = argmax

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        metas = [image_meta(images)] * images.shape[0]
        logits = model.encode_decode(images, metas)
        threshold = _single_channel_threshold(model)
        if threshold is not None:
            logits = logits.sigmoid()
            if self.argmax:
                return (logits > threshold).long()
            return logits
        if self.argmax:
            return logits.argmax(dim=1, keepdim=True)
        return logits


@contextlib.contextmanager
def whole_image_testing(model: nn.Module) -> Iterator[nn.Module]:
    """``model.test_cfg.mode`` is 'whole' within the context."""
    # Here, not at the top: the deployment modules import without mmengine
    # for models that are not mmseg's.
    from mmengine.config import ConfigDict
    original = model.test_cfg
    model.test_cfg = ConfigDict({**(original or {}), 'mode': 'whole'})
    try:
        yield model
    finally:
        model.test_cfg = original


def mmseg_inference(model: nn.Module,
                    images: torch.Tensor,
                    argmax: bool = False) -> torch.Tensor:
    """mmseg's own whole-image result for ``images``: the ``seg_logits``
    (or ``pred_sem_seg``) of ``model.predict``, stacked. The reference a
    segmentor export is checked against.

    Args:
        model (nn.Module): An mmseg segmentor.
        images (torch.Tensor): Normalised images, ``(N, 3, H, W)``.
        argmax (bool): Labels instead of logits.
    """
    from mmseg.structures import SegDataSample
    samples = [
        SegDataSample(metainfo=image_meta(images))
        for _ in range(images.shape[0])
    ]
    with whole_image_testing(model):
        samples = model.predict(images, samples)
    key = 'pred_sem_seg' if argmax else 'seg_logits'
    return torch.stack([sample.get(key).data for sample in samples])
