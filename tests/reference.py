"""An independent, functional re-statement of the official FcaFormer.

Written from the official implementation's definition (layer order,
parameter names and shapes, padding rules), in plain tensor functions over
a state dict in the **official** layout, with an explicit softmax. The
tests compare mmfca against it: same official weights in, same outputs out.

Nothing here is used by the product.
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

ARCHS = {
    'l1': ((64, 128, 192, 320), (2, 2, 6, 2), (0, 0, 6, 10)),
    'l2': ((96, 192, 320, 480), (2, 2, 7, 2), (0, 0, 10, 15)),
    'l3': ((96, 192, 320, 512), (3, 6, 12, 3), (0, 0, 10, 16)),
    'l4': ((128, 256, 512, 768), (3, 6, 12, 3), (0, 0, 16, 24)),
}

# Official ImageNet classifiers' trainable parameter counts.
OFFICIAL_PARAMS = {
    'l1': 6187560,
    'l2': 16275870,
    'l3': 27894484,
    'l4': 65638204
}


def official_shapes(arch: str,
                    num_classes: int = 1000,
                    windows: Sequence[int] = (14, 7),
                    head_dims: Optional[Sequence[int]] = None) -> Dict:
    """Names and shapes of the official model's state dict.

    ``head_dims=None`` gives the ImageNet classifier; a sequence gives the
    official dense backbone with 1x1 conv + LayerNorm outputs.
    """
    dims, depths, heads = ARCHS[arch]
    shapes = {}

    def conv_bn(prefix, cin, cout, k, groups=1):
        shapes[f'{prefix}.c.weight'] = (cout, cin // groups, k, k)
        for name in ('weight', 'bias', 'running_mean', 'running_var'):
            shapes[f'{prefix}.bn.{name}'] = (cout, )
        shapes[f'{prefix}.bn.num_batches_tracked'] = ()

    def linear(prefix, cin, cout):
        shapes[f'{prefix}.weight'] = (cout, cin)
        shapes[f'{prefix}.bias'] = (cout, )

    def norm(prefix, c):
        shapes[f'{prefix}.weight'] = (c, )
        shapes[f'{prefix}.bias'] = (c, )

    conv_bn('patch_embed.seq.0', 3, dims[0] // 2, 3)
    conv_bn('patch_embed.seq.2', dims[0] // 2, dims[0], 3)
    for stage in range(4):
        c = dims[stage]
        for b in range(depths[stage]):
            p = f'layer_{stage}.blocks.{b}'
            if stage < 2:
                shapes[f'{p}.dwconv.weight'] = (c, 1, 7, 7)
                shapes[f'{p}.dwconv.bias'] = (c, )
                norm(f'{p}.norm', c)
                linear(f'{p}.pwconv1', c, 4 * c)
                linear(f'{p}.pwconv2', 4 * c, c)
                shapes[f'{p}.gamma'] = (c, )
                continue
            ws = windows[stage - 2]
            n_cross = b * math.ceil(ws / 4)**2
            shapes[f'{p}.gamma_1'] = (c, )
            shapes[f'{p}.gamma_2'] = (c, )
            if b < depths[stage] - 1:
                shapes[f'{p}.dw_conv.weight'] = (c, 1, 7, 7)
            if b > 0:
                shapes[f'{p}.s_token_bias'] = (1, heads[stage], 1, n_cross)
                norm(f'{p}.s_norm', c)
                shapes[f'{p}.s_scale_factors'] = (1, n_cross, 1)
            norm(f'{p}.norm1', c)
            shapes[f'{p}.attention_biases'] = (heads[stage], ws * ws)
            linear(f'{p}.qkv', c, 3 * c)
            linear(f'{p}.proj', c, c)
            conv_bn(f'{p}.local_conv', c, c, 3, groups=c)
            norm(f'{p}.norm2', c)
            norm(f'{p}.mlp.norm', c)
            linear(f'{p}.mlp.fc1', c, 4 * c)
            linear(f'{p}.mlp.fc2', 4 * c, c)
        if stage < 3:
            p = f'layer_{stage}.downsample'
            conv_bn(f'{p}.conv1', c, dims[stage + 1], 1)
            conv_bn(
                f'{p}.conv2',
                dims[stage + 1],
                dims[stage + 1],
                3,
                groups=dims[stage + 1])
            conv_bn(f'{p}.conv3', dims[stage + 1], dims[stage + 1], 1)
    if head_dims is None:
        norm('norm_head', dims[3])
        linear('head', dims[3], num_classes)
    else:
        for i in range(4):
            norm(f'norm{i}', head_dims[i])
            shapes[f'head{i}.weight'] = (head_dims[i], dims[i], 1, 1)
    return shapes


# Parameters drawn as small noise around 0.
SMALL_NOISE = ('running_mean', 'bias', 'attention_biases', 's_token_bias')


def random_official_state_dict(shapes: Dict, seed: int = 0) -> Dict:
    """Random weights of the given shapes, large enough that every path
    (layer scales, LSFs, depth and position biases, BN statistics) changes
    the outputs."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes.items():
        if name.endswith('num_batches_tracked'):
            state[name] = torch.tensor(7)
        elif name.endswith('running_var'):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        elif name.endswith(SMALL_NOISE):
            state[name] = torch.randn(shape, generator=gen) * 0.2
        elif name.endswith(('gamma', 'gamma_1', 'gamma_2')):
            state[name] = torch.rand(shape, generator=gen) * 0.5 + 0.25
        elif name.endswith('s_scale_factors') or (
                len(shape) == 1
                and 'norm' in name) or name.endswith('bn.weight'):
            state[name] = 1 + torch.randn(shape, generator=gen) * 0.2
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            state[name] = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    return state


def _conv_bn(w, prefix, x, stride=1, groups=1):
    weight = w[f'{prefix}.c.weight']
    x = F.conv2d(x, weight, None, stride, weight.shape[-1] // 2, 1, groups)
    return F.batch_norm(x, w[f'{prefix}.bn.running_mean'],
                        w[f'{prefix}.bn.running_var'],
                        w[f'{prefix}.bn.weight'], w[f'{prefix}.bn.bias'],
                        False, 0.0, 1e-5)


def _ln(w, prefix, x, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1], ), w[f'{prefix}.weight'],
                        w[f'{prefix}.bias'], eps)


def _downsample(w, prefix, x):
    x = F.gelu(_conv_bn(w, f'{prefix}.conv1', x))
    x = F.gelu(_conv_bn(w, f'{prefix}.conv2', x, 2, groups=x.shape[1]))
    return _conv_bn(w, f'{prefix}.conv3', x)


def _convnext_block(w, p, x):
    y = F.conv2d(x, w[f'{p}.dwconv.weight'], w[f'{p}.dwconv.bias'], 1, 3, 1,
                 x.shape[1])
    y = _ln(w, f'{p}.norm', y.permute(0, 2, 3, 1), eps=1e-6)
    y = F.linear(
        F.gelu(F.linear(y, w[f'{p}.pwconv1.weight'], w[f'{p}.pwconv1.bias'])),
        w[f'{p}.pwconv2.weight'], w[f'{p}.pwconv2.bias'])
    return x + (w[f'{p}.gamma'] * y).permute(0, 3, 1, 2)


def _levit_bias_index(ws: int) -> torch.Tensor:
    """Bias-table index: offsets numbered in order of first appearance when
    every pair of points of the window is visited row-major."""
    points = [(r, c) for r in range(ws) for c in range(ws)]
    numbering, index = {}, []
    for a in points:
        for b in points:
            off = (abs(a[0] - b[0]), abs(a[1] - b[1]))
            numbering.setdefault(off, len(numbering))
            index.append(numbering[off])
    return torch.tensor(index).view(len(points), len(points))


def _fca_block(w, p, x, heads, ws, cross, prefix=0):
    """One block on window tokens; ``prefix`` leading tokens (the plain
    model's class token) have no grid position: zero position bias, and
    they skip the two TME convolutions."""
    batch, n, c = x.shape
    d = c // heads
    xn = _ln(w, f'{p}.norm1', x)

    def qkv(t):
        out = F.linear(t, w[f'{p}.qkv.weight'], w[f'{p}.qkv.bias'])
        return out.view(t.shape[0], t.shape[1], 3, heads,
                        d).permute(2, 0, 3, 1, 4)

    q, k, v = qkv(xn)
    q = q * d**-0.5
    logits = q @ k.transpose(-1, -2)
    position = w[f'{p}.attention_biases'][:, _levit_bias_index(ws)]
    logits = logits + F.pad(position, (prefix, 0, prefix, 0))
    if cross is not None:
        s = _ln(w, f'{p}.s_norm', cross * w[f'{p}.s_scale_factors'])
        _, ks, vs = qkv(s)
        logits = torch.cat(
            (logits, q @ ks.transpose(-1, -2) + w[f'{p}.s_token_bias']), -1)
        v = torch.cat((v, vs), 2)
    attn = logits.softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(batch, n, c)
    out = F.linear(out, w[f'{p}.proj.weight'], w[f'{p}.proj.bias'])
    x = x + w[f'{p}.gamma_1'] * out
    head, x = x[:, :prefix], x[:, prefix:]
    fmap = x.transpose(1, 2).reshape(batch, c, ws, ws)
    new_cross = None
    if f'{p}.dw_conv.weight' in w:
        new_cross = F.conv2d(fmap, w[f'{p}.dw_conv.weight'], None, 4, 3, 1,
                             c).flatten(2).transpose(1, 2)
    x = _conv_bn(w, f'{p}.local_conv', fmap, groups=c)
    x = torch.cat((head, x.flatten(2).transpose(1, 2)), 1)
    y = _ln(w, f'{p}.mlp.norm', _ln(w, f'{p}.norm2', x))
    y = F.linear(
        F.gelu(F.linear(y, w[f'{p}.mlp.fc1.weight'], w[f'{p}.mlp.fc1.bias'])),
        w[f'{p}.mlp.fc2.weight'], w[f'{p}.mlp.fc2.bias'])
    return x + w[f'{p}.gamma_2'] * y, new_cross


def _fca_stage(w, stage, x, heads, ws, depth):
    """Windowed stage on a (B, C, H, W) map with the official padding."""
    batch, c, h, wd = x.shape
    rows, cols = math.ceil(h / ws), math.ceil(wd / ws)
    ph, pw = rows * ws - h, cols * ws - wd
    crosses: List[torch.Tensor] = []
    for b in range(depth):
        if b % 2 == 0:
            xp = F.pad(x, (pw, 0, ph, 0))
        else:
            xp = F.pad(x, (0, pw, 0, ph))
        win = xp.reshape(batch, c, rows, ws, cols,
                         ws).permute(0, 2, 4, 3, 5,
                                     1).reshape(batch * rows * cols, ws * ws,
                                                c)
        cross = torch.cat(crosses, 1) if crosses else None
        win, new = _fca_block(w, f'layer_{stage}.blocks.{b}', win, heads, ws,
                              cross)
        if new is not None:
            crosses.append(new)
        xp = win.reshape(batch, rows, cols, ws, ws,
                         c).permute(0, 5, 1, 3, 2,
                                    4).reshape(batch, c, rows * ws, cols * ws)
        x = xp[:, :, ph:, pw:] if b % 2 == 0 else xp[:, :, :h, :wd]
    return x


def reference_forward(w: Dict,
                      arch: str,
                      x: torch.Tensor,
                      windows: Sequence[int] = (14, 7)):
    """Official outputs for official-layout weights ``w``.

    Returns the logits for a classifier state dict (``head.weight``
    present), else the four dense outputs (1x1 conv + channels-first
    LayerNorm, eps 1e-6).
    """
    dims, depths, heads = ARCHS[arch]
    x = F.gelu(_conv_bn(w, 'patch_embed.seq.0', x, 2))
    x = _conv_bn(w, 'patch_embed.seq.2', x, 2)
    feats = []
    for stage in range(4):
        if stage < 2:
            for b in range(depths[stage]):
                x = _convnext_block(w, f'layer_{stage}.blocks.{b}', x)
        else:
            x = _fca_stage(w, stage, x, heads[stage], windows[stage - 2],
                           depths[stage])
        feats.append(x)
        if stage < 3:
            x = _downsample(w, f'layer_{stage}.downsample', x)
    if 'head.weight' in w:
        pooled = _ln(w, 'norm_head', x.mean((2, 3)))
        return F.linear(pooled, w['head.weight'], w['head.bias'])
    outs = []
    for i, f in enumerate(feats):
        y = F.conv2d(f, w[f'head{i}.weight'])
        y = F.layer_norm(
            y.permute(0, 2, 3, 1), (y.shape[1], ), w[f'norm{i}.weight'],
            w[f'norm{i}.bias'], 1e-6)
        outs.append(y.permute(0, 3, 1, 2))
    return outs


# mmfca block-part names -> the official ones used above (the plain model
# has no official code, so its weights come in mmfca names).
_MMFCA_TO_OFFICIAL = [
    ('attn.qkv.', 'qkv.'),
    ('attn.proj.', 'proj.'),
    ('attn.position_bias', 'attention_biases'),
    ('attn.depth_bias', 's_token_bias'),
    ('attn.cross_scale', 's_scale_factors'),
    ('attn.cross_norm.', 's_norm.'),
    ('ls1.weight', 'gamma_1'),
    ('ls2.weight', 'gamma_2'),
    ('cross_token_conv.', 'dw_conv.'),
    ('local_conv.conv.', 'local_conv.c.'),
    ('local_conv.bn.', 'local_conv.bn.'),
    ('ffn.', 'mlp.'),
    ('norm1.', 'norm1.'),
    ('norm2.', 'norm2.'),
]


def reference_plain_forward(state: Dict,
                            x: torch.Tensor,
                            heads: int = 3,
                            patch: int = 16,
                            ws: int = 14) -> torch.Tensor:
    """The plain model (L0) as described: DeiT-Tiny's patch embedding,
    class token and position embedding, FcaBlocks over the class token and
    the one window of patch tokens (the class token makes no cross tokens
    and skips TME), DeiT's final LayerNorm (eps 1e-6) on the class token.

    Args:
        state: The backbone's weights in mmfca names (no ``backbone.``).
    """
    w = {}
    for key, value in state.items():
        if key.startswith('stages.0.blocks.'):
            block, rest = key[len('stages.0.blocks.'):].split('.', 1)
            for ours, theirs in _MMFCA_TO_OFFICIAL:
                if rest.startswith(ours):
                    rest = theirs + rest[len(ours):]
                    break
            key = f'blocks.{block}.{rest}'
        w[key] = value
    x = F.conv2d(
        x,
        w['downsample_layers.0.weight'],
        w['downsample_layers.0.bias'],
        stride=patch)
    tokens = x.flatten(2).transpose(1, 2)
    cls = w['cls_token'].expand(tokens.shape[0], -1, -1)
    tokens = torch.cat((cls, tokens), 1) + w['pos_embed']
    depth = 1 + max(int(k.split('.')[1]) for k in w if k.startswith('blocks.'))
    crosses: List[torch.Tensor] = []
    for b in range(depth):
        cross = torch.cat(crosses, 1) if crosses else None
        tokens, new = _fca_block(
            w, f'blocks.{b}', tokens, heads, ws, cross, prefix=1)
        if new is not None:
            crosses.append(new)
    return F.layer_norm(tokens[:, 0], (tokens.shape[-1], ), w['norm0.weight'],
                        w['norm0.bias'], 1e-6)


def perturb_weights(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Add noise to every weight and BN statistic of ``model`` in place
    (variances and LSFs stay positive), so that equal outputs of two
    computations mean equal computations, not identical initial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                noise = torch.randn(value.shape, generator=gen)
                if name.endswith(('running_var', 'cross_scale')):
                    value.copy_(1 + 0.3 * noise.abs())
                else:
                    value.add_(0.2 * noise)
    return model
