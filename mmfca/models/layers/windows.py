"""Tokens and feature maps: conversions, window partition, and the
indices of a map padded to whole windows."""
import functools
from typing import Tuple

import torch

#: For a map padded to whole windows (:func:`padded_window_index`):
#: ``window_index``, ``token_index`` and ``token_window``.
PaddedWindowIndex = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


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
                        top_left: bool,
                        device: torch.device) -> PaddedWindowIndex:
    """Where the tokens of a ``height x width`` map go when it is padded to
    whole windows at the top-left (or bottom-right) and partitioned, for
    :class:`~mmfca.models.layers.blocks.FcaBlock`.

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
def cached_padded_window_index(height: int, width: int, window_size: int,
                               top_left: bool,
                               device: torch.device) -> PaddedWindowIndex:
    """:func:`padded_window_index`, computed once per map size (eager).
    Made outside inference mode, so that a model first run under
    ``torch.inference_mode`` can still be trained."""
    with torch.inference_mode(False):
        return padded_window_index(height, width, window_size, top_left,
                                   device)
