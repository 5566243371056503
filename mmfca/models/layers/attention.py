"""Forward cross attention: the regular tokens of a window attend to
themselves and to the cross tokens of the earlier blocks, with a relative
position bias and a learned depth bias."""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fast_paths import biased_attention


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
        a padded FcaBlock computes once per real token rather
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
