"""FcaFormer: forward cross attention in hybrid vision transformers.

`FcaFormer <https://arxiv.org/abs/2211.07198>`_ (Zhang et al., ICCV 2023) is
a hybrid backbone: a convolutional stem and two ConvNeXt stages, then two
transformer stages whose blocks also attend to the *cross tokens* made by the
earlier blocks of the same stage.

One class serves classification (mmpretrain), segmentation (mmseg) and
detection (mmdet). Attention always runs in square windows (14 in stage 3,
7 in stage 4 by default): at 224x224 input these windows cover the whole
feature map, which is exactly the ImageNet classifier; for larger or
irregular inputs the maps are padded to whole windows, as the official
downstream models do.
"""
import difflib
import inspect
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import ConvModule, fuse_conv_bn
from mmcv.cnn.bricks import DropPath
from mmengine.model import BaseModule, ModuleList, Sequential
from mmengine.registry import MODELS
from timm.layers import LayerNorm2d
from torch.nn.modules.batchnorm import _BatchNorm

from ..utils.checkpoint import (FcaFormerPretrainedInit,
                                prepare_backbone_state_dict)
from ..utils.layer_groups import fcaformer_layer_id


class ConvBN(ConvModule):
    """mmcv's :class:`~mmcv.cnn.ConvModule` as a bias-free convolution and
    a BatchNorm, no activation, with "same" padding.

    Its keys are ``conv.*`` and ``bn.*`` (mmcv's name for BN and SyncBN
    layers), those of the official conversion; another norm type gets
    mmcv's name for it. :meth:`FcaFormer.switch_to_deploy` folds the pair
    with mmcv's :func:`~mmcv.cnn.fuse_conv_bn`.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int): Kernel size. Defaults to 1.
        stride (int): Stride. Defaults to 1.
        groups (int): Convolution groups. Defaults to 1.
        norm_cfg (dict): Config of the norm layer. Defaults to BN.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 kernel_size: int = 1,
                 stride: int = 1,
                 groups: int = 1,
                 norm_cfg: dict = dict(type='BN')):
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
            norm_cfg=norm_cfg,
            act_cfg=None)

    def init_weights(self) -> None:
        """Leave the weights to :class:`FcaFormer`'s ``init_cfg`` (the
        official truncated normal). mmcv's Kaiming initialisation would run
        after it: mmengine calls the children's ``init_weights`` after the
        parent's ``init_cfg``."""


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


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block of the first two stages: 7x7 depthwise conv,
    LayerNorm and Linear-GELU-Linear over channels (channels-last), layer
    scale, drop path, residual.

    Its parameter names are those of mmpretrain's ``ConvNeXtBlock``, which
    mmfca first built on and which our checkpoints hold. It is defined here
    because importing mmpretrain's block imports mmpretrain's whole model
    package, and with it mmdet.

    Args:
        channels (int): Channels.
        drop_path_rate (float): Stochastic depth rate of the branch.
        layer_scale_init_value (float): Initial layer scale; 0 or less
            leaves the branch unscaled (no ``gamma``).
        with_cp (bool): Recompute the block in the backward pass instead of
            storing its activations (less memory while training).
    """

    def __init__(self,
                 channels: int,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 with_cp: bool = False):
        super().__init__()
        self.with_cp = with_cp
        self.depthwise_conv = nn.Conv2d(
            channels, channels, kernel_size=7, padding=3, groups=channels)
        self.norm = LayerNorm2d(channels, eps=1e-6)
        self.pointwise_conv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pointwise_conv2 = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(
            torch.full((channels, ), float(layer_scale_init_value))
        ) if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(
            drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _branch(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise_conv(x).permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.norm.normalized_shape, self.norm.weight,
                         self.norm.bias, self.norm.eps)
        x = self.pointwise_conv2(self.act(self.pointwise_conv1(x)))
        if self.gamma is not None:
            x = x * self.gamma
        return x.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            branch = cp.checkpoint(self._branch, x, use_reentrant=False)
        else:
            branch = self._branch(x)
        return x + self.drop_path(branch)


class ConvStem(BaseModule):
    """Two 3x3 stride-2 conv-BN layers with GELU between: 4x downsampling.

    Args:
        in_channels (int): Input image channels.
        out_channels (int): Output channels.
        norm_cfg (dict): Config of the norm layers.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: dict):
        super().__init__()
        self.conv1 = ConvBN(
            in_channels, out_channels // 2, 3, 2, norm_cfg=norm_cfg)
        self.act = nn.GELU()
        self.conv2 = ConvBN(
            out_channels // 2, out_channels, 3, 2, norm_cfg=norm_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


class Downsample(BaseModule):
    """Stage transition: 1x1 conv-BN, 3x3 stride-2 depthwise conv-BN, 1x1
    conv-BN, with GELU after the first two.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        norm_cfg (dict): Config of the norm layers.
    """

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: dict):
        super().__init__()
        self.conv1 = ConvBN(in_channels, out_channels, norm_cfg=norm_cfg)
        self.conv2 = ConvBN(
            out_channels,
            out_channels,
            3,
            2,
            groups=out_channels,
            norm_cfg=norm_cfg)
        self.conv3 = ConvBN(out_channels, out_channels, norm_cfg=norm_cfg)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


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


class ForwardCrossAttention(BaseModule):
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
        # Set by :meth:`FcaFormer.switch_to_deploy`; a non-persistent buffer
        # so that it follows ``.to()``, ``.half()`` and the like.
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

    def fit_tables(self, state_dict: dict, prefix: str) -> None:
        """Resize this module's bias tables and LSFs in ``state_dict`` (keys
        under ``prefix``) to this module's window, where they differ
        (bicubic). :class:`FcaFormer` calls it while loading weights when
        built with ``resize_bias_tables=True``."""
        key = prefix + 'position_bias'
        if key in state_dict and state_dict[key].shape != \
                self.position_bias.shape:
            state_dict[key] = resize_token_grids(state_dict[key], 1,
                                                 self.window_size)
        if self.num_cross_tokens == 0:
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
        precomputed one after :meth:`FcaFormer.switch_to_deploy`."""
        if self.deploy_bias is not None:
            return self.deploy_bias
        bias = self.position_bias[:, self.position_bias_index].unsqueeze(0)
        if self.num_prefix_tokens:
            prefix = self.num_prefix_tokens
            bias = F.pad(bias, (prefix, 0, prefix, 0))
        if self.num_cross_tokens == 0:
            return bias
        num_tokens = bias.shape[-1]
        depth = self.depth_bias.expand(-1, -1, num_tokens, -1)
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
        batch, length, channels = x.shape
        q, k, v = self._split_heads(self.qkv(x), 3).unbind(0)
        if self.num_cross_tokens > 0:
            cross = self.cross_norm(cross * self.cross_scale)
            # Only keys and values are needed for the cross tokens.
            kv_weight = self.qkv.weight[channels:]
            kv_bias = self.qkv.bias[channels:]
            cross_k, cross_v = self._split_heads(
                F.linear(cross, kv_weight, kv_bias), 2).unbind(0)
            k = torch.cat((k, cross_k), dim=2)
            v = torch.cat((v, cross_v), dim=2)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self.attention_bias().to(q.dtype))
        x = x.transpose(1, 2).reshape(batch, length, channels)
        return self.proj(x)


class FeedForward(BaseModule):
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
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dims, embed_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class FcaBlock(BaseModule):
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
        norm_cfg (dict): Config of the BN after the 3x3 depthwise conv.
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
                 norm_cfg: dict = dict(type='BN'),
                 num_prefix_tokens: int = 0):
        super().__init__()
        self.window_size = window_size
        self.num_prefix_tokens = num_prefix_tokens
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = ForwardCrossAttention(embed_dims, num_heads, window_size,
                                          num_cross_tokens, num_prefix_tokens)
        self.ls1 = LayerScale(embed_dims, layer_scale_init_value)
        if makes_cross_tokens:
            self.cross_token_conv = nn.Conv2d(
                embed_dims,
                embed_dims,
                kernel_size=7,
                stride=4,
                padding=3,
                groups=embed_dims,
                bias=False)
        else:
            self.cross_token_conv = None
        self.local_conv = ConvBN(
            embed_dims, embed_dims, 3, groups=embed_dims, norm_cfg=norm_cfg)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.ffn = FeedForward(embed_dims, int(embed_dims * mlp_ratio))
        self.ls2 = LayerScale(embed_dims, layer_scale_init_value)
        self.drop_path = DropPath(
            drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        cross: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            x (torch.Tensor): Window tokens ``(B, ws * ws, C)``.
            cross (torch.Tensor, optional): Cross tokens of earlier blocks.

        Returns:
            tuple: The new tokens and this block's cross tokens
            ``(B, ceil(ws / 4) ** 2, C)`` (None for the last block).
        """
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), cross)))
        x, new_cross = self.merge_and_enhance(x)
        x = x + self.drop_path(self.ls2(self.ffn(self.norm2(x))))
        return x, new_cross

    def merge_and_enhance(self, x: torch.Tensor
                          ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Token merging and enhancement (TME) of window tokens
        ``(B, prefix + ws * ws, C)``: the enhanced tokens and this block's
        cross tokens (None for the last block); prefix tokens pass
        unchanged."""
        prefix, x = x.split(
            [self.num_prefix_tokens, x.shape[1] - self.num_prefix_tokens],
            dim=1)
        batch, _, channels = x.shape
        fmap = x.transpose(1, 2).reshape(batch, channels, self.window_size,
                                         self.window_size)
        new_cross = None
        if self.cross_token_conv is not None:
            new_cross = self.cross_token_conv(fmap).flatten(2).transpose(1, 2)
        x = self.local_conv(fmap).flatten(2).transpose(1, 2)
        if self.num_prefix_tokens:
            x = torch.cat((prefix, x), dim=1)
        return x, new_cross


def tracing_shapes() -> bool:
    """Whether the forward is being recorded for export (TorchScript
    tracing, as the legacy ONNX exporter does, or torch.export), where
    branching on feature-map sizes would bake in the traced size."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()


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


class FcaStage(BaseModule):
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
        norm_cfg (dict): Config of the BN layers.
        with_cp (bool): Checkpoint each block's activations.
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
                 norm_cfg: dict = dict(type='BN'),
                 with_cp: bool = False,
                 num_prefix_tokens: int = 0):
        super().__init__()
        self.window_size = window_size
        self.with_cp = with_cp
        cross_per_block = math.ceil(window_size / 4)**2
        self.blocks = ModuleList([
            FcaBlock(
                embed_dims,
                num_heads,
                window_size,
                num_cross_tokens=i * cross_per_block,
                makes_cross_tokens=i < depth - 1,
                mlp_ratio=mlp_ratio,
                drop_path_rate=drop_path_rates[i],
                layer_scale_init_value=layer_scale_init_value,
                norm_cfg=norm_cfg,
                num_prefix_tokens=num_prefix_tokens) for i in range(depth)
        ])

    def _run_block(self, block: FcaBlock, tokens: torch.Tensor,
                   cross_tokens: List[torch.Tensor]) -> torch.Tensor:
        cross = torch.cat(cross_tokens, dim=1) if cross_tokens else None
        if self.with_cp and tokens.requires_grad:
            tokens, new_cross = cp.checkpoint(
                block, tokens, cross, use_reentrant=False)
        else:
            tokens, new_cross = block(tokens, cross)
        if new_cross is not None:
            cross_tokens.append(new_cross)
        return tokens

    def run_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run every block on the same windows.

        Args:
            tokens (torch.Tensor): ``(B * windows, prefix + ws * ws, C)``.
        """
        cross_tokens: List[torch.Tensor] = []
        for block in self.blocks:
            tokens = self._run_block(block, tokens, cross_tokens)
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        ws = self.window_size
        pad_h = -height % ws
        pad_w = -width % ws
        if not tracing_shapes() and not (pad_h or pad_w):
            # Whole windows: every block sees the same windows, so the
            # tokens stay partitioned through the stage. (A trace for
            # export takes the general path below, which gives the same
            # values for whole windows and records the padding as
            # arithmetic on the input size, so the graph serves any size.)
            tokens = self.run_blocks(window_partition(x, ws))
            return window_reverse(tokens, ws, height, width)
        padded_h, padded_w = height + pad_h, width + pad_w
        cross_tokens: List[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            top_left = i % 2 == 0
            pad = (pad_w, 0, pad_h, 0) if top_left else (0, pad_w, 0, pad_h)
            tokens = window_partition(F.pad(x, pad), ws)
            tokens = self._run_block(block, tokens, cross_tokens)
            x = window_reverse(tokens, ws, padded_h, padded_w)
            if top_left:
                x = x[:, :, pad_h:, pad_w:]
            else:
                x = x[:, :, :height, :width]
        return x


class OutputProjection(BaseModule):
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


@MODELS.register_module()
class FcaFormer(BaseModule):
    """FcaFormer backbone for classification, segmentation and detection.

    A PyTorch implementation of `FcaFormer: Forward Cross Attention in
    Hybrid Vision Transformer <https://arxiv.org/abs/2211.07198>`_, built to
    load the official ImageNet and downstream weights unchanged.

    Args:
        arch (str | dict): 'l1', 'l2', 'l3' or 'l4' (case-insensitive), or a
            dict with ``channels`` (4 ints), ``depths`` (4 ints) and
            ``num_heads`` (4 ints; the first two, for the ConvNeXt stages,
            are ignored). 'l0' is the paper's plain model, DeiT-Tiny with
            FcaBlocks: a 16x16 patch embedding, DeiT's class token and
            learned position embedding (``cls_token``, ``pos_embed``) and
            one stage of FcaBlocks; it outputs the normalised class token
            (DeiT's head input) and takes images whose patch grid is one
            attention window (224x224 by default). A dict with one entry
            per key and ``patch_size`` builds other plain models. Defaults
            to 'l2'.
        in_channels (int): Input image channels. Defaults to 3.
        window_size (int | Sequence[int], optional): Attention window of
            each FcaFormer stage (stages 3 and 4; the one stage of 'l0').
            Defaults to the feature sizes of 224x224 ImageNet pretraining,
            (14, 7) or (14, ) for 'l0', so pretrained bias tables load
            unchanged.
        out_indices (int | Sequence[int]): Stages to output. Defaults to -1
            (the last).
        out_channels (Sequence[int], optional): If given, every output is
            widened by a 1x1 conv + LayerNorm to these channels (one entry
            per stage), as the official dense models do, e.g.
            ``(96, 192, 384, 768)`` for L2. Defaults to None (a LayerNorm
            per output, no projection).
        gap_before_final_norm (bool): Average-pool each output and apply a
            LayerNorm (the hybrid ImageNet classifiers' final norm; the
            plain model's head reads its class token instead). Defaults to
            False.
        drop_path_rate (float): Stochastic depth rate. Defaults to 0.
        layer_scale_init_value (float): Layer scale init. Defaults to 1e-6.
        mlp_ratio (float): FFN expansion. Defaults to 4.
        norm_cfg (dict): Config of the BN layers (stem, downsampling, TME).
            Defaults to ``dict(type='BN')``.
        frozen_stages (int): Stages to freeze with their downsampling layer
            (stage 0 includes the stem). Defaults to 0.
        norm_eval (bool): Keep BN layers in eval mode while training.
            Defaults to False.
        with_cp (bool): Activation checkpointing per block. Defaults to
            False.
        resize_bias_tables (bool): When loading weights made for other
            windows (e.g. 224 pretraining, then a classifier at 384 with
            ``window_size=(24, 12)``), resize the position and depth bias
            tables and the LSFs bicubically instead of failing. Defaults to
            False.
        init_cfg (dict | list[dict], optional): Initialisation config.
            Defaults to the official initialisation. A
            ``dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')``
            is run by :class:`~mmfca.models.utils.FcaFormerPretrainedInit`
            after the default initialisation: ``checkpoint`` may be a path,
            a URL or an mmengine storage URI, ``map_location`` works as in
            mmengine, and it accepts official ImageNet checkpoints (add
            ``use_ema=True`` for their EMA weights, or an mmengine
            checkpoint's), official downstream checkpoints and mmfca /
            OpenMMLab checkpoints; ``prefix`` is optional. A checkpoint that
            lacks backbone tensors is refused, except for the output layers
            of a dense backbone started from an ImageNet classifier (logged
            by name); ``strict=False`` loads what matches and logs the rest
            as missing, but a checkpoint that matches nothing is refused
            either way. What was loaded is kept in ``load_report``.

    Every load (``load_state_dict``, mmengine's ``load_checkpoint`` and
    ``load_from``, timm's loader) also takes official key names, resizes
    bias tables with ``resize_bias_tables=True`` and names the arch of
    weights that do not fit: a load-state-dict pre-hook runs
    :func:`~mmfca.models.utils.prepare_backbone_state_dict`.
    """

    arch_zoo = {
        # The paper's plain model (Table 1): DeiT-Tiny's layout (16x16
        # patches, 192 channels, 12 blocks, 3 heads) with FcaFormer blocks.
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
    # The hybrid archs: a conv stem, 2 ConvNeXt stages, 2 FcaFormer stages.
    hybrid_stages = 4
    hybrid_conv_stages = 2
    # The official initialisation: truncated normal for conv and linear
    # weights, unit LayerNorms (BN layers start at weight 1, bias 0).
    default_init_cfg = [
        dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
        dict(type='Constant', layer=['LayerNorm'], val=1., bias=0.),
    ]

    @classmethod
    def _unknown_arguments(cls, unknown: dict) -> str:
        """The message for config keys FcaFormer does not take, with the
        closest valid names (a typo in a config otherwise surfaces as a bare
        ``unexpected keyword argument``)."""
        valid = [
            name for name in inspect.signature(cls.__init__).parameters
            if name not in ('self', 'unknown')
        ]
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean '{close[0]}'?" if close else 'unknown'
            hints.append(f"'{name}' ({hint})")
        return (f'FcaFormer got unexpected argument(s) {", ".join(hints)}. '
                f'Its arguments are: {", ".join(valid)}.')

    def __init__(self,
                 arch: Union[str, dict] = 'l2',
                 in_channels: int = 3,
                 window_size: Optional[Union[int, Sequence[int]]] = None,
                 out_indices: Union[int, Sequence[int]] = -1,
                 out_channels: Optional[Sequence[int]] = None,
                 gap_before_final_norm: bool = False,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 mlp_ratio: float = 4.,
                 norm_cfg: dict = dict(type='BN'),
                 frozen_stages: int = 0,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 resize_bias_tables: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
                 **unknown):
        if unknown:
            raise TypeError(self._unknown_arguments(unknown))
        super().__init__(init_cfg=self._with_pretrained_loader(init_cfg))
        self.arch_settings = self._parse_arch(arch)
        channels = self.arch_settings['channels']
        depths = self.arch_settings['depths']
        num_heads = self.arch_settings['num_heads']
        patch_size = self.arch_settings.get('patch_size')
        self.num_stages = len(depths)
        self.num_conv_stages = 0 if patch_size else self.hybrid_conv_stages
        # The plain model is a ViT: a class token and absolute positions.
        self.has_class_token = bool(patch_size)
        if self.has_class_token and (gap_before_final_norm
                                     or out_channels is not None):
            raise ValueError(
                'The plain FcaFormer (arch with patch_size, e.g. \'l0\') '
                'outputs its class token, as DeiT: leave '
                'gap_before_final_norm=False and out_channels=None.')
        self.channels = channels
        self.in_channels = in_channels
        self.window_size = self._parse_window_size(window_size)
        self.out_indices = self._parse_out_indices(out_indices)
        self.gap_before_final_norm = gap_before_final_norm
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.resize_bias_tables = resize_bias_tables
        self.deploy = False
        if out_channels is not None:
            out_channels = tuple(out_channels)
            if len(out_channels) != self.num_stages:
                raise ValueError(f'out_channels needs one entry per stage '
                                 f'({self.num_stages}), got {out_channels}.')
        self.out_channels = out_channels

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        if patch_size:
            stem = nn.Conv2d(
                in_channels, channels[0], patch_size, stride=patch_size)
            grid = self.window_size[0]
            self.cls_token = nn.Parameter(torch.zeros(1, 1, channels[0]))
            self.pos_embed = nn.Parameter(
                torch.zeros(1, 1 + grid * grid, channels[0]))
            # DeiT's initialisation; Pretrained weights replace it.
            nn.init.trunc_normal_(self.cls_token, std=.02)
            nn.init.trunc_normal_(self.pos_embed, std=.02)
        else:
            stem = ConvStem(in_channels, channels[0], norm_cfg)
        self.downsample_layers = ModuleList([stem])
        for i in range(1, self.num_stages):
            self.downsample_layers.append(
                Downsample(channels[i - 1], channels[i], norm_cfg))

        self.stages = ModuleList()
        block_idx = 0
        for i in range(self.num_stages):
            rates = dpr[block_idx:block_idx + depths[i]]
            block_idx += depths[i]
            if i < self.num_conv_stages:
                stage = Sequential(*[
                    ConvNeXtBlock(
                        channels[i],
                        drop_path_rate=rate,
                        layer_scale_init_value=layer_scale_init_value,
                        with_cp=with_cp) for rate in rates
                ])
            else:
                stage = FcaStage(
                    channels[i],
                    depths[i],
                    num_heads[i],
                    self.window_size[i - self.num_conv_stages],
                    rates,
                    mlp_ratio=mlp_ratio,
                    layer_scale_init_value=layer_scale_init_value,
                    norm_cfg=norm_cfg,
                    with_cp=with_cp,
                    num_prefix_tokens=int(self.has_class_token))
            self.stages.append(stage)

        for i in self.out_indices:
            if self.has_class_token:
                # DeiT's final norm, on the tokens.
                self.add_module(f'norm{i}',
                                nn.LayerNorm(channels[i], eps=1e-6))
            elif gap_before_final_norm:
                self.add_module(f'norm{i}', nn.LayerNorm(channels[i]))
            elif out_channels is not None:
                self.add_module(f'proj{i}',
                                OutputProjection(channels[i], out_channels[i]))
            else:
                self.add_module(f'norm{i}', LayerNorm2d(channels[i], eps=1e-6))
        self._freeze_stages()
        # As mmpretrain's Swin fits its tables: for every way of loading.
        self._register_load_state_dict_pre_hook(self._prepare_state_dict)

    @classmethod
    def _with_pretrained_loader(cls, init_cfg: Optional[Union[dict,
                                                              List[dict]]]
                                ) -> Union[dict, List[dict]]:
        """The init_cfg that mmengine runs: the default initialisation
        unless another is given, and a ``Pretrained`` entry run by
        :class:`FcaFormerPretrainedInit` after the others. (mmengine runs it
        before the children's ``init_weights``, not after as its own
        ``Pretrained``; FcaFormer's parts initialise nothing themselves.)"""
        if not init_cfg:
            return cls.default_init_cfg
        cfgs = [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg)
        pretrained = [
            dict(cfg, type=FcaFormerPretrainedInit) for cfg in cfgs
            if cfg.get('type') == 'Pretrained'
        ]
        if not pretrained:
            return init_cfg
        others = [cfg for cfg in cfgs if cfg.get('type') != 'Pretrained']
        return (others or cls.default_init_cfg) + pretrained

    @classmethod
    def _parse_arch(cls, arch: Union[str, dict]) -> Dict[str, tuple]:
        if isinstance(arch, str):
            key = arch.lower()
            if key not in cls.arch_zoo:
                raise ValueError(
                    f'Unknown FcaFormer arch {arch!r}. Choose one of '
                    f'{sorted(cls.arch_zoo)} or pass a dict with "channels",'
                    f' "depths" and "num_heads".')
            return cls.arch_zoo[key]
        if not isinstance(arch, dict):
            raise TypeError(
                f'arch must be a str or a dict, got {type(arch).__name__}.')
        needed = {'channels', 'depths', 'num_heads'}
        if not needed <= set(arch) <= needed | {'patch_size'}:
            raise ValueError(
                f'A custom FcaFormer arch needs exactly the keys '
                f'{sorted(needed)} (plus "patch_size" for a plain model), '
                f'got {sorted(arch)}.')
        settings = {k: tuple(int(v) for v in arch[k]) for k in needed}
        plain = 'patch_size' in arch
        stages = len(settings['depths']) if plain else cls.hybrid_stages
        for key, values in settings.items():
            if len(values) != stages:
                raise ValueError(f'arch["{key}"] needs {stages} entries, got '
                                 f'{values}.')
        if plain:
            settings['patch_size'] = int(arch['patch_size'])
        for i in range(0 if plain else cls.hybrid_conv_stages, stages):
            width, heads = settings['channels'][i], settings['num_heads'][i]
            if heads <= 0 or width % heads:
                raise ValueError(
                    f'Stage {i}: {width} channels cannot be split into '
                    f'{heads} attention heads; choose num_heads that divides '
                    f'the channels.')
        return settings

    def _parse_window_size(self, window_size) -> Tuple[int, ...]:
        count = self.num_stages - self.num_conv_stages
        if window_size is None:
            # The feature sizes of 224x224 pretraining.
            stride = self.arch_settings.get('patch_size') or 16
            window_size = tuple(224 // (stride * 2**i) for i in range(count))
        if isinstance(window_size, int):
            window_size = (window_size, ) * count
        window_size = tuple(window_size)
        if len(window_size) != count or any(not isinstance(w, int) or w < 1
                                            for w in window_size):
            raise ValueError(
                f'window_size must be a positive int or {count} of them (one '
                f'per FcaFormer stage), got {window_size}.')
        return window_size

    def _parse_out_indices(self, out_indices) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        parsed = []
        for index in out_indices:
            if not -self.num_stages <= index < self.num_stages:
                raise ValueError(
                    f'out_indices entries must be in [-{self.num_stages}, '
                    f'{self.num_stages - 1}], got {index}.')
            parsed.append(index % self.num_stages)
        return tuple(sorted(set(parsed)))

    def output_module(self, index: int) -> nn.Module:
        """The norm or projection applied to output ``index``."""
        if hasattr(self, f'proj{index}'):
            return getattr(self, f'proj{index}')
        return getattr(self, f'norm{index}')

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if x.dim() != 4:
            raise ValueError(
                f'FcaFormer expects images as a 4-D tensor (N, C, H, W), got '
                f'a {x.dim()}-D tensor of shape {tuple(x.shape)}.')
        if not tracing_shapes() and x.shape[1] != self.in_channels:
            raise ValueError(
                f'FcaFormer was built for {self.in_channels} input channels '
                f'but got {x.shape[1]} (input shape {tuple(x.shape)}); set '
                f'in_channels={x.shape[1]} in the backbone config or fix the '
                f'data pipeline.')
        if self.has_class_token:
            return self._forward_plain(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(self.downsample_layers[i](x))
            if i in self.out_indices:
                if self.gap_before_final_norm:
                    outs.append(self.output_module(i)(x.mean((-2, -1))))
                else:
                    outs.append(self.output_module(i)(x))
        return tuple(outs)

    def _forward_plain(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        """The plain model: patch tokens after the class token, position
        embedding, the blocks on the one window, the normalised class
        token."""
        x = self.downsample_layers[0](x)
        side = self.window_size[0]
        if not tracing_shapes() and x.shape[-2:] != (side, side):
            patch = self.arch_settings['patch_size']
            raise ValueError(
                f'The plain FcaFormer attends over one {side}x{side} window '
                f'of {patch}x{patch} patches with a position embedding of '
                f'that size, so it takes {side * patch}x{side * patch} '
                f'images; got a {x.shape[-2]}x{x.shape[-1]} patch grid '
                f'(input {tuple(x.shape)}). Resize the images (the ImageNet '
                f'pipelines crop to 224) or build it with window_size equal '
                f'to your patch grid.')
        tokens = x.flatten(2).transpose(1, 2)
        cls_token = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls_token, tokens), dim=1) + self.pos_embed
        tokens = self.stages[0].run_blocks(tokens)
        return (self.output_module(0)(tokens[:, 0]), )

    @torch.no_grad()
    def switch_to_deploy(self) -> 'FcaFormer':
        """Prepare for inference, as mmpretrain's LeViT and RepVGG do: fold
        every conv + BatchNorm pair into one convolution (mmcv's
        :func:`~mmcv.cnn.fuse_conv_bn`) and precompute the attention bias
        masks. Outputs equal eval-mode outputs (up to float rounding); the
        model can no longer be trained or load checkpoints.

        Returns:
            FcaFormer: ``self``, in eval mode.
        """
        self.eval()
        for module in list(self.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, ConvBN):
                    fuse_conv_bn(child)
                    if isinstance(child.norm, nn.Identity):
                        # Folded: the convolution alone replaces the pair.
                        setattr(module, name, child.conv)
            if isinstance(module, ForwardCrossAttention):
                module.precompute_bias()
        self.deploy = True
        return self

    def get_layer_depth(self, param_name: str, prefix: str = ''):
        """Layer depth of a parameter, for mmpretrain's
        ``LearningRateDecayOptimWrapperConstructor``.

        The groups are the official layer-wise ones of the detection recipe
        (``layer_wise_cab``, see
        :class:`~mmfca.engine.FcaFormerLearningRateDecayOptimizerConstructor`)
        over 6 layers, or 12 when stage 3 is deeper than 9 blocks (L3, L4); the
        plain 'l0' has one depth per block.

        Args:
            param_name (str): Parameter name.
            prefix (str): Prefix of the backbone in ``param_name``.

        Returns:
            tuple[int, int]: The depth and the number of depths.
        """
        depths = self.arch_settings['depths']
        if self.num_conv_stages == 0:
            # Plain model: one depth per block, the stem at 0.
            num_layers = depths[0]
        else:
            num_layers = 12 if depths[2] > 9 else 6
        if not param_name.startswith(prefix):
            return num_layers + 1, num_layers + 2
        name = param_name[len(prefix):]
        if self.num_conv_stages == 0:
            match = re.match(r'stages\.0\.blocks\.(\d+)\.', name)
            if match:
                return int(match.group(1)) + 1, num_layers + 2
            first = ('downsample_layers.', 'cls_token', 'pos_embed')
            if name.startswith(first):
                return 0, num_layers + 2
            return num_layers + 1, num_layers + 2
        return fcaformer_layer_id('backbone.' + name, 'layer_wise_cab',
                                  num_layers), num_layers + 2

    def _prepare_state_dict(self, state_dict: dict, prefix: str, *args,
                            **kwargs) -> None:
        """Load-state-dict pre-hook: official names, bias tables for other
        windows, weights of another shape (see
        :func:`~mmfca.models.utils.prepare_backbone_state_dict`)."""
        prepare_backbone_state_dict(self, state_dict, prefix)

    def _freeze_stages(self):
        if self.has_class_token and self.frozen_stages > 0:
            self.cls_token.requires_grad = False
            self.pos_embed.requires_grad = False
        for i in range(self.frozen_stages):
            for module in (self.downsample_layers[i], self.stages[i]):
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False
            if i in self.out_indices:
                module = self.output_module(i)
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode: bool = True):
        if mode and self.deploy:
            raise RuntimeError(
                'This FcaFormer was switched to deploy mode (BatchNorm '
                'folded into the convolutions, attention masks '
                'precomputed), so it cannot be trained. Build a new model '
                '(and load the weights) to train.')
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self
