"""Forward cross attention: the regular tokens of a window attend to
themselves and to the cross tokens of the earlier blocks, with a relative
position bias and a learned depth bias."""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .fast_paths import biased_attention
from .tracing import onnx_dynamo_export


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


#: The alignment, in elements, that PyTorch's memory-efficient CUDA
#: attention kernel (the one a float mask takes) wants of an additive mask:
#: every stride but the last a multiple of it. torch pads an unaligned mask
#: on every call in eager mode and refuses it under ``torch.compile``
#: ("attn_bias is not correctly aligned").
MASK_ALIGNMENT = 8


def aligned_length(length: int) -> int:
    """``length`` rounded up to a multiple of :data:`MASK_ALIGNMENT`."""
    return -(-length // MASK_ALIGNMENT) * MASK_ALIGNMENT


def _follow_loaded_weights(module: 'ForwardCrossAttention',
                           incompatible_keys) -> None:
    """In deploy mode, precompute again from the weights just loaded."""
    if module.deploy_bias is not None:
        module.prepare_deploy()


class ForwardCrossAttention(nn.Module):
    """Multi-head attention of the regular tokens over themselves and over
    the cross tokens of earlier blocks.

    Queries come from the ``N`` regular tokens of a window; keys and values
    from those tokens plus the cross tokens, which are first multiplied by
    learnable scale factors (LSFs) and layer-normalised. Regular keys get a
    relative position bias, cross keys a learned depth bias (one value per
    cross token and head). Both biases enter
    :func:`torch.nn.functional.scaled_dot_product_attention` as an additive
    mask (:meth:`attention_bias`).

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
        self.num_queries = num_prefix_tokens + window_size * window_size
        self.num_keys = self.num_queries + num_cross_tokens
        #: The keys the mask is allocated with (:meth:`attention_bias`).
        self.num_padded_keys = aligned_length(self.num_keys)
        #: Export the attention as one ONNX Attention node (opset 23) when
        #: the torch.export-based ONNX exporter records the forward; set
        #: by :func:`~mmfca.models.layers.deploy.onnx_export_form`.
        self.onnx_attention = False
        # Set by :meth:`prepare_deploy` (deploy mode): the padded mask and
        # the cross tokens' folded key/value projection. Non-persistent
        # buffers, so that they follow ``.to()``, ``.half()`` and the like.
        self.register_buffer('deploy_bias', None, persistent=False)
        self.register_buffer('deploy_cross_weight', None, persistent=False)
        self.register_buffer('deploy_cross_bias', None, persistent=False)
        # After the submodules (qkv, cross_norm) have loaded as well.
        self.register_load_state_dict_post_hook(_follow_loaded_weights)

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

    @torch.no_grad()
    def prepare_deploy(self) -> None:
        """Deploy mode: store the padded attention mask and the cross
        tokens' key/value projection with ``cross_norm``'s affine folded in
        (:meth:`folded_cross_projection`)."""
        self.deploy_bias = self._padded_bias()
        if self.cross_norm is not None:
            self.deploy_cross_weight, self.deploy_cross_bias = \
                self.folded_cross_projection()

    def folded_cross_projection(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The key/value projection of the cross tokens with the affine of
        ``cross_norm`` folded in, for deploy mode: ``W' = W_kv * gamma``,
        ``b' = W_kv beta + b_kv``, so that a LayerNorm without affine and
        ``W'``, ``b'`` give ``W_kv (gamma LN(x) + beta) + b_kv`` up to float
        rounding. The LSFs before the norm do not fold: ``LN(s x)`` equals
        ``LN(x)`` only for ``eps = 0``, so they stay a multiplication.

        Returns:
            tuple: ``W'`` ``(2 C, C)`` and ``b'`` ``(2 C, )``, computed in
            at least float32 and returned in the projection's dtype.
        """
        if self.cross_norm is None:
            raise ValueError(
                'This attention has no cross tokens (the first block of a '
                'stage), so it has no cross_norm to fold.')
        channels = self.embed_dims
        weight = self.qkv.weight[channels:]
        bias = self.qkv.bias[channels:]
        work = torch.promote_types(weight.dtype, torch.float32)
        wide = weight.to(work)
        folded_weight = wide * self.cross_norm.weight.to(work)
        folded_bias = bias.to(work) + wide @ self.cross_norm.bias.to(work)
        return folded_weight.to(weight.dtype), folded_bias.to(bias.dtype)

    def _padded_bias(self) -> torch.Tensor:
        """The mask from the tables, ``(1, heads, N, num_padded_keys)``: the
        keys past ``N + cross`` are zeros that :meth:`attention_bias`
        slices off."""
        bias = self.position_bias[:, self.position_bias_index].unsqueeze(0)
        if self.num_prefix_tokens > 0:
            prefix = self.num_prefix_tokens
            bias = F.pad(bias, [prefix, 0, prefix, 0])
        parts = [bias]
        if self.depth_bias is not None:
            parts.append(self.depth_bias.expand(-1, -1, self.num_queries, -1))
        spare = self.num_padded_keys - self.num_keys
        if spare > 0:
            parts.append(
                bias.new_zeros([1, self.num_heads, self.num_queries, spare]))
        return torch.cat(parts, dim=-1)

    def attention_bias(self,
                       dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The additive attention mask, ``(1, heads, N, N + cross)``.

        A view of a mask allocated with the keys rounded up to a multiple
        of :data:`MASK_ALIGNMENT`, so that its strides suit torch's
        memory-efficient CUDA kernel; it is cast before it is sliced, so
        that the cast copy is aligned as well. The mask is precomputed in
        deploy mode (:meth:`prepare_deploy`).

        Args:
            dtype (torch.dtype, optional): The queries' dtype: a float32
                mask with float16 / bfloat16 queries gave silently wrong
                results on cuDNN attention (PyTorch PR #191612). Defaults to
                the tables' dtype.
        """
        bias = self.deploy_bias
        if bias is None:
            bias = self._padded_bias()
        if dtype is not None:
            bias = bias.to(dtype)
        return bias[..., :self.num_keys]

    def _cross_keys_values(self, cross: torch.Tensor) -> torch.Tensor:
        """Keys and values of the cross tokens (their queries are not
        needed), ``(B, cross, 2 * C)``: LSFs, ``cross_norm``, the key/value
        part of ``qkv``; in deploy mode a LayerNorm without affine and the
        folded projection (:meth:`folded_cross_projection`)."""
        channels = self.embed_dims
        cross = cross * self.cross_scale
        if self.deploy_cross_weight is not None:
            cross = F.layer_norm(cross, [channels], None, None,
                                 self.cross_norm.eps)
            return F.linear(cross, self.deploy_cross_weight,
                            self.deploy_cross_bias)
        return F.linear(
            self.cross_norm(cross), self.qkv.weight[channels:],
            self.qkv.bias[channels:])

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
        if not torch.jit.is_scripting():
            if self.onnx_attention and onnx_dynamo_export():
                return self.proj(self.onnx_attend(qkv, cross))
        batch, length, _ = qkv.shape
        channels = self.embed_dims
        q, k, v = self._split_heads(qkv, 3).unbind(0)
        if self.cross_norm is not None and cross is not None:
            cross_k, cross_v = self._split_heads(
                self._cross_keys_values(cross), 2).unbind(0)
            k = torch.cat((k, cross_k), dim=2)
            v = torch.cat((v, cross_v), dim=2)
        x = biased_attention(q, k, v, self.attention_bias(q.dtype))
        x = x.transpose(1, 2).reshape(batch, length, channels)
        return self.proj(x)

    def onnx_attend(self,
                    qkv: torch.Tensor,
                    cross: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention before ``proj`` as the ONNX Attention operator
        (opset 23, :func:`torch.onnx.ops.attention`) on ``(B, tokens, C)``
        queries, keys and values: the form a dynamo ONNX export takes with
        :attr:`onnx_attention`. The runtime splits the heads inside the
        operator, so the graph holds no head transposes, and in deploy
        mode the mask is a constant input. Equal to the
        :func:`~torch.nn.functional.scaled_dot_product_attention` path up
        to float rounding (outside an export the operator's eager
        implementation runs).

        Args:
            qkv (torch.Tensor): As in :meth:`attend`.
            cross (torch.Tensor, optional): As in :meth:`forward`.

        Returns:
            torch.Tensor: ``(B, N, C)``, the heads' outputs side by side.
        """
        channels = self.embed_dims
        q, k, v = qkv.split(channels, dim=-1)
        if self.cross_norm is not None and cross is not None:
            cross_k, cross_v = self._cross_keys_values(cross).split(
                channels, dim=-1)
            k = torch.cat((k, cross_k), dim=1)
            v = torch.cat((v, cross_v), dim=1)
        out, _, _, _ = torch.onnx.ops.attention(
            q,
            k,
            v,
            self.attention_bias(q.dtype),
            q_num_heads=self.num_heads,
            kv_num_heads=self.num_heads)
        return out
