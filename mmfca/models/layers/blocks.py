"""The blocks of FcaFormer: the convolutional stem and stage transitions,
the ConvNeXt block of the first two stages, and the FcaBlock of the last
two (forward cross attention, token merging and enhancement, FFN)."""
from typing import Any, Callable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.checkpoint import checkpoint

from .attention import ForwardCrossAttention
from .fast_paths import channel_mlp
from .tracing import onnx_dynamo_export
from .windows import PaddedWindowIndex, grid_to_map, map_to_grid

NormLayer = Callable[[int], nn.Module]


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


#: What a fold replaced, to put back: (module, attribute, value).
Replaced = List[Tuple[nn.Module, str, Any]]


@torch.no_grad()
def fold_scale_into_linear(layer: nn.Linear, scale: torch.Tensor) -> Replaced:
    """Fold a per-channel scale applied to a linear layer's output into
    the layer: ``W' = s W`` (row-wise), ``b' = s b``, so that ``layer(x)``
    gives ``s * (W x + b)`` up to float rounding with one multiplication
    less per call (the ONNX export form,
    :func:`~mmfca.models.layers.deploy.onnx_export_form`). The layer gets
    new parameters, computed in at least float32 and stored in its dtype.

    Args:
        layer (nn.Linear): The linear layer (an ``InferenceLinear`` too).
        scale (torch.Tensor): ``(out_features, )``.

    Returns:
        list: The parameters replaced, as (module, name, parameter).
    """
    replaced: Replaced = [(layer, 'weight', layer.weight)]
    work = torch.promote_types(layer.weight.dtype, torch.float32)
    wide = scale.to(work)
    layer.weight = nn.Parameter(
        (layer.weight.to(work) * wide[:, None]).to(layer.weight.dtype))
    if layer.bias is not None:
        replaced.append((layer, 'bias', layer.bias))
        layer.bias = nn.Parameter(
            (layer.bias.to(work) * wide).to(layer.bias.dtype))
    return replaced


def tokens_as_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``(tokens, C)`` rows in a dynamo ONNX export, so that its
    linear layers export as 2-D Gemms without the two Reshapes ONNX
    Runtime wraps each linear layer on ``(..., C)`` in; ``x`` itself
    elsewhere (flattening a permuted map copies it, which costs eager mode
    time). The norm and the linear layers treat the leading dimensions
    alike, so the values are the same either way."""
    if not torch.jit.is_scripting():
        if onnx_dynamo_export():
            return x.reshape(-1, x.shape[-1])
    return x


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

    def fold_layer_scale(self) -> Replaced:
        """Fold ``gamma`` into ``pointwise_conv2``
        (:func:`fold_scale_into_linear`), then None.

        Returns:
            list: What was replaced, as (module, attribute, value).
        """
        if self.gamma is None:
            return []
        replaced: Replaced = [(self, 'gamma', self.gamma)]
        replaced += fold_scale_into_linear(self.pointwise_conv2, self.gamma)
        self.gamma = None
        return replaced

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.depthwise_conv(x).permute(0, 2, 3, 1)
        branch = channel_mlp(
            self.norm(tokens_as_rows(branch)),
            (self.pointwise_conv1.weight, self.pointwise_conv1.bias),
            (self.pointwise_conv2.weight, self.pointwise_conv2.bias),
            self.fused_linears).reshape(branch.shape)
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
        out = channel_mlp(
            self.norm(tokens_as_rows(x)), (self.fc1.weight, self.fc1.bias),
            (self.fc2.weight, self.fc2.bias), self.fused_linears)
        return out.reshape(x.shape)


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
        #: Whether the branches are dropped in training (the padded path
        #: then draws per window, see :meth:`_forward_padded`).
        self.drops_path = drop_path_rate > 0

    def fold_layer_scales(self) -> Replaced:
        """Fold ``ls1`` into ``attn.proj`` and ``ls2`` into ``ffn.fc2``
        (:func:`fold_scale_into_linear`), each then an ``nn.Identity``.

        Returns:
            list: What was replaced, as (module, attribute, value).
        """
        replaced: Replaced = []
        for name, layer in (('ls1', self.attn.proj), ('ls2', self.ffn.fc2)):
            scale = getattr(self, name)
            if isinstance(scale, LayerScale):
                replaced.append((self, name, scale))
                replaced += fold_scale_into_linear(layer, scale.weight)
                setattr(self, name, nn.Identity())
        return replaced

    def forward(
        self,
        x: torch.Tensor,
        cross: Optional[torch.Tensor] = None,
        padded: Optional[PaddedWindowIndex] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x (torch.Tensor): Window tokens ``(B * windows, prefix + ws * ws,
                C)``; with ``padded``, the real tokens of a map in map order,
                ``(B, H * W, C)``.
            cross (torch.Tensor, optional): Cross tokens of earlier blocks.
            padded (tuple, optional): Where the map's tokens go when it is
                padded to whole windows (:func:`padded_window_index`):
                the block then gives the outputs at the real positions of
                padding, window partition, the block and cropping (see
                :meth:`_forward_padded`).

        Returns:
            tuple: The new tokens (as ``x``) and this block's cross tokens
            ``(B * windows, ceil(ws / 4) ** 2, C)`` (None for the last
            block).
        """
        if not torch.jit.is_scripting():
            if self.grad_checkpointing and x.requires_grad:
                return checkpoint(
                    self._forward, x, cross, padded, use_reentrant=False)
        return self._forward(x, cross, padded)

    def _forward(
        self, x: torch.Tensor, cross: Optional[torch.Tensor],
        padded: Optional[PaddedWindowIndex]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if padded is not None:
            return self._forward_padded(x, cross, padded)
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), cross)))
        x, new_cross = self.merge_and_enhance(x)
        x = x + self.drop_path(self.ls2(self.ffn(self.norm2(x))))
        return x, new_cross

    def _forward_padded(self, tokens: torch.Tensor,
                        cross: Optional[torch.Tensor],
                        padded: PaddedWindowIndex
                        ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The block on a map padded to whole windows with zeros, without
        the work whose results the crop drops.

        Queries, attention and the TME run on whole windows (the TME's
        convolutions read the padded positions' attention outputs), but
        the qkv projection of the padded tokens, all alike, is computed
        once, and the FFN branch runs on the real tokens only.
        """
        window_index, token_index, token_window = padded
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
        if self.training and self.drops_path:
            # One draw per window, as drop path on the window batch.
            keep = self.drop_path(branch.new_ones(x.shape[0], 1, 1))
            keep = keep.reshape(batch, -1).index_select(1, token_window)
            branch = branch * keep.unsqueeze(-1)
        return x_real + branch, new_cross

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
