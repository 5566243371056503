"""An OpenMMLab model as a module that takes nothing but a batch of images.

Counting FLOPs (a trace), exporting to ONNX and timing all call a model on
one image tensor, while mmpretrain, mmseg and mmdet models take data samples
and a ``mode``. :class:`TensorForward` is that call, for all three.

This module imports no OpenMMLab package: it recognises their models by
the classes of the modules already imported (a model of a codebase has
imported them), so it also wraps a plain module (a timm model) where
only torch is installed.
"""
import sys

import torch
import torch.nn as nn

OUTPUTS = ('tensor', 'predict', 'backbone')


def _is_instance(model: nn.Module, module: str, name: str) -> bool:
    """``isinstance(model, module.name)`` without importing ``module``: a
    model of that codebase has imported it already, and importing a
    codebase that is not in use would cost seconds."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(model, getattr(loaded, name))


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is an mmdet detector (it needs per-image meta
    information in every mode)."""
    return _is_instance(model, 'mmdet.models.detectors.base', 'BaseDetector')


def is_openmmlab_model(model: nn.Module) -> bool:
    """Whether ``model`` is an mmengine ``BaseModel`` (it takes a
    ``mode``)."""
    return _is_instance(model, 'mmengine.model', 'BaseModel')


def is_segmentor(model: nn.Module) -> bool:
    """Whether ``model`` is an mmseg segmentor."""
    return _is_instance(model, 'mmseg.models.segmentors.base', 'BaseSegmentor')


def image_meta(inputs: torch.Tensor) -> dict:
    """Meta information of an unscaled, unpadded image of the batch."""
    size = tuple(inputs.shape[-2:])
    return dict(
        img_shape=size,
        ori_shape=size,
        pad_shape=size,
        batch_input_shape=size,
        scale_factor=(1.0, 1.0),
        padding_size=[0, 0, 0, 0])


def detection_samples(inputs: torch.Tensor) -> list:
    """mmdet data samples for a batch of unscaled, unpadded images."""
    from mmdet.structures import DetDataSample
    return [
        DetDataSample(metainfo=image_meta(inputs))
        for _ in range(inputs.shape[0])
    ]


class TensorForward(nn.Module):
    """Calls an mmpretrain classifier, mmseg segmentor or mmdet detector (or
    any module that takes a batch of images) on an image tensor.

    Args:
        model (nn.Module): The model; a module that is not an OpenMMLab
            model is called on the images as it is.
        output (str): What the call computes.

            - ``'tensor'``: the network without post-processing
              (``mode='tensor'``; detectors get the meta information of
              unscaled, unpadded images): what the FLOP counter traces and
              what a classifier's ONNX export holds.
            - ``'predict'``: inference with post-processing where the
              codebase has it, as the benchmark times whole models:
              detectors' ``predict`` (NMS, boxes and masks at image size)
              and segmentors' ``inference`` (logits at image size);
              classifiers as ``'tensor'`` (their post-processing is a
              softmax).
            - ``'backbone'``: the model's backbone only (dense exports).

            Defaults to ``'tensor'``.
    """

    def __init__(self, model: nn.Module, output: str = 'tensor'):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(
                f'output must be one of {OUTPUTS}, got {output!r}.')
        self.model = model
        self.output = output

    def forward(self, inputs: torch.Tensor):
        model = self.model
        if self.output == 'backbone':
            return model.backbone(inputs)
        if is_detector(model):
            samples = detection_samples(inputs)
            if self.output == 'predict':
                return model.predict(inputs, samples)
            return model(inputs, samples, mode='tensor')
        if self.output == 'predict' and is_segmentor(model):
            return model.inference(inputs,
                                   [image_meta(inputs)] * inputs.shape[0])
        if is_openmmlab_model(model):
            return model(inputs, mode='tensor')
        return model(inputs)
