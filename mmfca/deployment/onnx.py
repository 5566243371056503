"""ONNX export of FcaFormer models, checked in onnxruntime."""
import statistics
import time
import warnings
from typing import Dict, List, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..utils.tensor_forward import TensorForward
from .segmentor import (SegmentorForward, exact_adaptive_pooling,
                        mmseg_inference)


def _check_flags(dense: bool, segmentor: bool, argmax: bool) -> None:
    if dense and segmentor:
        raise ValueError('dense (the backbone) and segmentor (the whole '
                         'segmentor) exclude each other: pass one.')
    if argmax and not segmentor:
        raise ValueError('argmax (labels) applies to a segmentor export '
                         'only: pass segmentor=True (--segmentor).')


def prepared(model: nn.Module,
             dense: bool,
             device: Union[str, torch.device] = 'cpu',
             segmentor: bool = False,
             argmax: bool = False) -> nn.Module:
    """Evaluation mode, deploy-mode backbone, on ``device``, wrapped for
    export: the classifier (images -> logits), with ``dense`` the backbone
    (images -> stage outputs), with ``segmentor`` the whole mmseg
    segmentor (images -> logits or labels at the input size, see
    :class:`SegmentorForward`). The backbone is folded first and then
    moved, so every tensor its forward uses (folded convolutions, bias
    masks) ends on ``device``.

    Args:
        model (nn.Module): An mmpretrain classifier, or a segmentor /
            detector whose backbone is FcaFormer.
        dense (bool): Export only the backbone.
        device (str | torch.device): Where the model goes.
        segmentor (bool): Export the whole segmentor.
        argmax (bool): With ``segmentor``, labels instead of logits.
    """
    _check_flags(dense, segmentor, argmax)
    model.eval()
    backbone = getattr(model, 'backbone', None)
    if backbone is not None and hasattr(backbone, 'switch_to_deploy') and \
            not backbone.deploy:
        backbone.switch_to_deploy()
    if segmentor:
        wrapper = SegmentorForward(model, argmax)
    else:
        wrapper = TensorForward(model, 'backbone' if dense else 'tensor')
    return wrapper.to(device).eval()


def export_onnx(model: nn.Module,
                path: str,
                shape: Tuple[int, int],
                dense: bool = False,
                dynamic: bool = False,
                device: Union[str, torch.device] = 'cpu',
                segmentor: bool = False,
                argmax: bool = False) -> None:
    """Export to ``path``.

    Adaptive average pooling to more than one bin (UperNet's PPM) is
    exported as :class:`~mmfca.deployment.segmentor.ExactAdaptiveAvgPool2d`
    (exact at every input size); the model's own modules are put back
    afterwards.

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
        segmentor (bool): Export the whole mmseg segmentor: normalised
            images in, ``seg_logits`` (or with ``argmax`` ``labels``) at the
            input size out.
        argmax (bool): With ``segmentor``, output labels.
    """
    wrapper = prepared(model, dense, device, segmentor, argmax)
    images = torch.randn(1, 3, *shape, device=device)
    with torch.no_grad(), warnings.catch_warnings(), \
            exact_adaptive_pooling(model):
        if not dynamic:
            torch.onnx.export(
                wrapper, (images, ), path, input_names=['images'], dynamo=True)
            return
        # The legacy exporter is deprecated in favour of torch.export but
        # is the one that handles these dynamic shapes.
        warnings.simplefilter('ignore', DeprecationWarning)
        axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}}
        if segmentor:
            # Outputs at the input size.
            names = ['labels' if argmax else 'seg_logits']
            axes[names[0]] = axes['images']
        else:
            outputs = wrapper(images)
            if not isinstance(outputs, (list, tuple)):
                outputs = [outputs]
            names = [f'output{i}' for i in range(len(outputs))]
            for name, output in zip(names, outputs):
                axes[name] = {0: 'batch'}
                if output.dim() == 4:
                    axes[name].update({
                        2: f'{name}_height',
                        3: f'{name}_width'
                    })
        torch.onnx.export(
            wrapper, (images, ),
            path,
            input_names=['images'],
            output_names=names,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False)


def reference_outputs(model: nn.Module,
                      images: torch.Tensor,
                      dense: bool = False,
                      device: Union[str, torch.device] = 'cpu',
                      segmentor: bool = False,
                      argmax: bool = False) -> List[torch.Tensor]:
    """PyTorch's outputs for ``images`` (on the CPU): the classifier's or
    backbone's through :func:`prepared`, a segmentor's from mmseg's own
    ``predict`` (whole-image testing, ``seg_logits`` or ``pred_sem_seg``)
    rather than from the exported wrapper."""
    wrapper = prepared(model, dense, device, segmentor, argmax)
    with torch.no_grad():
        if segmentor:
            expected = mmseg_inference(model, images.to(device), argmax)
        else:
            expected = wrapper(images.to(device))
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    return [tensor.cpu() for tensor in expected]


def check_onnx(model: nn.Module,
               path: str,
               shape: Tuple[int, int],
               dense: bool = False,
               batch: int = 1,
               device: Union[str, torch.device] = 'cpu',
               segmentor: bool = False,
               argmax: bool = False) -> float:
    """Largest absolute difference between onnxruntime (on the CPU) and
    PyTorch (on ``device``, see :func:`reference_outputs`) on a random
    ``(batch, 3, *shape)`` input; with ``argmax``, the fraction of pixels
    whose label differs."""
    import onnxruntime
    images = torch.randn(batch, 3, *shape)
    expected = reference_outputs(model, images, dense, device, segmentor,
                                 argmax)
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    outputs = session.run(None, {'images': images.numpy()})
    if argmax:
        return float((outputs[0] != expected[0].numpy()).mean())
    return max(
        float(np.abs(out - ref.float().numpy()).max())
        for out, ref in zip(outputs, expected))


def time_onnx(model: nn.Module,
              path: str,
              shape: Tuple[int, int],
              rounds: int = 50,
              threads: int = 2,
              warmup: int = 3,
              dense: bool = False,
              segmentor: bool = False,
              argmax: bool = False) -> Dict[str, float]:
    """Time the exported file in onnxruntime against the PyTorch model it
    came from (as :func:`prepared` wraps it), on the CPU, batch 1.

    The two run in pairs, in alternating order, so a load change on a
    shared machine hits both calls of a pair alike.

    Args:
        model (nn.Module): The exported model.
        path (str): The .onnx file.
        shape (tuple[int, int]): Input height and width.
        rounds (int): Timed pairs.
        threads (int): Threads of both (``torch.set_num_threads`` and
            onnxruntime's intra-op threads; one inter-op thread).
        warmup (int): Untimed pairs first.
        dense, segmentor, argmax (bool): What was exported, see
            :func:`prepared`.

    Returns:
        dict: Median milliseconds of each, and the median, quartiles and
        range of the per-pair ratios onnxruntime / PyTorch.
    """
    import onnxruntime
    wrapper = prepared(model, dense, 'cpu', segmentor, argmax)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        path, options, providers=['CPUExecutionProvider'])
    images = torch.randn(1, 3, *shape)
    feed = {'images': images.numpy()}
    calls = {
        'onnxruntime': lambda: session.run(None, feed),
        'torch': lambda: wrapper(images),
    }
    times: Dict[str, List[float]] = {name: [] for name in calls}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for index in range(warmup + rounds):
                order = list(calls) if index % 2 else list(calls)[::-1]
                for name in order:
                    start = time.perf_counter()
                    calls[name]()
                    if index >= warmup:
                        times[name].append(
                            (time.perf_counter() - start) * 1000)
    finally:
        torch.set_num_threads(previous)
    ratios = [a / b for a, b in zip(times['onnxruntime'], times['torch'])]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method='inclusive')
    return dict(
        onnxruntime_ms=statistics.median(times['onnxruntime']),
        torch_ms=statistics.median(times['torch']),
        ratio=median,
        ratio_q1=q1,
        ratio_q3=q3,
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        rounds=rounds)
