"""Deploy mode, as LeViT and RepVGG have it, and the form a model takes in
a dynamo ONNX export."""
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from .attention import ForwardCrossAttention
from .blocks import ConvBN, ConvNeXtBlock, FcaBlock, FeedForward, Replaced
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


def _fold_layer_scales(model: nn.Module) -> Replaced:
    """Fold the layer scales of ``model``'s blocks into the linear layers
    before them and return what they replaced, to put back."""
    replaced: Replaced = []
    for block in list(model.modules()):
        if isinstance(block, FcaBlock):
            replaced += block.fold_layer_scales()
        elif isinstance(block, ConvNeXtBlock):
            replaced += block.fold_layer_scale()
    return replaced


@contextmanager
def onnx_export_form(model: nn.Module) -> Iterator[nn.Module]:
    """The form of ``model`` for a dynamo ONNX export
    (``torch.onnx.export(..., dynamo=True, opset_version=23)``), inside
    the context:

    * every attention is recorded as one ONNX Attention node
      (:meth:`~mmfca.models.layers.ForwardCrossAttention.onnx_attend`;
      opset 23 is the operator's first). The TorchScript-based exporter,
      and a torch.export for other runtimes, keep torch's attention, which
      exports at any opset, as every export outside the context does;
    * a deployed model's masks lose the keys that pad them to
      :data:`~mmfca.models.layers.attention.MASK_ALIGNMENT` (an alignment
      for torch's CUDA kernel): the file holds each at its real length
      and no node slices it;
    * the layer scales are folded into the linear layer before them (an
      FcaBlock's into ``attn.proj`` and ``ffn.fc2``, a ConvNeXt block's
      into ``pointwise_conv2``): one multiplication less per branch, the
      outputs equal up to float rounding.

    Everything is put back on leaving, the model's own parameters
    included, so that its state dict and deploy mode, which follows
    loaded weights, stay as they were.

    Args:
        model (nn.Module): The model to export, or a module holding it.

    Yields:
        nn.Module: ``model``.
    """
    replaced: Replaced = []
    try:
        for module in model.modules():
            if isinstance(module, ForwardCrossAttention):
                replaced += [(module, 'onnx_attention', module.onnx_attention),
                             (module, 'deploy_bias', module.deploy_bias)]
                module.onnx_attention = True
                if module.deploy_bias is not None:
                    module.deploy_bias = module.attention_bias().contiguous()
        replaced += _fold_layer_scales(model)
        yield model
    finally:
        for module, name, value in reversed(replaced):
            setattr(module, name, value)
