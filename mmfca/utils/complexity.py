"""Parameter and MAC counting with mmengine's complexity counter.

mmengine's ``FlopAnalyzer`` (fvcore's counter) has no handle for
:func:`torch.nn.functional.scaled_dot_product_attention`, so attention
matmuls would go uncounted; :func:`sdpa_macs` counts them as the two
matmuls they stand for (``q @ k^T`` and ``attn @ v``).
"""
from math import prod
from typing import Any, Dict, List

import torch
import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis.jit_handles import get_shape

from .tensor_forward import TensorForward


def sdpa_macs(inputs: List[Any], outputs: List[Any]) -> int:
    """MACs of ``scaled_dot_product_attention(q, k, v)``."""
    q, k, v = (get_shape(t) for t in inputs[:3])
    batch = prod(q[:-2])
    queries, dims = q[-2:]
    keys = k[-2]
    return batch * queries * keys * (dims + v[-1])


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
    analyzer.set_op_handle('aten::scaled_dot_product_attention', sdpa_macs)
    analyzer.unsupported_ops_warnings(False)
    analyzer.uncalled_modules_warnings(False)
    with torch.no_grad():
        macs = analyzer.total()
    return dict(params=parameter_count(model)[''], macs=macs)
