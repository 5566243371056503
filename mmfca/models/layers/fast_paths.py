"""CPU fast paths: the same maths as the plain torch calls, faster or
lighter on a CPU, behind one switch.

The plain path is the reference: ``F.linear`` and ``F.gelu`` for the channel
MLPs, :func:`torch.nn.functional.scaled_dot_product_attention` for the
attention. Three replacements apply only where they are exact up to float
rounding and where torch's own tools do not see them (eager mode, not
traced, exported, scripted or compiled):

* deploy mode on a CPU, float32 inference: every linear layer, the first
  of each channel MLP with its GELU, as one oneDNN call (:func:`linear`,
  :class:`InferenceLinear`);
* eager training outside autocast: a channel MLP keeps GELU's input only
  and recomputes its output in the backward pass (:class:`GeluLinear`);
* eager training on a CPU: attention with a learned bias through torch's
  fused kernel, the backward recomputing one block's probabilities
  (:class:`LearnedBiasAttention`), where torch would take its math path
  and keep every block's.

The switch: :func:`use_fast_paths` (a context manager, or call
:func:`set_fast_paths`), or ``MMFCA_FAST_PATHS=0`` in the environment at
import, turns all three off, so that the plain path runs everywhere.
"""
import os
from contextlib import contextmanager
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tracing import records_graph

_enabled = os.environ.get('MMFCA_FAST_PATHS', '1') != '0'


def fast_paths_enabled() -> bool:
    """Whether the CPU fast paths may run (see the module docstring)."""
    return _enabled


def set_fast_paths(enabled: bool) -> None:
    """Turn the CPU fast paths on or off for the whole process."""
    global _enabled
    _enabled = bool(enabled)


@contextmanager
def use_fast_paths(enabled: bool) -> Iterator[None]:
    """Turn the CPU fast paths on or off inside the block (e.g. ``with
    use_fast_paths(False):`` to run the plain reference path)."""
    before = _enabled
    set_fast_paths(enabled)
    try:
        yield
    finally:
        set_fast_paths(before)


def eager_training(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a call on ``x`` trains ``weight`` in eager mode outside
    autocast, with the fast paths on: where the memory-saving autograd
    functions apply."""
    if not _enabled or records_graph() or not torch.is_grad_enabled():
        return False
    device = x.device.type
    return weight.requires_grad and not (
        torch.amp.is_autocast_available(device)
        and torch.is_autocast_enabled(device))


# torch.ops.mkldnn._linear_pointwise is the private op that inductor lowers
# CPU linear layers and linear-GELU pairs to (verified with torch 2.14.1).
ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, '_linear_pointwise')


def onednn_linear_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a linear layer (:func:`linear`) may run as one oneDNN call:
    float32 inference on the CPU, eager, outside autocast, where torch has
    the call (:data:`ONEDNN_LINEAR`), with the fast paths on."""
    if not (_enabled and ONEDNN_LINEAR) or records_graph():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    return (x.device.type == 'cpu' and x.dtype == torch.float32
            and weight.dtype == torch.float32
            and not torch.is_autocast_enabled('cpu'))


def linear(x: torch.Tensor,
           weight: torch.Tensor,
           bias: Optional[torch.Tensor],
           fused: bool,
           gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, followed by an exact GELU if ``gelu``:
    one oneDNN call when ``fused`` (deploy mode) and
    :func:`onednn_linear_applies`, two torch calls otherwise (recorded
    graphs, TorchScript, training, other devices and dtypes).

    The oneDNN call applies the GELU while the product is still in cache,
    and for FcaFormer's small products (49 to 3136 rows) its matrix product
    avoids the bias copy into every output row that the BLAS call behind
    ``F.linear`` makes (docs/benchmarks.md has the timings).
    """
    if not torch.jit.is_scripting():
        if fused and onednn_linear_applies(x, weight):
            return torch.ops.mkldnn._linear_pointwise(
                x, weight, bias, 'gelu' if gelu else 'none', [],
                'none' if gelu else '')
    x = F.linear(x, weight, bias)
    return F.gelu(x) if gelu else x


class InferenceLinear(nn.Linear):
    """``nn.Linear`` that runs as one oneDNN call where
    :func:`onednn_linear_applies` (:func:`linear`); deploy mode swaps it
    in. Elsewhere it is ``nn.Linear``.
    """

    @classmethod
    def sharing(cls, layer: nn.Linear) -> 'InferenceLinear':
        """An InferenceLinear with the parameters of ``layer`` (shared)."""
        module = cls(
            layer.in_features,
            layer.out_features,
            bias=layer.bias is not None,
            device='meta')
        module.weight = layer.weight
        module.bias = layer.bias
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, fused=True)


class GeluLinear(torch.autograd.Function):
    """``F.linear(GELU(hidden), weight, bias)`` that keeps ``hidden`` for
    the backward pass and recomputes the GELU there, so that a channel MLP
    holds one hidden-width tensor during training, not two (autograd keeps
    both the GELU's input and output otherwise).

    ``apply(hidden, weight, bias)``; ``bias`` may be None.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(hidden, weight)
        return F.linear(F.gelu(hidden), weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_hidden = grad_weight = grad_bias = None
        if need_weight:
            grad_weight = flat_grad.t().matmul(
                F.gelu(hidden).reshape(-1, hidden.shape[-1]))
        if need_bias:
            grad_bias = flat_grad.sum(0)
        if need_hidden:
            grad_hidden = torch.ops.aten.gelu_backward(
                grad_out.matmul(weight), hidden)
        return grad_hidden, grad_weight, grad_bias


def channel_mlp(x: torch.Tensor, fc1: Tuple[torch.Tensor,
                                            Optional[torch.Tensor]],
                fc2: Tuple[torch.Tensor, Optional[torch.Tensor]],
                fused: bool) -> torch.Tensor:
    """``fc2(GELU(fc1(x)))`` over the last dimension: the ConvNeXt blocks'
    and the FFNs' MLP.

    Args:
        x (torch.Tensor): Channels-last input.
        fc1 (tuple): Weight and bias of the widening linear layer.
        fc2 (tuple): Weight and bias of the narrowing linear layer.
        fused (bool): Deploy mode: ``fc1`` with the GELU, and ``fc2``, as
            one call each where :func:`linear` can. In training outside
            autocast the GELU's output is not kept but recomputed
            (:class:`GeluLinear`).
    """
    if not torch.jit.is_scripting():
        if eager_training(x, fc2[0]):
            return GeluLinear.apply(
                F.linear(x, fc1[0], fc1[1]), fc2[0], fc2[1])
    hidden = linear(x, fc1[0], fc1[1], fused, gelu=True)
    return linear(hidden, fc2[0], fc2[1], fused)


class LearnedBiasAttention(torch.autograd.Function):
    """Attention with an additive bias that is being learned, trained
    through torch's fused attention kernel.

    On the CPU, :func:`~torch.nn.functional.scaled_dot_product_attention`
    has no fused kernel for a mask that needs a gradient (torch 2.14), so
    training falls back to its math path, which keeps every block's
    attention probabilities for the backward pass. Here the forward is the
    fused kernel and the backward recomputes the probabilities of one block
    at a time: the saved tensors are the inputs and the output.

    ``apply(q, k, v, bias)``: ``q`` ``(B, heads, N, d)``, ``k`` and ``v``
    ``(B, heads, M, d)``, ``bias`` broadcastable to ``(B, heads, N, M)``.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        # Detached: torch picks the math path for any input that requires a
        # gradient, even with autograd off.
        out = F.scaled_dot_product_attention(
            q.detach(), k.detach(), v.detach(), attn_mask=bias.detach())
        ctx.save_for_backward(q, k, v, bias, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        q, k, v, bias, out = ctx.saved_tensors
        scale = q.shape[-1]**-0.5
        scores = torch.matmul(q * scale, k.transpose(-2, -1)).add_(bias)
        probs = torch.softmax(scores, dim=-1)
        del scores
        grad_v = torch.matmul(probs.transpose(-2, -1), grad_out)
        # Softmax backward, P * (dP - rowsum(dP * P)), where
        # rowsum(dP * P) = rowsum(dO * O).
        grad_scores = torch.matmul(grad_out, v.transpose(-2, -1))
        grad_scores.sub_((grad_out * out).sum(-1, keepdim=True)).mul_(probs)
        del probs
        grad_q = torch.matmul(grad_scores, k).mul_(scale)
        grad_k = torch.matmul(grad_scores.transpose(-2, -1), q).mul_(scale)
        return grad_q, grad_k, grad_v, grad_scores.sum_to_size(bias.shape)


def biased_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v``: torch's fused kernel, through
    :class:`LearnedBiasAttention` where the bias is trained on the CPU
    (eager); recorded graphs keep the plain call."""
    if not torch.jit.is_scripting():
        if eager_training(q, bias) and q.device.type == 'cpu':
            return LearnedBiasAttention.apply(q, k, v, bias)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
