"""ONNX export of FcaFormer models, checked in onnxruntime."""
from typing import Tuple

import numpy as np
import torch
import torch.nn as nn


class ExportWrapper(nn.Module):
    """What is exported: the classifier (images -> logits) or, ``dense``,
    the backbone (images -> stage outputs).

    Args:
        model (nn.Module): An mmpretrain classifier, or a segmentor /
            detector whose backbone is FcaFormer.
        dense (bool): Export only the backbone.
    """

    def __init__(self, model: nn.Module, dense: bool):
        super().__init__()
        self.model = model
        self.dense = dense

    def forward(self, images: torch.Tensor):
        if self.dense:
            return self.model.backbone(images)
        return self.model(images, mode='tensor')


def prepared(model: nn.Module, dense: bool) -> ExportWrapper:
    """Evaluation mode, deploy-mode backbone, wrapped for export."""
    model.eval()
    backbone = getattr(model, 'backbone', None)
    if backbone is not None and hasattr(backbone, 'switch_to_deploy') and \
            not backbone.deploy:
        backbone.switch_to_deploy()
    return ExportWrapper(model, dense).eval()


def export_onnx(model: nn.Module,
                path: str,
                shape: Tuple[int, int],
                dense: bool = False,
                dynamic: bool = False) -> None:
    """Export to ``path``.

    Args:
        model (nn.Module): See :class:`ExportWrapper`.
        path (str): Output .onnx file.
        shape (tuple[int, int]): Input height and width.
        dense (bool): Export the backbone instead of the classifier.
        dynamic (bool): Dynamic height and width (torch.export symbolic
            shapes). Experimental: with torch 2.14 the export of the
            windowed stages did not finish in 10 minutes here.
    """
    wrapper = prepared(model, dense)
    images = torch.randn(1, 3, *shape)
    dynamic_shapes = None
    if dynamic:
        height = torch.export.Dim('height', min=32, max=4096)
        width = torch.export.Dim('width', min=32, max=4096)
        dynamic_shapes = {'images': {2: height, 3: width}}
    with torch.no_grad():
        torch.onnx.export(
            wrapper, (images, ),
            path,
            input_names=['images'],
            dynamic_shapes=dynamic_shapes,
            dynamo=True)


def check_onnx(model: nn.Module, path: str, shape: Tuple[int, int],
               dense: bool = False) -> float:
    """Largest absolute difference between onnxruntime and PyTorch."""
    import onnxruntime
    wrapper = prepared(model, dense)
    images = torch.randn(1, 3, *shape)
    with torch.no_grad():
        expected = wrapper(images)
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    outputs = session.run(None, {'images': images.numpy()})
    return max(
        float(np.abs(out - ref.numpy()).max())
        for out, ref in zip(outputs, expected))
