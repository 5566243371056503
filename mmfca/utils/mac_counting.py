"""Parameter and MAC counting with mmengine's complexity counter.

mmengine's ``FlopAnalyzer`` (fvcore's counter, which the ``get_flops.py``
tools of mmpretrain, mmseg and mmdet call through
:func:`mmengine.analysis.get_model_complexity_info`) has no handle for
:func:`torch.nn.functional.scaled_dot_product_attention`: it skips it with
an "Unsupported operator" warning, so attention matmuls go uncounted (the
FcaFormer-L2 classifier: 3.365G instead of 3.585G at 224x224).
:func:`sdpa_macs` counts them as the two matmuls they stand for
(``q @ k^T`` and ``attn @ v``), the convention the counter uses for
``aten::matmul``: one multiply-accumulate per product, softmax, scaling and
the additive mask not counted.

Importing this module (``import mmfca`` does) adds that handle, and an
activation handle, to the counter's default tables, so every
``FlopAnalyzer`` and ``ActivationAnalyzer`` counts attention, the
codebases' own tools included, where the installed mmengine is verified
(:func:`~mmfca.utils.versions.check_verified`; otherwise the tables stay
stock, with a warning that says so). :func:`complexity` sets the handle on
its analyzer explicitly, on any version.
"""
import warnings
from math import prod
from typing import Any, Dict, List

import torch
import torch.nn as nn
from mmengine.analysis import (FlopAnalyzer, complexity_analysis,
                               parameter_count)
from mmengine.analysis.jit_handles import generic_activation_jit, get_shape

from .tensor_forward import TensorForward
from .versions import check_verified

SDPA = 'aten::scaled_dot_product_attention'


def sdpa_macs(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of ``scaled_dot_product_attention(q, k, v)``: ``q @ k^T`` and
    ``attn @ v`` for every batch and head (a FlopAnalyzer op handle)."""
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = prod(q[:-2])
    queries, dims = q[-2:]
    keys = k[-2]
    return batch * queries * keys * (dims + v[-1])


def register_sdpa_handles() -> None:
    """Count attention in every mmengine complexity analyzer of this
    process (idempotent; an entry the library already has is kept)."""
    # Overrides a library internal: mmengine's default op-handle tables.
    check_verified('mmengine', 'FlopAnalyzer default op-handle tables')
    complexity_analysis._DEFAULT_SUPPORTED_FLOP_OPS.setdefault(SDPA, sdpa_macs)
    complexity_analysis._DEFAULT_SUPPORTED_ACT_OPS.setdefault(
        SDPA, generic_activation_jit())


try:
    register_sdpa_handles()
except RuntimeError as refusal:
    warnings.warn(f'{refusal} Until then, the codebases\' own complexity '
                  f'tools count no attention MACs (mmfca.utils.complexity '
                  f'does).')


def keep_all_proposals(cfg) -> None:
    """The counting convention for two-stage detectors: the RPN keeps its
    ``max_per_img`` proposals (1000 in the 3x configs; NMS, which costs no
    MACs, is set not to drop any) and every RoI stage sees all of them.
    Published MACs of Mask / Cascade R-CNN differ in how many proposals
    they assume, so state this when comparing."""
    rpn = cfg.model.get('test_cfg', {}).get('rpn')
    if rpn is not None:
        rpn.nms.iou_threshold = 1.0
        rpn.min_bbox_size = 0


def complexity(model: nn.Module, inputs: torch.Tensor) -> Dict[str, int]:
    """Count parameters and multiply-accumulates of one forward pass.

    Args:
        model (nn.Module): The model (evaluation mode is set here).
        inputs (torch.Tensor): A batch of images.

    Returns:
        dict: ``params`` and ``macs``.
    """
    model.eval()
    analyzer = FlopAnalyzer(TensorForward(model), (inputs, ))
    analyzer.set_op_handle(SDPA, sdpa_macs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    with torch.no_grad():
        macs = analyzer.total()
    return dict(params=parameter_count(model)[''], macs=macs)
