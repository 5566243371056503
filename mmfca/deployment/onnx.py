"""ONNX export of FcaFormer models, checked, timed and inspected in ONNX
Runtime.

The export needs torch (and onnx, onnxscript); the checks and the
inspection helpers onnxruntime. A timm FcaFormer classifier is exported
where no OpenMMLab package is installed; a segmentor export needs mmseg.

Inspection: :func:`ort_session` builds a session at a stated graph
optimisation level (and can write the graph ORT runs), :func:`node_counts`
counts a graph's nodes by op type, and :func:`profile_shares` gives each op
type's share of the kernel time in ORT's own profile.
"""
import json
import statistics
import time
import warnings
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..models.layers import (ConvBN, ConvNeXtBlock, FcaBlock,
                             ForwardCrossAttention, fold_for_inference,
                             onnx_export_form)
from ..utils.tensor_forward import TensorForward
from .segmentor import (SegmentorForward, exact_adaptive_pooling,
                        mmseg_inference)

#: ``--ort-level`` names -> ORT's ``GraphOptimizationLevel`` members.
#: ``all`` adds the layout optimisations (NCHWc convolutions on x86) to
#: ``extended``.
ORT_LEVELS = {
    'disable': 'ORT_DISABLE_ALL',
    'basic': 'ORT_ENABLE_BASIC',
    'extended': 'ORT_ENABLE_EXTENDED',
    'all': 'ORT_ENABLE_ALL',
}
#: The fixed-size (torch.export-based) export's opset: the first with the
#: Attention operator that :func:`onnx_export_form` records.
FIXED_SIZE_OPSET = 23
#: The dynamic (TorchScript-based) export's opset.
DYNAMIC_OPSET = 17
#: The layers whose presence marks a module as (holding) an FcaFormer.
FCAFORMER_LAYERS = (ConvBN, ConvNeXtBlock, FcaBlock, ForwardCrossAttention)
#: The ONNX domains whose op types :func:`node_counts` writes bare.
DEFAULT_DOMAINS = ('', 'ai.onnx')


def _check_flags(dense: bool, segmentor: bool, argmax: bool) -> None:
    if dense and segmentor:
        raise ValueError('dense (the backbone) and segmentor (the whole '
                         'segmentor) exclude each other: pass one.')
    if argmax and not segmentor:
        raise ValueError('argmax (labels) applies to a segmentor export '
                         'only: pass segmentor=True (--segmentor).')


def to_deploy_form(model: nn.Module) -> nn.Module:
    """Fold ``model``'s FcaFormer for inference, in place: an OpenMMLab
    model's backbone (or the backbone itself) by its
    ``switch_to_deploy()``, once; any other module that holds FcaFormer
    layers (a timm ``fcaformer_l*`` classifier) by
    :func:`~mmfca.models.layers.fold_for_inference`. A module without
    FcaFormer layers (ConvNeXt, Swin) is left as it is: it has nothing to
    fold, and its own linear layers stay its own.

    Args:
        model (nn.Module): The model, in evaluation mode.

    Returns:
        nn.Module: ``model``.
    """
    for candidate in (getattr(model, 'backbone', None), model):
        if hasattr(candidate, 'switch_to_deploy'):
            if not getattr(candidate, 'deploy', False):
                candidate.switch_to_deploy()
            return model
    if any(isinstance(module, FCAFORMER_LAYERS) for module in model.modules()):
        fold_for_inference(model)
    return model


def prepared(model: nn.Module,
             dense: bool,
             device: Union[str, torch.device] = 'cpu',
             segmentor: bool = False,
             argmax: bool = False) -> nn.Module:
    """Evaluation mode, deploy form (see :func:`to_deploy_form`), on
    ``device``, wrapped for export: the classifier (images -> logits),
    with ``dense`` the backbone (images -> stage outputs), with
    ``segmentor`` the whole mmseg segmentor (images -> logits or labels at
    the input size, see :class:`SegmentorForward`). The model is folded
    first and then moved, so every tensor its forward uses (folded
    convolutions, bias masks) ends on ``device``.

    Args:
        model (nn.Module): An mmpretrain classifier, or a segmentor /
            detector whose backbone is FcaFormer, or a timm FcaFormer
            classifier (any module that takes a batch of images).
        dense (bool): Export only the backbone.
        device (str | torch.device): Where the model goes.
        segmentor (bool): Export the whole segmentor.
        argmax (bool): With ``segmentor``, labels instead of logits.
    """
    _check_flags(dense, segmentor, argmax)
    model.eval()
    to_deploy_form(model)
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

    A fixed-size export (the default) records the model in its ONNX export
    form (:func:`~mmfca.models.layers.onnx_export_form`): one Attention
    node per attention (opset 23), masks of their real length, the layer
    scales folded; whole windows stay partitioned. The model is put back
    afterwards.

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
            with onnx_export_form(wrapper):
                torch.onnx.export(
                    wrapper, (images, ),
                    path,
                    input_names=['images'],
                    opset_version=FIXED_SIZE_OPSET,
                    dynamo=True)
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
            opset_version=DYNAMIC_OPSET,
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
            onnxruntime's intra-op threads, which sleep when idle, see
            :func:`ort_session`; one inter-op thread).
        warmup (int): Untimed pairs first.
        dense, segmentor, argmax (bool): What was exported, see
            :func:`prepared`.

    Returns:
        dict: Median milliseconds of each, and the median, quartiles and
        range of the per-pair ratios onnxruntime / PyTorch.
    """
    wrapper = prepared(model, dense, 'cpu', segmentor, argmax)
    session = ort_session(path, threads)
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


def ort_session(path: str,
                threads: int = 2,
                level: str = 'all',
                optimized_path: Optional[str] = None,
                profile_prefix: Optional[str] = None,
                providers: Sequence[str] = ('CPUExecutionProvider', )):
    """An ONNX Runtime session of the file ``path``, its settings stated.

    Args:
        path (str): The .onnx file.
        threads (int): Intra-op threads; one inter-op thread. Idle threads
            sleep rather than spin, so a session timed in rounds with
            other calls does not take their cores.
        level (str): Graph optimisation level, a key of
            :data:`ORT_LEVELS` ('all', ORT's default, includes the layout
            optimisations).
        optimized_path (str, optional): Write the graph ORT runs (after
            its optimisations) to this .onnx file, to read what ORT made
            of the export (:func:`node_counts`). A graph optimised at
            'all' may hold layout nodes of this machine's CPU.
        profile_prefix (str, optional): Profile every run into a JSON file
            whose name starts with this prefix (ORT's own profiler,
            ``SessionOptions.enable_profiling``); ``end_profiling()``
            returns its name (see :func:`profile_shares`). The profiler
            costs time: profile a session of its own, not a timed one.
        providers (sequence): Execution providers, in order of preference.

    Returns:
        onnxruntime.InferenceSession: The session.
    """
    import onnxruntime
    if level not in ORT_LEVELS:
        raise ValueError(f'level must be one of {sorted(ORT_LEVELS)}, got '
                         f'{level!r}.')
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = getattr(
        onnxruntime.GraphOptimizationLevel, ORT_LEVELS[level])
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    if optimized_path is not None:
        options.optimized_model_filepath = optimized_path
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return onnxruntime.InferenceSession(
        path, options, providers=list(providers))


def _graph_nodes(graph) -> List:
    """The nodes of an ONNX graph and of the subgraphs its nodes hold
    (``If`` branches, ``Loop`` bodies)."""
    import onnx
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                nodes.extend(_graph_nodes(attribute.g))
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    nodes.extend(_graph_nodes(subgraph))
    return nodes


def _op_name(node) -> str:
    """A node's op type, after its domain where that is not the default
    one."""
    if node.domain in DEFAULT_DOMAINS:
        return node.op_type
    return f'{node.domain}:{node.op_type}'


def node_counts(model) -> Counter:
    """The nodes of an ONNX graph by op type: bare for the default domain,
    ``domain:op_type`` for others (``com.microsoft.nchwc:Conv``), nodes
    of subgraphs included, those of model-local functions not (the
    exporter inlines them).

    Args:
        model (str | onnx.ModelProto): An .onnx file (an export, or the
            graph an :func:`ort_session` wrote) or a loaded model.

    Returns:
        Counter: Op type -> number of nodes.
    """
    import onnx
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model), load_external_data=False)
    return Counter(_op_name(node) for node in _graph_nodes(model.graph))


def kernel_shares(events: Sequence[dict],
                  skip_runs: int = 0) -> Dict[str, float]:
    """Each op type's share of the kernel time in an ORT profile: the
    ``dur`` of its 'Node' ``*_kernel_time`` events over all of theirs,
    leaving out the first ``skip_runs`` runs (the 'Session' ``model_run``
    events mark them).

    Args:
        events (sequence): The profile's events (its JSON list).
        skip_runs (int): Untimed runs at the start (warm-up).

    Returns:
        dict: Op type (ORT's ``op_name``, without its domain) -> share,
        largest first; the shares sum to 1.

    Raises:
        ValueError: The profile holds no kernel event after the skipped
            runs (a session made without profiling, or no run profiled).
    """
    runs = sorted(
        event['ts'] for event in events
        if event.get('cat') == 'Session' and event.get('name') == 'model_run')
    if skip_runs and skip_runs >= len(runs):
        raise ValueError(f'The profile has {len(runs)} runs; cannot skip '
                         f'{skip_runs}.')
    begin = runs[skip_runs] if skip_runs else float('-inf')
    totals: Counter = Counter()
    for event in events:
        if event.get('cat') == 'Node' and event['ts'] >= begin and \
                event['name'].endswith('_kernel_time'):
            totals[event['args']['op_name']] += event['dur']
    total = sum(totals.values())
    if not total:
        raise ValueError('The profile holds no kernel time: profile a '
                         'session made with profile_prefix and run it.')
    return {op: value / total for op, value in totals.most_common()}


def profile_shares(session,
                   feed: Dict[str, np.ndarray],
                   runs: int = 20,
                   warmup: int = 3) -> Dict[str, float]:
    """Run a profiling session (:func:`ort_session` with
    ``profile_prefix``) ``warmup + runs`` times on ``feed``, end its
    profile and return :func:`kernel_shares` of the last ``runs`` runs.

    Args:
        session (onnxruntime.InferenceSession): Made with profiling on;
            its profile ends here (the file stays where the prefix put
            it).
        feed (dict): Input name -> array.
        runs (int): Profiled runs that count.
        warmup (int): Runs first that do not (first-run allocations).

    Returns:
        dict: Op type -> share of the kernel time, largest first.
    """
    for _ in range(warmup + runs):
        session.run(None, feed)
    with open(session.end_profiling()) as file:
        return kernel_shares(json.load(file), skip_runs=warmup)
