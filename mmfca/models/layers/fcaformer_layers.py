"""The layers of FcaFormer, as plain ``nn.Module``\\ s.

`FcaFormer <https://arxiv.org/abs/2211.07198>`_ (Zhang et al., ICCV 2023) is
a hybrid backbone: a convolutional stem and two ConvNeXt stages, then two
stages whose blocks also attend to the *cross tokens* made by the earlier
blocks of the same stage. Its plain variant, L0, is DeiT-Tiny with those
blocks.

Everything here is one model definition shared by two thin front ends: the
OpenMMLab backbone :class:`~mmfca.models.FcaFormer` (``init_cfg``, frozen
stages, dense outputs) and the timm classifiers in
:mod:`mmfca.models.timm_models`. The modules take timm-style arguments
(``norm_layer`` callables), script with TorchScript and trace with
``torch.fx``, so timm's tooling works on them.
"""
import functools
import math
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm2d, trunc_normal_
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.checkpoint import checkpoint

NormLayer = Callable[[int], nn.Module]

#: The paper's models. The hybrids ('l1' to 'l4') have a conv stem, two
#: ConvNeXt stages (their ``num_heads`` are unused) and two FcaFormer
#: stages; 'l0' is the plain model of the paper's Table 1, DeiT-Tiny's
#: layout (16x16 patches, 192 channels, 12 blocks, 3 heads) with FcaBlocks.
FCAFORMER_ARCHS: Dict[str, Dict[str, Union[int, Tuple[int, ...]]]] = {
    'l0':
    dict(channels=(192, ), depths=(12, ), num_heads=(3, ), patch_size=16),
    'l1':
    dict(
        channels=(64, 128, 192, 320),
        depths=(2, 2, 6, 2),
        num_heads=(0, 0, 6, 10)),
    'l2':
    dict(
        channels=(96, 192, 320, 480),
        depths=(2, 2, 7, 2),
        num_heads=(0, 0, 10, 15)),
    'l3':
    dict(
        channels=(96, 192, 320, 512),
        depths=(3, 6, 12, 3),
        num_heads=(0, 0, 10, 16)),
    'l4':
    dict(
        channels=(128, 256, 512, 768),
        depths=(3, 6, 12, 3),
        num_heads=(0, 0, 16, 24)),
}
HYBRID_STAGES = 4
HYBRID_CONV_STAGES = 2


def parse_arch(arch: Union[str, dict]) -> dict:
    """Check an arch name or dict and return its settings.

    Args:
        arch (str | dict): A key of :data:`FCAFORMER_ARCHS`
            (case-insensitive), or a dict with ``channels``, ``depths`` and
            ``num_heads`` (4 entries each for a hybrid; one per stage plus
            ``patch_size`` for a plain model).

    Returns:
        dict: ``channels``, ``depths``, ``num_heads`` as int tuples, and
        ``patch_size`` for a plain model.
    """
    if isinstance(arch, str):
        key = arch.lower()
        if key not in FCAFORMER_ARCHS:
            raise ValueError(
                f'Unknown FcaFormer arch {arch!r}. Choose one of '
                f'{sorted(FCAFORMER_ARCHS)} or pass a dict with "channels", '
                f'"depths" and "num_heads".')
        return dict(FCAFORMER_ARCHS[key])
    if not isinstance(arch, dict):
        raise TypeError(
            f'arch must be a str or a dict, got {type(arch).__name__}.')
    needed = {'channels', 'depths', 'num_heads'}
    if not needed <= set(arch) <= needed | {'patch_size'}:
        raise ValueError(
            f'A custom FcaFormer arch needs exactly the keys {sorted(needed)}'
            f' (plus "patch_size" for a plain model), got {sorted(arch)}.')
    settings = {k: tuple(int(v) for v in arch[k]) for k in needed}
    plain = 'patch_size' in arch
    stages = len(settings['depths']) if plain else HYBRID_STAGES
    for key, values in settings.items():
        if len(values) != stages:
            raise ValueError(
                f'arch["{key}"] needs {stages} entries, got {values}.')
    if plain:
        settings['patch_size'] = int(arch['patch_size'])
    for i in range(0 if plain else HYBRID_CONV_STAGES, stages):
        width, heads = settings['channels'][i], settings['num_heads'][i]
        if heads <= 0 or width % heads:
            raise ValueError(
                f'Stage {i}: {width} channels cannot be split into {heads} '
                f'attention heads; choose num_heads that divides the '
                f'channels.')
    return settings


def num_conv_stages(arch_settings: dict) -> int:
    """ConvNeXt stages of an arch: 0 for a plain model."""
    return 0 if arch_settings.get('patch_size') else HYBRID_CONV_STAGES


def parse_window_size(arch_settings: dict,
                      window_size: Optional[Union[int, Sequence[int]]] = None
                      ) -> Tuple[int, ...]:
    """One attention window side per FcaFormer stage.

    Args:
        arch_settings (dict): From :func:`parse_arch`.
        window_size (int | Sequence[int], optional): The windows; None gives
            the feature sizes of 224x224 pretraining, under which pretrained
            bias tables load unchanged.
    """
    count = len(arch_settings['depths']) - num_conv_stages(arch_settings)
    if window_size is None:
        stride = arch_settings.get('patch_size') or 16
        window_size = tuple(224 // (stride * 2**i) for i in range(count))
    if isinstance(window_size, int):
        window_size = (window_size, ) * count
    window_size = tuple(window_size)
    if len(window_size) != count or any(not isinstance(w, int) or w < 1
                                        for w in window_size):
        raise ValueError(
            f'window_size must be a positive int or {count} of them (one per '
            f'FcaFormer stage), got {window_size}.')
    return window_size


def symbolic_shapes() -> bool:
    """Whether the forward is being recorded for a graph that must serve
    other sizes: an ONNX export (the legacy exporter traces), torch.export,
    or ``torch.fx`` symbolic tracing. Branching on feature-map sizes there
    would bake in the recorded size or fail on symbolic values. A plain
    ``torch.jit.trace`` (MAC counters) records the path of its input's
    size, as it records any control flow."""
    # A private torch function (verified with torch 2.14); torch's own
    # modules ask it the same question.
    return (torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
            or torch.fx._symbolic_trace.is_fx_symbolic_tracing())


def records_graph() -> bool:
    """Whether the forward is being recorded rather than run: export, FX,
    ``torch.jit.trace`` or ``torch.compile``. Recorded graphs get plain
    torch calls, which their tools know."""
    return symbolic_shapes() or torch.jit.is_tracing() or \
        torch.compiler.is_compiling()


def eager_training(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a call on ``x`` trains ``weight`` in eager mode outside
    autocast, where mmfca's memory-saving autograd functions apply."""
    if records_graph() or not torch.is_grad_enabled():
        return False
    device = x.device.type
    return weight.requires_grad and not (
        torch.amp.is_autocast_available(device)
        and torch.is_autocast_enabled(device))


def init_fcaformer_weights(module: nn.Module) -> None:
    """The official initialisation, for ``model.apply``: truncated normal
    (std 0.02) for conv and linear weights, zero biases, unit LayerNorms.
    BatchNorm layers keep PyTorch's (weight 1, bias 0).

    :class:`~mmfca.models.FcaFormer` states the same as its
    ``default_init_cfg``, in mmengine's terms.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# torch.ops.mkldnn._linear_pointwise is the private op that inductor lowers
# CPU linear layers and linear-GELU pairs to (verified with torch 2.14.1).
ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(
    torch.ops.mkldnn, '_linear_pointwise')


def onednn_linear_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a linear layer (:func:`linear`) may run as one oneDNN call:
    float32 inference on the CPU, eager, outside autocast, where torch has
    the call (:data:`ONEDNN_LINEAR`)."""
    if not ONEDNN_LINEAR or records_graph():
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

    On the CPU at batch 1 the oneDNN call takes 0.4-0.95x the time of
    torch's: it applies the GELU while the product is still in cache, and
    for FcaFormer's small products (49 to 3136 rows) its matrix product is
    faster than the BLAS call behind ``F.linear``, which also first copies
    the bias into every output row.
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


class ConvBN(nn.Module):
    """A bias-free convolution and a BatchNorm, no activation, with "same"
    padding.

    The keys ``conv.*`` and ``bn.*`` are those mmcv's ``ConvModule`` gives
    a conv-BN pair, which mmfca checkpoints hold; ``ConvModule`` itself
    neither scripts nor FX-traces, hence this module.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int): Kernel size. Defaults to 1.
        stride (int): Stride. Defaults to 1.
        groups (int): Convolution groups. Defaults to 1.
        norm_layer (callable): Builds the BatchNorm from a channel count
            (e.g. ``nn.BatchNorm2d`` or a SyncBN); it must be a BatchNorm
            for :meth:`fuse`. Defaults to ``nn.BatchNorm2d``.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: int = 1,
                 stride: int = 1,
                 groups: int = 1,
                 norm_layer: NormLayer = nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False)
        self.bn = norm_layer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        """The convolution with the BatchNorm (eval statistics) folded in."""
        return fuse_conv_bn_eval(self.conv.eval(), self.bn.eval())


class ConvStem(nn.Module):
    """Two 3x3 stride-2 conv-BN layers with GELU between: 4x downsampling.

    Args:
        in_channels (int): Input image channels.
        out_channels (int): Output channels.
        norm_layer (callable): Builds the BatchNorm layers.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 norm_layer: NormLayer):
        super().__init__()
        self.conv1 = ConvBN(
            in_channels, out_channels // 2, 3, 2, norm_layer=norm_layer)
        self.act = nn.GELU()
        self.conv2 = ConvBN(
            out_channels // 2, out_channels, 3, 2, norm_layer=norm_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The convolutional stages run channels-last: the ConvNeXt blocks'
        # channel MLPs then read their input without a copy.
        x = x.contiguous(memory_format=torch.channels_last)
        return self.conv2(self.act(self.conv1(x)))


class Downsample(nn.Module):
    """Stage transition: 1x1 conv-BN, 3x3 stride-2 depthwise conv-BN, 1x1
    conv-BN, with GELU after the first two.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        norm_layer (callable): Builds the BatchNorm layers.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 norm_layer: NormLayer):
        super().__init__()
        self.conv1 = ConvBN(in_channels, out_channels, norm_layer=norm_layer)
        self.conv2 = ConvBN(
            out_channels,
            out_channels,
            3,
            2,
            groups=out_channels,
            norm_layer=norm_layer)
        self.conv3 = ConvBN(out_channels, out_channels, norm_layer=norm_layer)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block of the first two stages: 7x7 depthwise conv,
    LayerNorm and Linear-GELU-Linear over channels (channels-last), layer
    scale, drop path, residual.

    Its parameter names are those of mmpretrain's ``ConvNeXtBlock``, which
    mmfca first built on and which our checkpoints hold.

    Args:
        channels (int): Channels.
        drop_path_rate (float): Stochastic depth rate of the branch.
        layer_scale_init_value (float): Initial layer scale; 0 or less
            leaves the branch unscaled (no ``gamma``).
    """

    def __init__(self,
                 channels: int,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6):
        super().__init__()
        #: Recompute the block in the backward pass instead of storing its
        #: activations (less memory while training).
        self.grad_checkpointing = False
        self.depthwise_conv = nn.Conv2d(
            channels, channels, kernel_size=7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pointwise_conv1 = nn.Linear(channels, 4 * channels)
        self.pointwise_conv2 = nn.Linear(4 * channels, channels)
        #: Deploy mode: each linear layer of the MLP (the first with its
        #: GELU) as one call (:func:`linear`).
        self.fused_linears = False
        self.gamma = nn.Parameter(
            torch.full((channels, ), float(layer_scale_init_value))
        ) if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(
            drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.depthwise_conv(x).permute(0, 2, 3, 1)
        branch = channel_mlp(
            self.norm(branch),
            (self.pointwise_conv1.weight, self.pointwise_conv1.bias),
            (self.pointwise_conv2.weight, self.pointwise_conv2.bias),
            self.fused_linears)
        if self.gamma is not None:
            branch = branch * self.gamma
        return x + self.drop_path(branch.permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():
            if self.grad_checkpointing and x.requires_grad:
                return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class LayerScale(nn.Module):
    """Learned per-channel scale of a residual branch, on channels-last
    tokens.

    The parameter is named ``weight`` as in mmpretrain's LayerScale, which
    our checkpoints were first written with (timm's is ``gamma``).

    Args:
        dims (int): Channels.
        init_value (float): Initial scale; small values start each block
            close to the identity.
    """

    def __init__(self, dims: int, init_value: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((dims, ), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into a LeViT-style bias table over (|dy|, |dx|) offsets.

    Args:
        window_size (int): Side of the square window.

    Returns:
        torch.Tensor: ``(N, N)`` long tensor with ``N = window_size ** 2``;
        entry ``(i, j)`` is ``|dy| * window_size + |dx|`` for tokens i, j.
    """
    coords = torch.arange(window_size)
    ys, xs = torch.meshgrid(coords, coords, indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()
    dy = (ys[:, None] - ys[None, :]).abs()
    dx = (xs[:, None] - xs[None, :]).abs()
    return dy * window_size + dx


def resize_token_grids(values: torch.Tensor, blocks: int,
                       side: int) -> torch.Tensor:
    """Resize per-token values laid out as ``blocks`` square grids.

    The last dimension holds ``blocks`` grids of ``old * old`` entries (a
    bias table over (|dy|, |dx|) is one grid; the depth biases and LSFs of
    a block are one grid per earlier block); each grid is resized to
    ``side * side`` bicubically.

    Args:
        values (torch.Tensor): ``(..., blocks * old * old)``.
        blocks (int): Number of grids.
        side (int): New grid side.
    """
    lead = values.shape[:-1]
    old = math.isqrt(values.shape[-1] // blocks)
    grid = values.reshape(-1, blocks, old, old).float()
    grid = F.interpolate(
        grid, size=(side, side), mode='bicubic', align_corners=False)
    return grid.reshape(*lead, blocks * side * side).to(values.dtype)


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


class ForwardCrossAttention(nn.Module):
    """Multi-head attention of the regular tokens over themselves and over
    the cross tokens of earlier blocks.

    Queries come from the ``N`` regular tokens of a window; keys and values
    from those tokens plus the cross tokens, which are first multiplied by
    learnable scale factors (LSFs) and layer-normalised. Regular keys get a
    relative position bias, cross keys a learned depth bias (one value per
    cross token and head). Both biases enter
    :func:`torch.nn.functional.scaled_dot_product_attention` as an additive
    mask.

    Args:
        embed_dims (int): Token channels.
        num_heads (int): Attention heads.
        window_size (int): Side of the square attention window.
        num_cross_tokens (int): Cross tokens this block attends to (0 for the
            first block of a stage).
        num_prefix_tokens (int): Tokens before the window's grid tokens
            (the plain model's class token). They have no grid position, so
            they get no relative position bias (zero), while they do see the
            cross tokens' depth bias like every query. Defaults to 0.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 window_size: int,
                 num_cross_tokens: int,
                 num_prefix_tokens: int = 0):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.window_size = window_size
        self.num_cross_tokens = num_cross_tokens
        # Set by :meth:`precompute_bias` (deploy mode); a non-persistent
        # buffer so that it follows ``.to()``, ``.half()`` and the like.
        self.register_buffer('deploy_bias', None, persistent=False)

        self.qkv = nn.Linear(embed_dims, embed_dims * 3)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.position_bias = nn.Parameter(
            torch.zeros(num_heads, window_size * window_size))
        self.register_buffer(
            'position_bias_index',
            relative_position_index(window_size),
            persistent=False)
        if num_cross_tokens > 0:
            self.cross_scale = nn.Parameter(torch.ones(1, num_cross_tokens, 1))
            self.cross_norm = nn.LayerNorm(embed_dims)
            self.depth_bias = nn.Parameter(
                torch.zeros(1, num_heads, 1, num_cross_tokens))
        else:
            # None attributes let TorchScript drop the cross-token code.
            self.cross_scale = None
            self.cross_norm = None
            self.depth_bias = None

    def fit_tables(self, state_dict: dict, prefix: str) -> None:
        """Resize this module's bias tables and LSFs in ``state_dict`` (keys
        under ``prefix``) to this module's window, where they differ
        (bicubic). :class:`~mmfca.models.FcaFormer` calls it while loading
        weights when built with ``resize_bias_tables=True``."""
        key = prefix + 'position_bias'
        if key in state_dict and state_dict[key].shape != \
                self.position_bias.shape:
            state_dict[key] = resize_token_grids(state_dict[key], 1,
                                                 self.window_size)
        if self.depth_bias is None:
            return
        side = math.ceil(self.window_size / 4)
        blocks = self.num_cross_tokens // (side * side)
        key = prefix + 'depth_bias'
        if key in state_dict and state_dict[key].shape != \
                self.depth_bias.shape:
            state_dict[key] = resize_token_grids(state_dict[key], blocks, side)
        key = prefix + 'cross_scale'
        if key in state_dict and state_dict[key].shape != \
                self.cross_scale.shape:
            state_dict[key] = resize_token_grids(
                state_dict[key].transpose(1, 2), blocks, side).transpose(1, 2)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if self.deploy_bias is not None:
            # Deploy mode: the precomputed mask follows the loaded tables.
            self.precompute_bias()

    @torch.no_grad()
    def precompute_bias(self) -> None:
        """Store the attention mask for inference (deploy mode)."""
        self.deploy_bias = None
        self.deploy_bias = self.attention_bias().detach().clone()

    def attention_bias(self) -> torch.Tensor:
        """The additive attention mask, ``(1, heads, N, N + cross)``; the
        precomputed one after :meth:`precompute_bias`."""
        if self.deploy_bias is not None:
            return self.deploy_bias
        bias = self.position_bias[:, self.position_bias_index].unsqueeze(0)
        if self.num_prefix_tokens > 0:
            prefix = self.num_prefix_tokens
            bias = F.pad(bias, [prefix, 0, prefix, 0])
        if self.depth_bias is None:
            return bias
        depth = self.depth_bias.expand(-1, -1, bias.shape[-1], -1)
        return torch.cat((bias, depth), dim=-1)

    def _split_heads(self, x: torch.Tensor, parts: int) -> torch.Tensor:
        batch, length, _ = x.shape
        x = x.reshape(batch, length, parts, self.num_heads, self.head_dims)
        return x.permute(2, 0, 3, 1, 4)

    def forward(self,
                x: torch.Tensor,
                cross: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            x (torch.Tensor): Normalised window tokens, ``(B, N, C)``.
            cross (torch.Tensor, optional): Cross tokens of the earlier
                blocks, ``(B, num_cross_tokens, C)``, not yet scaled or
                normalised.
        """
        return self.attend(self.qkv(x), cross)

    def attend(self,
               qkv: torch.Tensor,
               cross: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention after the ``qkv`` projection, which
        :meth:`FcaBlock.forward_padded` computes once per real token rather
        than per window position.

        Args:
            qkv (torch.Tensor): ``self.qkv`` of the normalised window
                tokens, ``(B, N, 3 * C)``.
            cross (torch.Tensor, optional): As in :meth:`forward`.
        """
        batch, length, _ = qkv.shape
        channels = self.embed_dims
        q, k, v = self._split_heads(qkv, 3).unbind(0)
        if self.cross_norm is not None and cross is not None:
            cross = self.cross_norm(cross * self.cross_scale)
            # Only keys and values are needed for the cross tokens.
            kv_weight = self.qkv.weight[channels:]
            kv_bias = self.qkv.bias[channels:]
            cross_k, cross_v = self._split_heads(
                F.linear(cross, kv_weight, kv_bias), 2).unbind(0)
            k = torch.cat((k, cross_k), dim=2)
            v = torch.cat((v, cross_v), dim=2)
        x = biased_attention(q, k, v, self.attention_bias().to(q.dtype))
        x = x.transpose(1, 2).reshape(batch, length, channels)
        return self.proj(x)


class FeedForward(nn.Module):
    """LayerNorm, Linear, GELU, Linear.

    The official block applies its own ``norm2`` right before this module,
    so the FFN path has two LayerNorms in a row; both are kept for weight
    compatibility.

    Args:
        embed_dims (int): Token channels.
        hidden_dims (int): Hidden channels.
    """

    def __init__(self, embed_dims: int, hidden_dims: int):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dims)
        self.fc1 = nn.Linear(embed_dims, hidden_dims)
        self.fc2 = nn.Linear(hidden_dims, embed_dims)
        #: Deploy mode: ``fc1`` with its GELU, and ``fc2``, as one call
        #: each (:func:`linear`).
        self.fused_linears = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_mlp(
            self.norm(x), (self.fc1.weight, self.fc1.bias),
            (self.fc2.weight, self.fc2.bias), self.fused_linears)


class FcaBlock(nn.Module):
    """FcaFormer block working on the tokens of one window.

    attention (with cross tokens) -> token merging and enhancement (TME: a
    7x7 stride-4 depthwise conv makes this block's cross tokens, a 3x3
    depthwise conv-BN replaces the tokens) -> FFN. Residual branches carry
    layer scale and drop path.

    Args:
        embed_dims (int): Token channels.
        num_heads (int): Attention heads.
        window_size (int): Side of the square window.
        num_cross_tokens (int): Cross tokens attended to.
        makes_cross_tokens (bool): Whether this block makes cross tokens for
            the later blocks (all but the last block of a stage do).
        mlp_ratio (float): FFN hidden / embed channels. Defaults to 4.
        drop_path_rate (float): Stochastic depth rate. Defaults to 0.
        layer_scale_init_value (float): Layer scale init. Defaults to 1e-6.
        norm_layer (callable): Builds the BatchNorm after the 3x3 depthwise
            conv. Defaults to ``nn.BatchNorm2d``.
        num_prefix_tokens (int): Tokens before the grid tokens (the plain
            model's class token): they take part in attention and the FFN
            but not in the TME convolutions, which need a grid, so they
            make no cross tokens and pass the TME unchanged. Defaults to 0.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 window_size: int,
                 num_cross_tokens: int,
                 makes_cross_tokens: bool,
                 mlp_ratio: float = 4.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 norm_layer: NormLayer = nn.BatchNorm2d,
                 num_prefix_tokens: int = 0):
        super().__init__()
        #: Recompute the block in the backward pass instead of storing its
        #: activations (less memory while training).
        self.grad_checkpointing = False
        self.window_size = window_size
        self.num_prefix_tokens = num_prefix_tokens
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ForwardCrossAttention(embed_dims, num_heads, window_size,
                                          num_cross_tokens, num_prefix_tokens)
        self.ls1 = LayerScale(embed_dims, layer_scale_init_value)
        self.cross_token_conv = nn.Conv2d(
            embed_dims,
            embed_dims,
            kernel_size=7,
            stride=4,
            padding=3,
            groups=embed_dims,
            bias=False) if makes_cross_tokens else None
        self.local_conv = ConvBN(
            embed_dims,
            embed_dims,
            3,
            groups=embed_dims,
            norm_layer=norm_layer)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FeedForward(embed_dims, int(embed_dims * mlp_ratio))
        self.ls2 = LayerScale(embed_dims, layer_scale_init_value)
        self.drop_path = DropPath(
            drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _forward(
        self, x: torch.Tensor, cross: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), cross)))
        x, new_cross = self.merge_and_enhance(x)
        x = x + self.drop_path(self.ls2(self.ffn(self.norm2(x))))
        return x, new_cross

    def forward(
        self,
        x: torch.Tensor,
        cross: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x (torch.Tensor): Window tokens ``(B, prefix + ws * ws, C)``.
            cross (torch.Tensor, optional): Cross tokens of earlier blocks.

        Returns:
            tuple: The new tokens and this block's cross tokens
            ``(B, ceil(ws / 4) ** 2, C)`` (None for the last block).
        """
        if not torch.jit.is_scripting():
            if self.grad_checkpointing and x.requires_grad:
                return checkpoint(self._forward, x, cross, use_reentrant=False)
        return self._forward(x, cross)

    def _forward_padded(self, tokens: torch.Tensor,
                        cross: Optional[torch.Tensor],
                        window_index: torch.Tensor, token_index: torch.Tensor,
                        token_window: torch.Tensor
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        batch, _, channels = tokens.shape
        length = self.window_size * self.window_size
        # A last row of zeros stands for every padded position: its norm1
        # and qkv are those of the official zero padding, computed once.
        tokens = F.pad(tokens, [0, 0, 0, 1])
        qkv = self.attn.qkv(self.norm1(tokens))
        qkv = qkv.index_select(1,
                               window_index).reshape(-1, length, 3 * channels)
        x = tokens.index_select(1, window_index).reshape(-1, length, channels)
        x = x + self.drop_path(self.ls1(self.attn.attend(qkv, cross)))
        x, new_cross = self.merge_and_enhance(x)
        # Padded positions end here (the stage crops them): the FFN runs on
        # the real tokens only, back in map order.
        x_real = x.reshape(batch, -1, channels).index_select(1, token_index)
        branch = self.ls2(self.ffn(self.norm2(x_real)))
        if self.training:
            # One draw per window, as drop path on the window batch.
            keep = self.drop_path(branch.new_ones(x.shape[0], 1, 1))
            keep = keep.reshape(batch, -1).index_select(1, token_window)
            branch = branch * keep.unsqueeze(-1)
        return x_real + branch, new_cross

    def forward_padded(self, tokens: torch.Tensor,
                       cross: Optional[torch.Tensor],
                       window_index: torch.Tensor, token_index: torch.Tensor,
                       token_window: torch.Tensor
                       ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The block on a map that is padded to whole windows with zeros,
        given its real tokens: the outputs at the real positions of
        padding, window partition, :meth:`forward`, window reverse and
        cropping, without the work whose results the crop drops.

        Queries, attention and the TME run on whole windows (the TME's
        convolutions read the padded positions' attention outputs), but
        the qkv projection of the padded tokens, all alike, is computed
        once, and the FFN branch runs on the real tokens only.

        Args:
            tokens (torch.Tensor): The real tokens in map order,
                ``(B, H * W, C)``.
            cross (torch.Tensor, optional): Cross tokens of earlier blocks.
            window_index (torch.Tensor): For each window position (windows
                in :func:`window_partition` order), its real token's index
                or ``H * W`` for a padded position; from
                :func:`padded_window_index`.
            token_index (torch.Tensor): For each real token, its window
                position.
            token_window (torch.Tensor): For each real token, its window,
                for the per-window drop path of the FFN branch.

        Returns:
            tuple: The new real tokens ``(B, H * W, C)`` and this block's
            cross tokens (None for the last block).
        """
        if not torch.jit.is_scripting():
            if self.grad_checkpointing and tokens.requires_grad:
                return checkpoint(
                    self._forward_padded,
                    tokens,
                    cross,
                    window_index,
                    token_index,
                    token_window,
                    use_reentrant=False)
        return self._forward_padded(tokens, cross, window_index, token_index,
                                    token_window)

    def merge_and_enhance(self, x: torch.Tensor
                          ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Token merging and enhancement (TME) of window tokens
        ``(B, prefix + ws * ws, C)``: the enhanced tokens and this block's
        cross tokens (None for the last block); prefix tokens pass
        unchanged."""
        prefix = x[:, :self.num_prefix_tokens]
        x = x[:, self.num_prefix_tokens:]
        batch, _, channels = x.shape
        fmap = grid_to_map(x, self.window_size, self.window_size)
        new_cross: Optional[torch.Tensor] = None
        if self.cross_token_conv is not None:
            new_cross = map_to_grid(self.cross_token_conv(fmap))
        x = map_to_grid(self.local_conv(fmap))
        if self.num_prefix_tokens > 0:
            x = torch.cat((prefix, x), dim=1)
        return x, new_cross


def grid_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, H * W, C)`` tokens in row-major order -> a ``(B, C, H, W)``
    map (a view, channels-last in memory).

    Not ``tokens.transpose(1, 2).reshape(...)``: for one image that view
    gets a batch stride of ``C``, and the CPU BatchNorm kernels of torch 2.14
    compute wrong input gradients for gradients laid out so (the outputs
    are right). Permuting keeps the usual channels-last strides.
    """
    return tokens.reshape(tokens.shape[0], height, width,
                          tokens.shape[-1]).permute(0, 3, 1, 2)


def map_to_grid(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H * W, C)`` tokens, the inverse of
    :func:`grid_to_map` (a view for a channels-last map)."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


def window_partition(x: torch.Tensor, window_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` with H, W multiples of the window ->
    ``(B * windows, ws * ws, C)``."""
    batch, channels, height, width = x.shape
    x = x.view(batch, channels, height // window_size, window_size,
               width // window_size, window_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window_size * window_size,
                                               channels)


def window_reverse(x: torch.Tensor, window_size: int, height: int,
                   width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`."""
    channels = x.shape[-1]
    rows, cols = height // window_size, width // window_size
    x = x.view(-1, rows, cols, window_size, window_size, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(-1, channels, height, width)


def padded_window_index(height: int, width: int, window_size: int,
                        top_left: bool, device: torch.device
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the tokens of a ``height x width`` map go when it is padded to
    whole windows at the top-left (or bottom-right) and partitioned, for
    :meth:`FcaBlock.forward_padded`.

    Built from torch ops on the sizes, so that a recorded forward (export,
    FX) computes them for any input size.

    Returns:
        tuple: ``window_index`` (for each window position in
        :func:`window_partition` order, the index of its token in the
        map's ``H * W`` tokens, or ``H * W`` where it is padding),
        ``token_index`` (for each token, its window position) and
        ``token_window`` (for each token, its window).
    """
    pad_h = (window_size - height % window_size) % window_size
    pad_w = (window_size - width % window_size) % window_size
    padded_h, padded_w = height + pad_h, width + pad_w
    shift_h, shift_w = (pad_h, pad_w) if top_left else (0, 0)
    ys = torch.arange(padded_h, device=device) - shift_h
    xs = torch.arange(padded_w, device=device) - shift_w
    inside = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) &
                                                     (xs < width))[None, :]
    index = torch.where(inside, ys[:, None] * width + xs[None, :],
                        height * width)
    window_index = index.reshape(padded_h // window_size, window_size,
                                 padded_w // window_size,
                                 window_size).permute(0, 2, 1, 3).reshape(-1)
    ys = torch.arange(height, device=device) + shift_h
    xs = torch.arange(width, device=device) + shift_w
    token_window = (ys // window_size)[:, None] * (padded_w // window_size) + (
        xs // window_size)[None, :]
    position = (ys % window_size)[:, None] * window_size + (
        xs % window_size)[None, :]
    token_index = token_window * (window_size * window_size) + position
    return window_index, token_index.reshape(-1), token_window.reshape(-1)


@functools.lru_cache(maxsize=64)
def _cached_padded_window_index(
        height: int, width: int, window_size: int, top_left: bool,
        device: torch.device
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`padded_window_index`, computed once per map size (eager).
    Made outside inference mode, so that a model first run under
    ``torch.inference_mode`` can still be trained."""
    with torch.inference_mode(False):
        return padded_window_index(height, width, window_size, top_left,
                                   device)


class FcaStage(nn.Module):
    """A stage of FcaBlocks with windowed attention and cross tokens.

    The feature map is padded to whole windows before every block: even
    blocks (0, 2, ...) pad at the top-left, odd blocks at the bottom-right,
    so windows of consecutive blocks are offset against each other. Padded
    tokens are zeros and are not masked. The cross tokens of a window are
    handed to the window with the same index in the later blocks, whatever
    its alignment, as in the official implementation.

    Args:
        embed_dims (int): Channels.
        depth (int): Number of blocks.
        num_heads (int): Attention heads.
        window_size (int): Side of the square window.
        drop_path_rates (Sequence[float]): Per-block stochastic depth.
        mlp_ratio (float): FFN expansion. Defaults to 4.
        layer_scale_init_value (float): Layer scale init. Defaults to 1e-6.
        norm_layer (callable): Builds the BatchNorm layers.
        num_prefix_tokens (int): Tokens before each window's grid tokens
            (the plain model's class token, see :class:`FcaBlock`). A stage
            with prefix tokens runs on tokens of one window
            (:meth:`run_blocks`), not on feature maps. Defaults to 0.
    """

    def __init__(self,
                 embed_dims: int,
                 depth: int,
                 num_heads: int,
                 window_size: int,
                 drop_path_rates: Sequence[float],
                 mlp_ratio: float = 4.,
                 layer_scale_init_value: float = 1e-6,
                 norm_layer: NormLayer = nn.BatchNorm2d,
                 num_prefix_tokens: int = 0):
        super().__init__()
        self.window_size = window_size
        cross_per_block = math.ceil(window_size / 4)**2
        self.blocks = nn.ModuleList([
            FcaBlock(
                embed_dims,
                num_heads,
                window_size,
                num_cross_tokens=i * cross_per_block,
                makes_cross_tokens=i < depth - 1,
                mlp_ratio=mlp_ratio,
                drop_path_rate=drop_path_rates[i],
                layer_scale_init_value=layer_scale_init_value,
                norm_layer=norm_layer,
                num_prefix_tokens=num_prefix_tokens) for i in range(depth)
        ])

    def run_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run every block on the same windows.

        Args:
            tokens (torch.Tensor): ``(B * windows, prefix + ws * ws, C)``.
        """
        cross_tokens: List[torch.Tensor] = []
        for block in self.blocks:
            cross = torch.cat(cross_tokens, 1) if cross_tokens else None
            tokens, new_cross = block(tokens, cross)
            if new_cross is not None:
                cross_tokens.append(new_cross)
        return tokens

    def block_outputs(self, tokens: torch.Tensor,
                      count: int) -> List[torch.Tensor]:
        """The tokens after each of the first ``count`` blocks, for the
        plain model's intermediates (see :meth:`run_blocks`)."""
        outputs: List[torch.Tensor] = []
        cross_tokens: List[torch.Tensor] = []
        for block in self.blocks[:count]:
            cross = torch.cat(cross_tokens, 1) if cross_tokens else None
            tokens, new_cross = block(tokens, cross)
            if new_cross is not None:
                cross_tokens.append(new_cross)
            outputs.append(tokens)
        return outputs

    def _whole_windows(self, pad_h: int, pad_w: int) -> bool:
        """Whether the map is whole windows and may stay partitioned through
        the stage. Recording a forward (export, FX) takes the general path,
        which gives the same values and keeps the padding as arithmetic on
        the input size, so the recorded graph serves any size."""
        if not torch.jit.is_scripting():
            if symbolic_shapes():
                return False
        return pad_h == 0 and pad_w == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        ws = self.window_size
        pad_h = (ws - height % ws) % ws
        pad_w = (ws - width % ws) % ws
        if self._whole_windows(pad_h, pad_w):
            tokens = self.run_blocks(window_partition(x, ws))
            return window_reverse(tokens, ws, height, width)
        # The real tokens in map order; each block pads and partitions
        # them by index (FcaBlock.forward_padded).
        tokens = map_to_grid(x)
        cross_tokens: List[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            indices = self._padded_indices(height, width, i % 2 == 0, x.device)
            cross = torch.cat(cross_tokens, 1) if cross_tokens else None
            tokens, new_cross = block.forward_padded(tokens, cross, indices[0],
                                                     indices[1], indices[2])
            if new_cross is not None:
                cross_tokens.append(new_cross)
        return grid_to_map(tokens, height, width)

    def _padded_indices(self, height: int, width: int, top_left: bool,
                        device: torch.device
                        ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`padded_window_index` for a block of this stage; cached in
        eager mode, computed from the (symbolic) sizes when recorded."""
        if not torch.jit.is_scripting():
            if not (symbolic_shapes() or torch.compiler.is_compiling()):
                return _cached_padded_window_index(height, width,
                                                   self.window_size, top_left,
                                                   device)
        return padded_window_index(height, width, self.window_size, top_left,
                                   device)


class OutputProjection(nn.Module):
    """1x1 conv (no bias) + channels-first LayerNorm that widens a stage
    output, as in the official segmentation and detection backbones.

    Args:
        in_channels (int): Stage channels.
        out_channels (int): Output channels.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.norm = LayerNorm2d(out_channels, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


def build_fcaformer_layers(arch_settings: dict,
                           in_channels: int = 3,
                           window_size: Sequence[int] = (14, 7),
                           drop_path_rate: float = 0.,
                           layer_scale_init_value: float = 1e-6,
                           mlp_ratio: float = 4.,
                           norm_layer: NormLayer = nn.BatchNorm2d
                           ) -> Tuple[nn.ModuleList, nn.ModuleList]:
    """The stem, downsampling layers and stages of an arch: what both front
    ends hold as ``downsample_layers`` and ``stages``.

    Args:
        arch_settings (dict): From :func:`parse_arch`.
        in_channels (int): Input image channels.
        window_size (Sequence[int]): From :func:`parse_window_size`.
        drop_path_rate (float): Stochastic depth at the last block, rising
            linearly from 0 over all blocks.
        layer_scale_init_value (float): Layer scale init.
        mlp_ratio (float): FFN expansion of the FcaBlocks.
        norm_layer (callable): Builds the BatchNorm layers of the stem,
            downsampling and TME.

    Returns:
        tuple: ``downsample_layers`` (the stem, or a plain model's patch
        embedding, first) and ``stages``.
    """
    channels = arch_settings['channels']
    depths = arch_settings['depths']
    conv_stages = num_conv_stages(arch_settings)
    patch_size = arch_settings.get('patch_size')
    # On the CPU explicitly: a model built under a meta device context
    # cannot read values back.
    rates = torch.linspace(
        0, drop_path_rate, sum(depths), device='cpu').tolist()

    if patch_size:
        stem = nn.Conv2d(
            in_channels, channels[0], patch_size, stride=patch_size)
    else:
        stem = ConvStem(in_channels, channels[0], norm_layer)
    downsample_layers = nn.ModuleList([stem])
    for i in range(1, len(depths)):
        downsample_layers.append(
            Downsample(channels[i - 1], channels[i], norm_layer))

    stages = nn.ModuleList()
    first = 0
    for i, depth in enumerate(depths):
        stage_rates = rates[first:first + depth]
        first += depth
        if i < conv_stages:
            stages.append(
                nn.Sequential(*[
                    ConvNeXtBlock(
                        channels[i],
                        drop_path_rate=rate,
                        layer_scale_init_value=layer_scale_init_value)
                    for rate in stage_rates
                ]))
        else:
            stages.append(
                FcaStage(
                    channels[i],
                    depth,
                    arch_settings['num_heads'][i],
                    window_size[i - conv_stages],
                    stage_rates,
                    mlp_ratio=mlp_ratio,
                    layer_scale_init_value=layer_scale_init_value,
                    norm_layer=norm_layer,
                    num_prefix_tokens=1 if patch_size else 0))
    return downsample_layers, stages


def set_grad_checkpointing(stages: nn.ModuleList, enable: bool) -> None:
    """Recompute every block of ``stages`` in the backward pass (or stop)."""
    for module in stages.modules():
        if isinstance(module, (ConvNeXtBlock, FcaBlock)):
            module.grad_checkpointing = enable


def add_class_token(patches: torch.Tensor, cls_token: torch.Tensor,
                    pos_embed: torch.Tensor) -> torch.Tensor:
    """A plain model's input tokens: the class token before the patch
    tokens, plus the position embedding (as DeiT).

    Args:
        patches (torch.Tensor): Patch embeddings ``(B, C, H, W)``.
        cls_token (torch.Tensor): ``(1, 1, C)``.
        pos_embed (torch.Tensor): ``(1, 1 + H * W, C)``.
    """
    tokens = map_to_grid(patches)
    cls_tokens = cls_token.expand(tokens.shape[0], -1, -1)
    return torch.cat((cls_tokens, tokens), dim=1) + pos_embed


@torch.no_grad()
def fold_for_inference(model: nn.Module) -> nn.Module:
    """Deploy mode, as LeViT and RepVGG have it: every conv-BN pair of
    ``model`` becomes one convolution, every attention precomputes its
    bias mask, and every linear layer (the first of each channel MLP with
    its GELU) runs as one oneDNN call where it runs on a CPU
    (:func:`linear`). Outputs equal eval-mode outputs up to float
    rounding.

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
            module.precompute_bias()
        if isinstance(module, (ConvNeXtBlock, FeedForward)):
            module.fused_linears = True
    return model
