"""The contract that FcaFormer's parameter names carry, in one place.

Optimiser groups, weight decay and timm's layer groups are decided from
parameter names. :data:`PARAMETER_KINDS` says what every parameter of the
backbone is, by name; everything else here reads it, and a backbone
parameter that no entry claims is an error, not a silent default, so that
renaming a module cannot quietly move a parameter to another group
(``tests/test_models/test_names.py`` checks every parameter of every front
end). The official checkpoints' names map to these in
:mod:`mmfca.models.utils.checkpoint`.

Names are the backbone's own (``stages.2.blocks.0.attn.qkv.weight``);
``layer_group`` takes whole-model names (``backbone.…``), as the
optimiser constructors see them.
"""
import re
from typing import Dict, NamedTuple, Optional

import torch

from .layers.arch import is_plain


class ParameterKind(NamedTuple):
    """What a backbone parameter is.

    Attributes:
        kind (str): One of 'stem', 'downsample', 'convnext_block',
            'fca_block', 'cross_tables' (LSFs and the depth bias),
            'position_bias', 'embedding' (the plain model's class token and
            position embedding) or 'output' (output norms and
            projections).
        stage (int): The stage (the downsampling layer's, the block's or the
            output's); -1 for the embedding.
        block (int): The block in its stage; -1 where there is none.
    """
    kind: str
    stage: int = -1
    block: int = -1


_AFFINE = r'\.(?:weight|bias)$'
_CONV_BN = r'\.(?:conv\.weight|bn\.(?:weight|bias))$'

#: Every backbone parameter name, whole, and what it is; first match wins.
#: A parameter of a renamed or new module matches none.
PARAMETER_KINDS = (
    (re.compile(r'downsample_layers\.0\.(?:conv[12]' + _CONV_BN +
                r'|(?:weight|bias)$)'), 'stem'),
    (re.compile(r'downsample_layers\.(\d+)\.conv[123]' + _CONV_BN),
     'downsample'),
    (re.compile(r'stages\.(\d+)\.blocks\.(\d+)\.attn\.'
                r'(?:cross_scale|depth_bias)$'), 'cross_tables'),
    (re.compile(r'stages\.(\d+)\.blocks\.(\d+)\.attn\.position_bias$'),
     'position_bias'),
    (re.compile(r'stages\.(\d+)\.blocks\.(\d+)\.(?:(?:norm1|norm2|ffn\.norm|'
                r'ffn\.fc1|ffn\.fc2|attn\.qkv|attn\.proj|attn\.cross_norm|'
                r'local_conv\.bn)' + _AFFINE + r'|(?:ls1|ls2|cross_token_conv|'
                r'local_conv\.conv)\.weight$)'), 'fca_block'),
    (re.compile(r'stages\.(\d+)\.(\d+)\.(?:(?:depthwise_conv|norm|'
                r'pointwise_conv1|pointwise_conv2)' + _AFFINE + r'|gamma$)'),
     'convnext_block'),
    (re.compile(r'(?:cls_token|pos_embed)$'), 'embedding'),
    (re.compile(r'(?:norm(\d+)' + _AFFINE + r')|(?:proj(\d+)\.(?:conv\.weight|'
                r'norm\.(?:weight|bias))$)'), 'output'),
)


def parameter_kind(name: str) -> ParameterKind:
    """What the backbone parameter ``name`` is (see :data:`PARAMETER_KINDS`).

    Raises:
        KeyError: For a name no entry claims: a module was renamed or added
            without its entry here.
    """
    for pattern, kind in PARAMETER_KINDS:
        match = pattern.match(name)
        if match:
            numbers = [int(n) for n in match.groups() if n is not None]
            return ParameterKind(kind, *numbers)
    raise KeyError(
        f'FcaFormer parameter {name!r} matches no entry of PARAMETER_KINDS '
        f'in {__name__}: add one for it, saying which optimiser group it '
        f'belongs to.')


#: The layer-wise decay types of the official downstream recipes.
DECAY_TYPES = ('stage_wise', 'layer_wise_cab')


def layer_group(name: str, decay_type: str, num_layers: int) -> int:
    """Layer group of a parameter of a model with an FcaFormer backbone, as
    the official downstream code groups them (quirks included):

    ==========================  =====================  ====================
    parameters                  ``stage_wise`` (seg)   ``layer_wise_cab``
    ==========================  =====================  ====================
    stem                        0                      0
    downsampling into stage 2   0                      0
    downsampling into stage 3   0                      2
    downsampling into stage 4   0                      3
    LSFs, depth bias            0                      0
    stage 1 / 2 blocks          1 / 2                  1 / 2
    stage 3 block ``b``         3                      3 + b // 3
    stage 4 blocks              4                      ``num_layers``
    the rest (outputs, neck,    ``num_layers + 1``     ``num_layers + 1``
    heads)
    ==========================  =====================  ====================

    Args:
        name (str): Parameter name in the whole model (``backbone.…``).
        decay_type (str): One of :data:`DECAY_TYPES`.
        num_layers (int): ``paramwise_cfg['num_layers']`` (6 officially).
    """
    if decay_type not in DECAY_TYPES:
        raise ValueError(f'FcaFormer learning-rate decay_type must be one of '
                         f'{DECAY_TYPES}, got {decay_type!r}.')
    top = num_layers + 1
    if not name.startswith('backbone.'):
        return top
    kind, stage, block = parameter_kind(name[len('backbone.'):])
    if kind in ('stem', 'cross_tables'):
        return 0
    if kind == 'downsample':
        return 0 if decay_type == 'stage_wise' or stage < 2 else stage
    if kind in ('convnext_block', 'fca_block', 'position_bias'):
        if decay_type == 'stage_wise':
            return stage + 1
        return {0: 1, 1: 2, 2: 3 + block // 3}.get(stage, num_layers)
    return top


def no_weight_decay(name: str, param: torch.Tensor, decay_type: str) -> bool:
    """Whether the official downstream recipe exempts a parameter of the
    whole model from weight decay: 1-D parameters and biases always;
    ``stage_wise`` also the position and depth bias tables and anything
    with 'norm' in its name (the official segmentation rule), while
    ``layer_wise_cab`` decays those tables (the official detection rule).
    The LSFs are decayed in both, as officially."""
    if param.ndim == 1 or name.endswith('.bias'):
        return True
    if not name.startswith('backbone.'):
        return decay_type == 'stage_wise' and 'norm' in name
    backbone_name = name[len('backbone.'):]
    if parameter_kind(backbone_name).kind == 'embedding':
        return True
    if decay_type == 'stage_wise':
        return backbone_name.endswith(
            ('attn.depth_bias', 'attn.position_bias')) or 'norm' in name
    return False


def layer_depth(name: str, arch_settings: dict) -> Optional[int]:
    """The depth of a backbone parameter for mmpretrain's layer-wise decay
    (``get_layer_depth``), and the number of depths is
    :func:`num_layer_depths` + 2.

    A hybrid takes the official detection grouping (``layer_wise_cab``) over
    the arch's ``decay_layers`` depths (its entry of the arch table); the
    plain model has one depth per block, the stem and embeddings at 0.

    Returns:
        int: The depth; the outputs are at ``num_layer_depths + 1``.
    """
    depths = num_layer_depths(arch_settings)
    parameter = parameter_kind(name)
    if not is_plain(arch_settings):
        return layer_group('backbone.' + name, 'layer_wise_cab', depths)
    if parameter.kind in ('fca_block', 'position_bias', 'cross_tables'):
        return parameter.block + 1
    if parameter.kind in ('stem', 'embedding'):
        return 0
    return depths + 1


def num_layer_depths(arch_settings: dict) -> int:
    """The layer depths of :func:`layer_depth`: the arch table's
    ``decay_layers`` for a hybrid, the blocks of a plain model."""
    if is_plain(arch_settings):
        return arch_settings['depths'][0]
    return arch_settings['decay_layers']


def timm_group_matcher(plain: bool, coarse: bool = False) -> Dict:
    """timm's layer groups (``group_matcher``) of the timm classifiers, on
    their names: the stem first, then the downsampling layers and blocks in
    order, the head's norm last."""
    if plain:
        return dict(
            stem=r'^cls_token|^pos_embed|^downsample_layers\.0',
            blocks=[(r'^stages\.0\.blocks\.(\d+)', None),
                    (r'^norm', (99999, ))])
    return dict(
        stem=r'^downsample_layers\.0\.',
        blocks=r'^(?:downsample_layers|stages)\.(\d+)' if coarse else [
            (r'^downsample_layers\.(\d+)', (0, )),
            (r'^stages\.(\d+)\.(?:blocks\.)?(\d+)', None),
            (r'^head\.norm', (99999, )),
        ])
