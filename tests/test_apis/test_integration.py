"""FcaFormer inside mmpretrain, mmseg, mmdet and timm; the MAC counter."""
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
from reference import OFFICIAL_PARAMS, reference_forward

from mmfca.apis import build_model, load_config
from mmfca.models import FcaFormer
from mmfca.utils.mac_counting import complexity

#: Trains, exports or starts processes: not in `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SEG_MODEL = """
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', size=(64, 64)),
    backbone=dict(type='FcaFormer', arch='l1', out_indices=(0, 1, 2, 3),
                  out_channels=(32, 64, 96, 128)),
    decode_head=dict(type='UPerHead', in_channels=[32, 64, 96, 128],
                     in_index=[0, 1, 2, 3], channels=32, num_classes=5,
                     norm_cfg=dict(type='BN', requires_grad=True)))
"""

DET_MODEL = """
model = dict(
    type='RetinaNet',
    data_preprocessor=dict(type='DetDataPreprocessor'),
    backbone=dict(type='FcaFormer', arch='l1', out_indices=(1, 2, 3)),
    neck=dict(type='FPN', in_channels=[128, 192, 320], out_channels=32,
              num_outs=3),
    bbox_head=dict(
        type='RetinaHead', num_classes=3, in_channels=32, stacked_convs=1,
        feat_channels=32,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                              scales_per_octave=1, ratios=[1.0],
                              strides=[8, 16, 32]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True),
        loss_bbox=dict(type='L1Loss')))
"""


def write_config(tmp_path, scope, body):
    path = tmp_path / f'{scope}_fcaformer.py'
    path.write_text(
        textwrap.dedent(f"""
        default_scope = '{scope}'
        custom_imports = dict(imports=['mmfca'], allow_failed_imports=False)
        """) + body)
    return str(path)


@pytest.mark.parametrize('scope', ['mmpretrain', 'mmseg', 'mmdet'])
def test_registered_in_every_codebase(scope):
    module = __import__(f'{scope}.registry', fromlist=['MODELS'])
    assert module.MODELS.get('FcaFormer') is FcaFormer
    backbone = module.MODELS.build(dict(type='FcaFormer', arch='l1'))
    assert isinstance(backbone, FcaFormer)


def test_import_is_light_and_registers_in_the_root_registries():
    """``import mmfca`` imports no codebase (mmseg, mmdet, mmpretrain):
    its classes sit in mmengine's root registries, which every codebase's
    registries fall back to, each registered once, without ``force``."""
    code = textwrap.dedent("""
        import sys
        import mmfca
        from mmengine import registry
        heavy = [m for m in ('mmseg', 'mmdet', 'mmpretrain')
                 if m in sys.modules]
        assert not heavy, heavy
        assert registry.MODELS.get('FcaFormer') is mmfca.FcaFormer
        assert registry.RUNNERS.get('ReliableRunner') is mmfca.ReliableRunner
        for name in ('SafeCheckpointHook', 'RNGStateHook', 'NonFiniteLossHook',
                     'LabelRangeHook'):
            assert registry.HOOKS.get(name) is getattr(mmfca, name), name
        assert registry.OPTIM_WRAPPER_CONSTRUCTORS.get(
            'FcaFormerLearningRateDecayOptimizerConstructor') is not None
        assert registry.TRANSFORMS.get('LoadImageFromFileOrSkip') is not None
    """)
    result = subprocess.run([sys.executable, '-c', code],
                            capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize('scope, body, size', [
    ('mmseg', SEG_MODEL, (64, 64)),
    ('mmdet', DET_MODEL, (96, 128)),
])
def test_dense_models_from_config_files(tmp_path, scope, body, size):
    cfg = load_config(write_config(tmp_path, scope, body))
    model = build_model(cfg).eval()
    assert isinstance(model.backbone, FcaFormer)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size), mode='tensor')
    tensors = out if isinstance(
        out, torch.Tensor) else [t for level in out for t in level]
    assert all(torch.isfinite(t).all() for t in torch.atleast_1d(*tensors))


def test_unknown_scope_is_a_clear_error(tmp_path):
    cfg = load_config(write_config(tmp_path, 'mmocr', 'model = dict()'))
    with pytest.raises(ValueError, match="default_scope is 'mmocr'"):
        build_model(cfg)


def test_missing_config_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match='no_such.py'):
        load_config('configs/no_such.py')


@pytest.mark.parametrize('arch', ['l1', 'l2', 'l3', 'l4'])
def test_timm_models(arch):
    model = timm.create_model(f'fcaformer_{arch}')
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[arch]


def test_timm_features_only():
    model = timm.create_model('fcaformer_l1', features_only=True).eval()
    assert model.feature_info.channels() == [64, 128, 192, 320]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 96, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 24, 16),
                                               (1, 128, 12, 8), (1, 192, 6, 4),
                                               (1, 320, 3, 2)]


def test_timm_loads_official_weights(official_cls):
    """timm's file loader prefers ``model_ema`` when a checkpoint has it."""
    ckpt = official_cls['l1']
    model = timm.create_model(
        'fcaformer_l1',
        pretrained=True,
        pretrained_cfg_overlay=dict(file=ckpt['path'])).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x),
            reference_forward(ckpt['ema'], 'l1', x),
            rtol=1e-4,
            atol=2e-5)


# Official implementation, mmengine's counter with attention matmuls.
OFFICIAL_GMACS = {'l1': 1.39, 'l2': 3.62, 'l3': 6.68, 'l4': 14.54}


@pytest.mark.parametrize('arch', ['l1', 'l2', 'l3', 'l4'])
def test_macs_of_the_classifier_configs(arch):
    cfg = load_config(os.path.join(REPO, f'configs/fcaformer_{arch}_in1k.py'))
    result = complexity(build_model(cfg), torch.randn(1, 3, 224, 224))
    assert result['params'] == OFFICIAL_PARAMS[arch]
    assert result['macs'] / 1e9 == pytest.approx(
        OFFICIAL_GMACS[arch], rel=0.02)


def test_get_flops_tool_prints_params_and_macs():
    result = subprocess.run([
        sys.executable, 'tools/analysis/get_flops.py',
        'configs/fcaformer_l1_in1k.py', '--shape', '224', '224'
    ],
                            cwd=REPO,
                            capture_output=True,
                            text=True,
                            check=True)
    assert 'Params: 6.188M' in result.stdout
    assert 'MACs: 1.37' in result.stdout or 'MACs: 1.38' in result.stdout
