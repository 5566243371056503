"""Deploy mode, as LeViT and RepVGG have it."""
import torch
import torch.nn as nn

from .attention import ForwardCrossAttention
from .blocks import ConvBN, ConvNeXtBlock, FeedForward
from .fast_paths import InferenceLinear


@torch.no_grad()
def fold_for_inference(model: nn.Module) -> nn.Module:
    """Deploy mode, as LeViT and RepVGG have it: every conv-BN pair of
    ``model`` becomes one convolution, every attention precomputes its
    bias mask and folds the affine of its cross tokens' LayerNorm into
    their key/value projection
    (:meth:`~mmfca.models.layers.ForwardCrossAttention.prepare_deploy`),
    and every linear layer (the first of each channel MLP with its GELU)
    runs as one oneDNN call where it runs on a CPU
    (:func:`~mmfca.models.layers.fast_paths.linear`). Outputs equal
    eval-mode outputs up to float rounding.

    Returns:
        nn.Module: ``model``, in eval mode.
    """
    model.eval()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, ConvBN):
                setattr(module, name, child.fuse())
            elif type(child) is nn.Linear:
                setattr(module, name, InferenceLinear.sharing(child))
        if isinstance(module, ForwardCrossAttention):
            module.prepare_deploy()
        if isinstance(module, (ConvNeXtBlock, FeedForward)):
            module.fused_linears = True
    return model
