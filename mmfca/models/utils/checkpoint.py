"""Reading FcaFormer weights in every layout they come in.

Three layouts reach the backbone:

* official ImageNet checkpoints, as the official training script saves them:
  ``{'model', 'model_ema', 'optimizer', 'epoch', 'scaler', 'args'}`` with the
  official parameter names and no ``backbone.`` prefix;
* official segmentation / detection checkpoints: ``state_dict`` with the
  official names under ``backbone.``;
* mmfca / OpenMMLab checkpoints: ``state_dict`` with our names, usually
  under ``backbone.`` (EMA weights in ``ema_state_dict``).

:func:`convert_official_key` is the one map from official names to ours.
Every load into :class:`~mmfca.models.FcaFormer` (``load_state_dict``,
mmengine's ``load_checkpoint``, timm's loader) passes its load-state-dict
pre-hook, :func:`prepare_backbone_state_dict`: official names are renamed,
bias tables made for other windows are resized when the backbone allows it,
and weights of another arch or window are refused by name.
The OpenMMLab backbone's ``init_cfg=dict(type='Pretrained', ...)``
(:mod:`mmfca.models.backbones.pretrained_init`) picks the weights out of
any layout (EMA on request), and refuses a checkpoint that lacks backbone
tensors (unless partial loading is asked for), with the rule it shares
with timm's loader, :func:`check_backbone_coverage`.

Nothing here imports a front end (the OpenMMLab backbone or timm's
classifiers) or mmengine: the arch table comes from the shared layers.
"""
import math
import re
from collections import OrderedDict
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from ..layers import FCAFORMER_ARCHS

# Official name of a block part in the transformer stages -> ours.
_FCA_BLOCK_KEYS = [
    (r'qkv\.', 'attn.qkv.'),
    (r'proj\.', 'attn.proj.'),
    (r'attention_biases$', 'attn.position_bias'),
    (r's_token_bias$', 'attn.depth_bias'),
    (r's_scale_factors$', 'attn.cross_scale'),
    (r's_norm\.', 'attn.cross_norm.'),
    (r'gamma_1$', 'ls1.weight'),
    (r'gamma_2$', 'ls2.weight'),
    (r'dw_conv\.', 'cross_token_conv.'),
    (r'local_conv\.c\.', 'local_conv.conv.'),
    (r'local_conv\.bn\.', 'local_conv.bn.'),
    (r'mlp\.', 'ffn.'),
    (r'norm1\.', 'norm1.'),
    (r'norm2\.', 'norm2.'),
]

# Official name of a block part in the ConvNeXt stages -> ours.
_CONV_BLOCK_KEYS = [
    (r'dwconv\.', 'depthwise_conv.'),
    (r'pwconv1\.', 'pointwise_conv1.'),
    (r'pwconv2\.', 'pointwise_conv2.'),
    (r'norm\.', 'norm.'),
    (r'gamma$', 'gamma'),
]

# Official name of an output layer -> (part, our name); ``{}`` takes the
# pattern's groups in order.
_OUTPUT_KEYS = [
    (r'norm_head\.(weight|bias)$', 'backbone', 'norm3.{}'),
    (r'head\.(weight|bias)$', 'head', 'fc.{}'),
    (r'head(\d)\.weight$', 'backbone', 'proj{}.conv.weight'),
    (r'norm(\d)\.(weight|bias)$', 'backbone', 'proj{}.norm.{}'),
]


def _replace_prefix(rest: str, table) -> Optional[str]:
    for pattern, new in table:
        match = re.match(pattern, rest)
        if match:
            return new + rest[match.end():]
    return None


def convert_official_key(key: str) -> Tuple[str, Optional[str]]:
    """Map one official key (without ``backbone.``) to ``(part, new_key)``.

    The one place that knows the official names: everything that reads
    official weights goes through it.

    Returns:
        tuple: ``part`` is 'backbone' or 'head' (the classifier's, in
        mmpretrain ``LinearClsHead`` names); ``new_key`` is None when the
        key has no counterpart.
    """
    conv_bn = {'c': 'conv', 'bn': 'bn'}
    match = re.match(r'patch_embed\.seq\.([02])\.(c|bn)\.(.+)$', key)
    if match:
        conv = 'conv1' if match.group(1) == '0' else 'conv2'
        return 'backbone', (f'downsample_layers.0.{conv}.'
                            f'{conv_bn[match.group(2)]}.{match.group(3)}')
    match = re.match(r'layer_(\d)\.downsample\.(conv\d)\.(c|bn)\.(.+)$', key)
    if match:
        stage = int(match.group(1)) + 1
        return 'backbone', (f'downsample_layers.{stage}.{match.group(2)}.'
                            f'{conv_bn[match.group(3)]}.{match.group(4)}')
    match = re.match(r'layer_(\d)\.blocks\.(\d+)\.(.+)$', key)
    if match:
        stage, block, rest = match.groups()
        if stage in '01':
            new = _replace_prefix(rest, _CONV_BLOCK_KEYS)
            return 'backbone', new and f'stages.{stage}.{block}.{new}'
        new = _replace_prefix(rest, _FCA_BLOCK_KEYS)
        return 'backbone', new and f'stages.{stage}.blocks.{block}.{new}'
    for pattern, part, template in _OUTPUT_KEYS:
        match = re.match(pattern, key)
        if match:
            return part, template.format(*match.groups())
    return 'backbone', None


def rename_official_keys(state_dict: Dict[str, torch.Tensor],
                         prefix: str = '') -> Tuple[OrderedDict, List[str]]:
    """Rename, in place, the official backbone keys under ``prefix`` to
    mmfca names, if the entries there use the official names.

    The official classifier head and keys without a counterpart keep their
    names (a load reports them as unexpected).

    Returns:
        tuple: The official classifier head in mmpretrain ``LinearClsHead``
        names (``fc.weight``, ``fc.bias``), and the keys that kept their
        official names (the head's and those without a counterpart); both
        empty for other checkpoints.
    """
    head, kept = OrderedDict(), []
    keys = [k for k in state_dict if k.startswith(prefix)]
    if not is_official_layout(k[len(prefix):] for k in keys):
        return head, kept
    for key in keys:
        part, new_key = convert_official_key(key[len(prefix):])
        if part == 'backbone' and new_key is not None:
            state_dict[prefix + new_key] = state_dict.pop(key)
            continue
        kept.append(key)
        if part == 'head':
            head[new_key] = state_dict[key]
    return head, kept


def is_official_layout(keys: Iterable[str]) -> bool:
    """Whether state dict keys use the official FcaFormer names."""
    return any(
        k.startswith(('patch_embed.seq.', 'layer_0.', 'layer_2.'))
        for k in keys)


def convert_official_keys(state_dict: Dict[str, torch.Tensor]
                          ) -> Tuple[OrderedDict, OrderedDict, list]:
    """Rename an official state dict (without ``backbone.``) to mmfca names.

    Args:
        state_dict (dict): Official classifier or backbone weights.

    Returns:
        tuple: ``(backbone, head, unknown)``: the backbone weights in mmfca
        names, the classifier head in mmpretrain ``LinearClsHead`` names
        (``fc.weight``, ``fc.bias``), and the keys that map to nothing.
    """
    backbone, head, unknown = OrderedDict(), OrderedDict(), []
    for key, value in state_dict.items():
        part, new_key = convert_official_key(key)
        if new_key is None:
            unknown.append(key)
        elif part == 'head':
            head[new_key] = value
        else:
            backbone[new_key] = value
    return backbone, head, unknown


def convert_official_state_dict(state_dict: Dict[str, torch.Tensor]
                                ) -> Tuple[OrderedDict, list]:
    """Rename a whole official model to mmfca / mmpretrain names.

    Args:
        state_dict (dict): An official ImageNet classifier (bare names), or
            an official segmentor or detector (backbone under
            ``backbone.``).

    Returns:
        tuple: The weights with the backbone under ``backbone.``, a
        classifier's head as mmpretrain's ``head.fc.*`` and other entries
        (decode heads, necks) unchanged; and the official keys that map to
        nothing.
    """
    backbone, prefix = strip_prefix(state_dict, None)
    converted, head, unknown = convert_official_keys(backbone)
    out = OrderedDict((f'backbone.{k}', v) for k, v in converted.items())
    out.update((f'head.{k}', v) for k, v in head.items())
    if prefix:
        out.update(
            (k, v) for k, v in state_dict.items() if not k.startswith(prefix))
    return out, unknown


def select_state_dict(checkpoint, use_ema: bool = False) -> Dict:
    """Pick the weights out of a loaded checkpoint.

    Args:
        checkpoint: What :func:`torch.load` returned.
        use_ema (bool): Take the EMA weights (``model_ema`` in official
            checkpoints, ``ema_state_dict`` in mmengine ones).
    """
    if not isinstance(checkpoint, dict):
        raise TypeError(f'A checkpoint must hold a dict, got '
                        f'{type(checkpoint).__name__}.')
    if use_ema:
        if 'model_ema' in checkpoint:
            state_dict = checkpoint['model_ema']
        elif 'ema_state_dict' in checkpoint:
            state_dict = OrderedDict(
                (k[len('module.'):], v)
                for k, v in checkpoint['ema_state_dict'].items()
                if k.startswith('module.'))
        else:
            raise KeyError(
                f'use_ema=True but the checkpoint has no EMA weights '
                f'(no "model_ema" or "ema_state_dict"); its top-level keys '
                f'are {sorted(checkpoint)}.')
    else:
        for key in ('state_dict', 'model', 'module'):
            if key in checkpoint and isinstance(checkpoint[key], dict):
                state_dict = checkpoint[key]
                break
        else:
            state_dict = checkpoint
    state_dict = OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v)
        for k, v in state_dict.items())
    non_tensors = [
        k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)
    ]
    if non_tensors:
        raise TypeError(
            f'The selected weights hold non-tensor entries '
            f'{non_tensors[:5]}: this does not look like a state dict.')
    return state_dict


def strip_prefix(state_dict: Dict,
                 prefix: Optional[str]) -> Tuple[OrderedDict, str]:
    """Keep the entries under ``prefix`` (e.g. 'backbone.'), without it.

    With ``prefix=None``, 'backbone.' is stripped if present. A checkpoint
    that has no key under the prefix but looks like a bare backbone or
    classifier (official ImageNet weights) is taken whole.

    Returns:
        tuple: The selected entries, and the prefix they were found under
        ('' for the whole checkpoint). Nothing is selected when an explicit
        prefix matches no key; the caller then says
        what the checkpoint holds instead.
    """
    wanted = prefix if prefix is not None else 'backbone.'
    if wanted and not wanted.endswith('.'):
        wanted += '.'
    selected = OrderedDict((k[len(wanted):], v) for k, v in state_dict.items()
                           if wanted and k.startswith(wanted))
    if selected:
        return selected, wanted
    bare = is_official_layout(state_dict) or any(
        k.startswith(('downsample_layers.', 'stages.')) for k in state_dict)
    if bare or prefix is None:
        return OrderedDict(state_dict), ''
    return OrderedDict(), wanted


def top_level_names(state_dict: Dict, limit: int = 12) -> str:
    """The first components of the keys, e.g. ``['backbone',
    'decode_head']`` for a segmentor or ``['bn1', 'conv1', 'fc', 'layer1',
    ...]`` for a ResNet: what a checkpoint holds, at a glance."""
    names = sorted({k.split('.')[0] for k in state_dict})
    if len(names) > limit:
        return f'{names[:limit]} and {len(names) - limit} more'
    return str(names)


def infer_arch(state_dict: Dict[str, torch.Tensor],
               arch_zoo: Dict[str, dict]) -> Tuple[Optional[str], dict]:
    """The FcaFormer arch that a backbone state dict (mmfca names) was made
    for.

    Args:
        state_dict (dict): Backbone weights in mmfca names.
        arch_zoo (dict): The known archs, ``FcaFormer.arch_zoo``.

    Returns:
        tuple: The name in ``arch_zoo`` (None if no arch fits) and the
        settings read from the weights (``channels``, ``depths``,
        ``num_heads``, ``patch_size`` for a plain model; empty without any
        ``stages.*`` key).
    """
    stage_ids = {
        int(m.group(1))
        for m in (re.match(r'stages\.(\d+)\.', k) for k in state_dict) if m
    }
    if not stage_ids:
        return None, {}
    channels, depths, heads = [], [], []
    for stage in range(max(stage_ids, default=-1) + 1):
        blocks = {
            int(m.group(1))
            for m in (re.match(rf'stages\.{stage}\.(?:blocks\.)?(\d+)\.', k)
                      for k in state_dict) if m
        }
        depths.append(max(blocks) + 1 if blocks else 0)
        gamma = state_dict.get(f'stages.{stage}.0.gamma')
        norm = state_dict.get(f'stages.{stage}.blocks.0.norm1.weight')
        width = gamma if gamma is not None else norm
        channels.append(int(width.shape[0]) if width is not None else 0)
        bias = state_dict.get(f'stages.{stage}.blocks.0.attn.position_bias')
        heads.append(int(bias.shape[0]) if bias is not None else 0)
    found = dict(
        channels=tuple(channels), depths=tuple(depths), num_heads=tuple(heads))
    patch = state_dict.get('downsample_layers.0.weight')
    if patch is not None:
        found['patch_size'] = int(patch.shape[-1])
    for name, settings in arch_zoo.items():
        if {k: settings.get(k) for k in found} == found:
            return name, found
    return None, found


def describe_arch(state_dict: Dict[str, torch.Tensor],
                  arch_zoo: Dict[str, dict]) -> str:
    """Name the FcaFormer arch that a backbone state dict was made for
    (see :func:`infer_arch`)."""
    name, found = infer_arch(state_dict, arch_zoo)
    if name is not None:
        return f"arch='{name}'"
    if not found:
        return 'no FcaFormer weights (no stages.* or layer_*.* keys)'
    return f'arch={found}'


def _window_hint(model: nn.Module, state_dict: Dict) -> str:
    hints = []
    stages = range(model.num_conv_stages, model.num_stages)
    for stage, size in zip(stages, model.window_size):
        key = f'stages.{stage}.blocks.0.attn.position_bias'
        if key in state_dict:
            table = state_dict[key].shape[-1]
            side = math.isqrt(table)
            if side * side == table and side != size:
                hints.append(f'stage {stage + 1} tables are for window '
                             f'{side}, the model uses {size}')
    if not hints:
        return ''
    return (' The relative position bias tables do not fit the '
            f'window_size: {"; ".join(hints)}. Keep window_size at the '
            f'pretraining feature sizes (default (14, 7)), or set '
            f'resize_bias_tables=True to interpolate them.')


def prepare_backbone_state_dict(model: nn.Module,
                                state_dict: Dict[str, torch.Tensor],
                                prefix: str = '',
                                source: Optional[str] = None) -> None:
    """Fit the entries under ``prefix`` to an FcaFormer, in place.

    FcaFormer's load-state-dict pre-hook (as mmpretrain's Swin resizes its
    tables in one), so that every way of loading weights gets it:

    * official names become ours (:func:`convert_official_key`); the
      official classifier head and keys without a counterpart keep their
      names, and the load reports them as unexpected;
    * with ``model.resize_bias_tables``, position and depth bias tables and
      LSFs made for other windows are resized to the model's;
    * weights of another shape are refused, naming the arch they were made
      for and, for bias tables, their window.

    Args:
        model (FcaFormer): The backbone.
        state_dict (dict): The weights being loaded.
        prefix (str): The backbone's name in ``state_dict``.
        source (str, optional): The file, for the message.

    Raises:
        ValueError: When shapes do not fit the model.
    """
    rename_official_keys(state_dict, prefix)
    if model.resize_bias_tables:
        for name, module in model.named_modules():
            if hasattr(module, 'fit_tables'):
                module.fit_tables(state_dict, f'{prefix}{name}.')
    own = model.state_dict()
    given = {
        k[len(prefix):]: v
        for k, v in state_dict.items() if k.startswith(prefix)
    }
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape))
                  for k, v in given.items()
                  if k in own and v.shape != own[k].shape]
    if not mismatched:
        return
    details = '; '.join(f'{k}: checkpoint {a} vs model {b}'
                        for k, a, b in mismatched[:4])
    what = f'Checkpoint {source!r}' if source else 'The state dict'
    raise ValueError(
        f'{what} does not fit this FcaFormer: it looks like '
        f'{describe_arch(given, model.arch_zoo)}, while the model was built '
        f'with {describe_arch(own, model.arch_zoo)}. {len(mismatched)} shape '
        f'mismatches, e.g. {details}.{_window_hint(model, given)}')


# The output layers of a backbone: a norm or a widening projection per
# output (``norm{i}.*``, ``proj{i}.*``).
_OUTPUT_LAYER = re.compile(r'(?:proj|norm)\d+\.')


def is_classifier_file(state_dict: Dict, num_stages: int) -> bool:
    """Whether backbone weights come from an ImageNet classifier.

    A classifier has no output layer but its final norm (official
    ``norm_head``, our ``norm{last stage}``), so a dense backbone started
    from it cannot find its output projections and norms there.
    """
    final_norm = f'norm{num_stages - 1}.'
    return not any(
        _OUTPUT_LAYER.match(k) and not k.startswith(final_norm)
        for k in state_dict)


def check_backbone_coverage(model_state: Dict,
                            num_stages: int,
                            state_dict: Dict,
                            source: str,
                            where: str,
                            checkpoint: Dict,
                            fix: str,
                            strict: bool = True,
                            opt_out: str = 'strict=False'
                            ) -> Tuple[list, list]:
    """Check that a checkpoint holds the backbone's tensors.

    Only the output layers of a backbone started from an ImageNet classifier
    may be absent: the file cannot have them. Any other absent tensor is an
    error unless the caller opted in to partial loading, and a checkpoint
    that provides no tensor at all is always one.

    Args:
        model_state (dict): The state dict of the backbone to load, in
            mmfca names (a timm classifier's, renamed).
        num_stages (int): The backbone's stages.
        state_dict (dict): The checkpoint's backbone weights, in mmfca
            names.
        source (str): The file, for the message.
        where (str): Where the weights were looked for (the prefix), for
            the message.
        checkpoint (dict): All the checkpoint's weights, whose top-level
            names the message shows.
        fix (str): How to point the loader at the right weights.
        strict (bool): Refuse missing tensors. With False they are returned
            as ``missing`` (the caller loads what matches). Defaults to True.
        opt_out (str): The setting that allows partial loads, for the
            message.

    Returns:
        tuple: ``(new_outputs, missing)``: absent output layers the file
        cannot have, and other absent tensors (empty unless partial loading
        was allowed).

    Raises:
        ValueError: When tensors are missing, naming the file, the prefix,
            how many tensors matched and what the checkpoint holds.
    """
    # BN's batch counters are not weights: torch's own load_state_dict
    # does not require them either.
    absent = [
        k for k in model_state
        if k not in state_dict and not k.endswith('num_batches_tracked')
    ]
    matched = sum(k in state_dict for k in model_state)
    new_outputs = []
    if is_classifier_file(state_dict, num_stages):
        new_outputs = [k for k in absent if _OUTPUT_LAYER.match(k)]
    missing = [k for k in absent if k not in new_outputs]
    if matched and not (missing and strict):
        return new_outputs, missing
    if matched:
        advice = (f'{fix} To load the {matched} tensors that match and keep '
                  f'the others at their initial values, set {opt_out}.')
    else:
        advice = (f'Nothing would be loaded. {fix} A checkpoint that '
                  f'provides no tensor is refused even with partial '
                  f'loading allowed.')
    under = ''
    if where.startswith('under') and state_dict:
        under = f', and under that prefix {top_level_names(state_dict)}'
    arch_zoo = FCAFORMER_ARCHS
    raise ValueError(
        f'Checkpoint {source!r} does not hold this backbone '
        f'({describe_arch(model_state, arch_zoo)}): {matched} of '
        f'{len(model_state)} backbone tensors found {where}; {len(missing)} '
        f'missing, e.g. {missing[:4]}. The checkpoint\'s top-level names are '
        f'{top_level_names(checkpoint)}{under}; it looks like '
        f'{describe_arch(state_dict, arch_zoo)}. {advice}')


def _where(prefix: Optional[str], used: str, found: bool) -> str:
    """Say where the backbone weights were looked for."""
    if used and found:
        return f'under prefix {used!r}'
    if used:
        return f'under prefix {used!r} (no key starts with it)'
    if prefix is None:
        return ("in the whole checkpoint (prefix=None, and no key starts "
                "with 'backbone.')")
    return (f'in the whole checkpoint (no key starts with {prefix!r}, and '
            f'it looks like a bare backbone)')


def rename_prefix(key: str, prefixes: Dict[str, str]) -> str:
    """``key`` with the first matching prefix of ``prefixes`` replaced ('' as
    the last entry matches every key)."""
    for old, new in prefixes.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


class BackboneWeights(NamedTuple):
    """What :func:`fit_backbone_weights` took out of a checkpoint.

    Attributes:
        backbone (OrderedDict): The backbone's tensors, in mmfca names (an
            official file's head and keys without a counterpart left out).
        head (OrderedDict): A classifier's head, in mmpretrain names
            (``fc.weight``, ``fc.bias``); empty for other checkpoints.
        others (OrderedDict): The other entries of an OpenMMLab checkpoint
            (decode heads, necks), unchanged.
        prefix (str): Where the backbone was found ('' for the whole file).
        new_outputs (list[str]): Output layers the file cannot have (a dense
            backbone started from an ImageNet classifier).
        missing (list[str]): Other absent tensors (``strict=False`` only).
        unused (list[str]): Backbone entries the model has no use for (an
            official file's head among them, by its official names).
    """
    backbone: OrderedDict
    head: OrderedDict
    others: OrderedDict
    prefix: str
    new_outputs: List[str]
    missing: List[str]
    unused: List[str]


def fit_backbone_weights(checkpoint: Dict,
                         model_state: Dict[str, torch.Tensor],
                         num_stages: int,
                         source: str,
                         fix: str,
                         opt_out: str,
                         prefix: Optional[str] = None,
                         use_ema: bool = False,
                         strict: bool = True,
                         bare_names: Optional[Dict[str, str]] = None,
                         prepare: Optional[Callable[[Dict], None]] = None
                         ) -> BackboneWeights:
    """The one way FcaFormer weights are read: the ``Pretrained`` init, timm's
    loader and the converter call it, and the backbone's load pre-hook
    (:func:`prepare_backbone_state_dict`, which ``load_state_dict``,
    mmengine's ``load_checkpoint`` and the runner reach) is its ``prepare``
    step.

    1. pick the weights out of the checkpoint's layout
       (:func:`select_state_dict`; EMA on request);
    2. find the backbone under ``prefix`` (:func:`strip_prefix`), with
       official names converted (:func:`convert_official_key`: official
       ImageNet, segmentation and detection checkpoints) and a bare
       layout's names mapped by ``bare_names``;
    3. ``prepare`` it (resize bias tables, refuse other shapes naming the
       arch they were made for);
    4. check that it covers the model (:func:`check_backbone_coverage`).

    Args:
        checkpoint (dict): What :func:`torch.load` returned.
        model_state (dict): The state dict of the backbone to load, in mmfca
            names.
        num_stages (int): The backbone's stages.
        source (str): The file, for the messages.
        fix (str): How to point this loader at the right weights, for the
            messages.
        opt_out (str): This loader's setting for partial loads, for the
            messages.
        prefix (str, optional): The backbone's name prefix in the
            checkpoint; None takes 'backbone.' where present.
        use_ema (bool): Take the EMA weights. Defaults to False.
        strict (bool): Refuse missing backbone tensors (see
            :func:`check_backbone_coverage`). Defaults to True.
        bare_names (dict, optional): Prefix renames for a checkpoint whose
            keys have no ``backbone.`` prefix and mmfca-style names (a timm
            classifier's ``head.norm.`` and ``head.fc.``), to
            ``backbone.*`` / ``head.fc.*``.
        prepare (callable, optional): Called on the backbone weights
            before the coverage check; may rename, resize or raise.

    Raises:
        ValueError: When the checkpoint does not hold this backbone, naming
            the file, the prefix, how much matched and what it holds.
    """
    weights = select_state_dict(checkpoint, use_ema)
    if bare_names and not is_official_layout(weights) and not any(
            k.startswith('backbone.') for k in weights):
        bare = {**bare_names, '': 'backbone.'}
        weights = OrderedDict(
            (rename_prefix(k, bare), v) for k, v in weights.items())
    backbone, used = strip_prefix(weights, prefix)
    # mmpretrain's head is ``head.fc.*``.
    head = OrderedDict((k[len('head.'):], v) for k, v in weights.items()
                       if used and k.startswith('head.'))
    official_head, kept = rename_official_keys(backbone)
    head.update(official_head)
    if prepare is not None:
        prepare(backbone)
    new_outputs, missing = check_backbone_coverage(
        model_state,
        num_stages,
        backbone,
        source=source,
        where=_where(prefix, used, bool(backbone)),
        checkpoint=weights,
        fix=fix,
        strict=strict,
        opt_out=opt_out)
    # The other entries of an OpenMMLab checkpoint, for the caller to judge.
    others = OrderedDict((k, v) for k, v in weights.items()
                         if used and not k.startswith((used, 'head.')))
    return BackboneWeights(
        backbone=OrderedDict(
            (k, v) for k, v in backbone.items() if k not in kept),
        head=head,
        others=others,
        prefix=used,
        new_outputs=new_outputs,
        missing=missing,
        unused=[k for k in backbone if k not in model_state])
