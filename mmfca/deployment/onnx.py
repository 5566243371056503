"""ONNX export of FcaFormer models, checked in onnxruntime."""
import warnings
from typing import Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..utils.tensor_forward import TensorForward


def prepared(model: nn.Module,
             dense: bool,
             device: Union[str, torch.device] = 'cpu') -> TensorForward:
    """Evaluation mode, deploy-mode backbone, on ``device``, wrapped for
    export: the classifier (images -> logits) or, ``dense``, the backbone
    (images -> stage outputs). The backbone is folded first and then moved,
    so every tensor its forward uses (folded convolutions, bias masks) ends
    on ``device``.

    Args:
        model (nn.Module): An mmpretrain classifier, or a segmentor /
            detector whose backbone is FcaFormer.
        dense (bool): Export only the backbone.
        device (str | torch.device): Where the model goes.
    """
    model.eval()
    backbone = getattr(model, 'backbone', None)
    if backbone is not None and hasattr(backbone, 'switch_to_deploy') and \
            not backbone.deploy:
        backbone.switch_to_deploy()
    output = 'backbone' if dense else 'tensor'
    return TensorForward(model, output).to(device).eval()


def export_onnx(model: nn.Module,
                path: str,
                shape: Tuple[int, int],
                dense: bool = False,
                dynamic: bool = False,
                device: Union[str, torch.device] = 'cpu') -> None:
    """Export to ``path``.

    Args:
        model (nn.Module): See :func:`prepared`.
        path (str): Output .onnx file.
        shape (tuple[int, int]): Input height and width of the example
            input (with ``dynamic``, any size works).
        dense (bool): Export the backbone instead of the classifier.
        dynamic (bool): Dynamic batch, height and width. This uses the
            TorchScript-based exporter (``dynamo=False``, ``dynamic_axes``):
            its trace records the window padding as arithmetic on the input
            size, so one file serves every input size. (With torch 2.14
            the torch.export-based exporter with symbolic ``Dim`` shapes
            specialises on the window counts of the example input, or does
            not finish in 15 minutes for an example with several windows.)
        device (str | torch.device): Where the model and the example input
            are traced (the file does not depend on it). Defaults to 'cpu'.
    """
    wrapper = prepared(model, dense, device)
    images = torch.randn(1, 3, *shape, device=device)
    with torch.no_grad(), warnings.catch_warnings():
        if not dynamic:
            torch.onnx.export(
                wrapper, (images, ), path, input_names=['images'], dynamo=True)
            return
        # The legacy exporter is deprecated in favour of torch.export but
        # is the one that handles these dynamic shapes.
        warnings.simplefilter('ignore', DeprecationWarning)
        outputs = wrapper(images)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        names = [f'output{i}' for i in range(len(outputs))]
        axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}}
        for name, output in zip(names, outputs):
            axes[name] = {0: 'batch'}
            if output.dim() == 4:
                axes[name].update({2: f'{name}_height', 3: f'{name}_width'})
        torch.onnx.export(
            wrapper, (images, ),
            path,
            input_names=['images'],
            output_names=names,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False)


def check_onnx(model: nn.Module,
               path: str,
               shape: Tuple[int, int],
               dense: bool = False,
               batch: int = 1,
               device: Union[str, torch.device] = 'cpu') -> float:
    """Largest absolute difference between onnxruntime (on the CPU) and
    PyTorch (on ``device``) on a random ``(batch, 3, *shape)`` input."""
    import onnxruntime
    wrapper = prepared(model, dense, device)
    images = torch.randn(batch, 3, *shape)
    with torch.no_grad():
        expected = wrapper(images.to(device))
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    expected = [tensor.float().cpu() for tensor in expected]
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    outputs = session.run(None, {'images': images.numpy()})
    return max(
        float(np.abs(out - ref.numpy()).max())
        for out, ref in zip(outputs, expected))
