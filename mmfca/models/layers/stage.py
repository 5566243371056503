"""The stages of FcaFormer and the builder both front ends share."""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .arch import check_rates, is_plain, num_conv_stages
from .blocks import ConvNeXtBlock, ConvStem, Downsample, FcaBlock, NormLayer
from .tracing import fixed_size_export, symbolic_shapes
from .windows import (PaddedWindowIndex, cached_padded_window_index,
                      grid_to_map, map_to_grid, padded_window_index,
                      window_partition, window_reverse)


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

    def run_blocks(self,
                   tokens: torch.Tensor,
                   padded: Optional[List[PaddedWindowIndex]] = None,
                   num_blocks: int = -1,
                   keep_all: bool = False) -> List[torch.Tensor]:
        """The one loop over the blocks, handing each block the cross tokens
        of the earlier ones: for whole windows, padded maps, the plain
        model's intermediates and activation checkpointing alike.

        Args:
            tokens (torch.Tensor): Window tokens ``(B * windows, prefix +
                ws * ws, C)``, or with ``padded`` a map's real tokens in map
                order ``(B, H * W, C)``.
            padded (list, optional): The map's padded-window indices for the
                even blocks (padding at the top-left) and, with two blocks
                or more, the odd ones (bottom-right).
            num_blocks (int): Run the first ``num_blocks`` blocks; -1 for
                all.
            keep_all (bool): Return the tokens after every block run, not
                only after the last.

        Returns:
            list[torch.Tensor]: The tokens after each block run (``keep_all``)
            or after the last.
        """
        count = len(self.blocks) if num_blocks < 0 else num_blocks
        outputs: List[torch.Tensor] = []
        cross_tokens: List[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            # No ``break``: TorchScript unrolls loops over module lists.
            if i < count:
                cross = torch.cat(cross_tokens, 1) if cross_tokens else None
                layout = padded[i % 2] if padded is not None else None
                tokens, new_cross = block(tokens, cross, layout)
                if new_cross is not None:
                    cross_tokens.append(new_cross)
                if keep_all:
                    outputs.append(tokens)
        return outputs if keep_all else [tokens]

    def _whole_windows(self, pad_h: int, pad_w: int) -> bool:
        """Whether the map is whole windows and may stay partitioned through
        the stage. Recording a forward for any size (the TorchScript-based
        ONNX export, FX, torch.export with symbolic sizes) takes the general
        path, which gives the same values and keeps the padding as
        arithmetic on the input size, so the recorded graph serves any
        size; torch.export at a fixed size records the path of that size
        (:func:`fixed_size_export`), without the padding's index work."""
        if not torch.jit.is_scripting():
            if symbolic_shapes() and not fixed_size_export(pad_h, pad_w):
                return False
        return pad_h == 0 and pad_w == 0

    def _one_recorded_window(self, height: int, width: int) -> bool:
        """Whether a recorded forward (a fixed-size export) sees a map of
        one window: its tokens are then the map's, partitioned without the
        six-axis permutes that ONNX Runtime runs slower than a four-axis
        one. Eager mode keeps the partition, whose copy gives the next
        layers the memory layout they have always had (the same values
        either way, bit for bit only so)."""
        if not torch.jit.is_scripting():
            if symbolic_shapes():
                return height == self.window_size and \
                    width == self.window_size
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        ws = self.window_size
        pad_h = (ws - height % ws) % ws
        pad_w = (ws - width % ws) % ws
        if self._whole_windows(pad_h, pad_w):
            if self._one_recorded_window(height, width):
                tokens = self.run_blocks(map_to_grid(x))[-1]
                return grid_to_map(tokens, height, width)
            tokens = self.run_blocks(window_partition(x, ws))[-1]
            return window_reverse(tokens, ws, height, width)
        # The real tokens in map order; each block pads and partitions
        # them by index.
        padded = [self._padded_indices(height, width, True, x.device)]
        if len(self.blocks) > 1:
            padded.append(self._padded_indices(height, width, False, x.device))
        tokens = self.run_blocks(map_to_grid(x), padded)[-1]
        return grid_to_map(tokens, height, width)

    def _padded_indices(self, height: int, width: int, top_left: bool,
                        device: torch.device) -> PaddedWindowIndex:
        """:func:`padded_window_index` for a block of this stage; cached in
        eager mode, computed from the (symbolic) sizes when recorded."""
        if not torch.jit.is_scripting():
            if not (symbolic_shapes() or torch.compiler.is_compiling()):
                return cached_padded_window_index(height, width,
                                                  self.window_size, top_left,
                                                  device)
        return padded_window_index(height, width, self.window_size, top_left,
                                   device)


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
    check_rates(drop_path_rate=drop_path_rate, mlp_ratio=mlp_ratio)
    channels = arch_settings['channels']
    depths = arch_settings['depths']
    conv_stages = num_conv_stages(arch_settings)
    plain = is_plain(arch_settings)
    # On the CPU explicitly: a model built under a meta device context
    # cannot read values back.
    rates = torch.linspace(
        0, drop_path_rate, sum(depths), device='cpu').tolist()

    if plain:
        patch_size = arch_settings['patch_size']
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
                    num_prefix_tokens=1 if plain else 0))
    return downsample_layers, stages


def set_grad_checkpointing(stages: nn.ModuleList, enable: bool) -> None:
    """Recompute every block of ``stages`` in the backward pass (or stop)."""
    for module in stages.modules():
        if isinstance(module, (ConvNeXtBlock, FcaBlock)):
            module.grad_checkpointing = enable
