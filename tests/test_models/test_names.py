"""The parameter-name contract (mmfca.models.names): every parameter of
every front end is claimed by name, so a renamed module fails here instead
of silently moving to another optimiser group; and an arch given as a dict
goes through every front end."""
import pytest
import timm
import torch
from timm.models import group_parameters

from mmfca.engine import FcaFormerLearningRateDecayOptimizerConstructor
from mmfca.models import FcaFormer
from mmfca.models.layers import FCAFORMER_ARCHS
from mmfca.models.names import (PARAMETER_KINDS, layer_group, no_weight_decay,
                                parameter_kind)
from mmfca.models.timm_models import checkpoint_filter_fn

HYBRIDS = sorted(a for a, s in FCAFORMER_ARCHS.items()
                 if 'patch_size' not in s)


def backbones(arch):
    """The OpenMMLab backbone in each of its output forms."""
    if arch == 'l0':
        yield FcaFormer(arch)
        return
    width = FCAFORMER_ARCHS[arch]['channels']
    yield FcaFormer(arch, out_indices=(3, ), gap_before_final_norm=True)
    yield FcaFormer(arch, out_indices=(0, 1, 2, 3))
    yield FcaFormer(
        arch, out_indices=(0, 1, 2, 3), out_channels=[2 * w for w in width])


@pytest.mark.parametrize('arch', sorted(FCAFORMER_ARCHS))
def test_every_backbone_parameter_has_an_explicit_kind(arch):
    for model in backbones(arch):
        for name, _ in model.named_parameters():
            kind = parameter_kind(name)
            # The kind agrees with where the parameter is.
            if kind.kind == 'convnext_block':
                assert name.startswith(f'stages.{kind.stage}.{kind.block}.')
            if kind.kind in ('fca_block', 'position_bias', 'cross_tables'):
                assert name.startswith(
                    f'stages.{kind.stage}.blocks.{kind.block}.')


def test_a_renamed_parameter_is_an_error_not_a_default():
    assert parameter_kind('stages.2.blocks.1.attn.cross_scale').kind == \
        'cross_tables'
    for renamed in ('stages.2.blocks.1.attn.lsf', 'stages.2.blocks.1.mlp.'
                    'fc1.weight', 'stages.0.1.dwconv.weight', 'head0.weight'):
        with pytest.raises(
                KeyError, match='matches no entry of PARAMETER_KINDS'):
            parameter_kind(renamed)
    with pytest.raises(KeyError, match='PARAMETER_KINDS'):
        layer_group('backbone.stages.2.lsf.weight', 'stage_wise', 6)
    with pytest.raises(KeyError, match='PARAMETER_KINDS'):
        no_weight_decay('backbone.mystery', torch.zeros(2, 2), 'stage_wise')
    assert len(PARAMETER_KINDS) == 8


@pytest.mark.parametrize(
    'name, stage_wise, layer_wise',
    [
        # The official downstream grouping, restated from its table.
        ('backbone.downsample_layers.0.conv1.conv.weight', 0, 0),
        ('backbone.downsample_layers.1.conv1.conv.weight', 0, 0),
        ('backbone.downsample_layers.2.conv1.conv.weight', 0, 2),
        ('backbone.downsample_layers.3.conv1.conv.weight', 0, 3),
        ('backbone.stages.2.blocks.4.attn.cross_scale', 0, 0),
        ('backbone.stages.2.blocks.4.attn.depth_bias', 0, 0),
        ('backbone.stages.0.1.pointwise_conv1.weight', 1, 1),
        ('backbone.stages.1.0.gamma', 2, 2),
        ('backbone.stages.2.blocks.0.attn.qkv.weight', 3, 3),
        ('backbone.stages.2.blocks.5.attn.position_bias', 3, 4),
        ('backbone.stages.2.blocks.6.ffn.fc1.weight', 3, 5),
        ('backbone.stages.3.blocks.1.attn.proj.weight', 4, 6),
        ('backbone.proj2.conv.weight', 7, 7),
        ('decode_head.conv_seg.weight', 7, 7),
    ])
def test_layer_groups_of_the_official_recipes(name, stage_wise, layer_wise):
    assert layer_group(name, 'stage_wise', 6) == stage_wise
    assert layer_group(name, 'layer_wise_cab', 6) == layer_wise


def test_weight_decay_rules_of_the_official_recipes():
    matrix, vector = torch.zeros(2, 2), torch.zeros(2)
    table = 'backbone.stages.2.blocks.1.attn.position_bias'
    depth = 'backbone.stages.2.blocks.1.attn.depth_bias'
    lsf = 'backbone.stages.2.blocks.1.attn.cross_scale'
    assert no_weight_decay('backbone.stages.0.0.gamma', vector, 'stage_wise')
    assert no_weight_decay('decode_head.x.bias', matrix, 'layer_wise_cab')
    assert no_weight_decay(table, matrix, 'stage_wise')
    assert no_weight_decay(depth, matrix, 'stage_wise')
    assert not no_weight_decay(table, matrix, 'layer_wise_cab')
    assert not no_weight_decay(lsf, matrix, 'stage_wise')
    assert not no_weight_decay(lsf, matrix, 'layer_wise_cab')
    assert no_weight_decay('neck.norm.x', matrix, 'stage_wise')
    assert not no_weight_decay('neck.norm.x', matrix, 'layer_wise_cab')


@pytest.mark.parametrize('arch, block, depth, count', [
    ('l2', 'stages.3.blocks.0.norm1.weight', 6, 8),
    ('l3', 'stages.3.blocks.0.norm1.weight', 12, 14),
    ('l3', 'stages.2.blocks.11.norm1.weight', 6, 14),
    ('l0', 'stages.0.blocks.4.norm1.weight', 5, 14),
])
def test_layer_depths_come_from_the_arch_table(arch, block, depth, count):
    """mmpretrain's depths: the detection grouping over the arch table's
    ``decay_layers`` (6 for L1/L2, 12 for L3/L4), one per block for L0."""
    model = FcaFormer(arch)
    assert model.get_layer_depth('backbone.' + block,
                                 'backbone.') == (depth, count)
    assert model.get_layer_depth('head.fc.weight',
                                 'backbone.') == (count - 1, count)


def test_an_arch_given_as_a_dict_goes_through_every_front_end():
    """A new arch is one arch-table entry: as a dict it builds, groups its
    parameters and loads weights in the OpenMMLab backbone and in timm."""
    arch = dict(
        channels=(16, 32, 48, 64),
        depths=(1, 2, 4, 2),
        num_heads=(0, 0, 2, 4),
        decay_layers=4)
    backbone = FcaFormer(arch, out_indices=(3, ), gap_before_final_norm=True)
    depths = {
        backbone.get_layer_depth('backbone.' + name, 'backbone.')[0]
        for name, _ in backbone.named_parameters()
    }
    assert depths == set(range(6))  # 0 .. decay_layers + 1
    # The segmentation / detection recipes' layer-decay constructor.
    constructor = FcaFormerLearningRateDecayOptimizerConstructor(
        dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=1.)),
        dict(decay_rate=0.5, decay_type='layer_wise_cab', num_layers=4))
    optimizer = constructor(torch.nn.ModuleDict(dict(backbone=backbone)))
    ours = [g for g in optimizer.param_groups if 'param_names' in g]
    grouped = sorted(name for g in ours for name in g['param_names'])
    assert grouped == sorted('backbone.' + name
                             for name, _ in backbone.named_parameters())
    assert {g['lr'] for g in ours} == {0.5**(5 - i) for i in range(6)}
    timm_model = timm.create_model('fcaformer_l2', arch=arch, num_classes=3)
    groups = group_parameters(timm_model, timm_model.group_matcher())
    assert sum(len(g)
               for g in groups.values()) == len(list(timm_model.parameters()))
    # The backbone's weights load into the timm model through the one
    # loader, and give the same features.
    state = {'backbone.' + k: v for k, v in backbone.state_dict().items()}
    filtered = checkpoint_filter_fn(state, timm_model)
    result = timm_model.load_state_dict(filtered, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == {'head.fc.weight', 'head.fc.bias'}
    backbone.eval()
    timm_model.eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = backbone(image)[0]
        got = timm_model.forward_head(
            timm_model.forward_features(image), pre_logits=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
