"""ImageNet classifiers: training, the checkpoint -> downstream loop,
inference, layer-wise decay, other resolutions."""
import json
import math
import os
from glob import glob

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from reference import reference_forward

from mmfca import apis
from mmfca.apis import build_model, load_config
from mmfca.engine.optimizers import cpu_computes_bfloat16
from mmfca.models import FcaFormer
from mmfca.testing import synthetic_data_overrides
from mmfca.utils.serialization import load_checkpoint_file

#: Trains, exports or starts processes: not in `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
L1_CONFIG = os.path.join(REPO, 'configs/fcaformer_l1_in1k.py')
# The real L1 config on synthetic ImageNet, for 2 epochs.
SYNTHETIC_L1 = os.path.join(
    REPO, 'configs/synthetic/fcaformer_l1_synthetic_imagenet.py')
SEG_CONFIG = os.path.join(REPO, 'configs/upernet_fcaformer_l2_160k_ade20k.py')
DET_CONFIG = os.path.join(REPO,
                          'configs/mask_rcnn_fcaformer_l2_fpn_3x_coco.py')
L1_WIDE = (64, 128, 256, 512)


@pytest.fixture(scope='session')
def l1_run(synthetic_imagenet, tmp_path_factory):
    """Train the L1 classifier config for 2 short epochs (EMA on), with
    ``--amp`` (bfloat16 autocast on a CPU)."""
    root = synthetic_imagenet
    work_dir = str(tmp_path_factory.mktemp('l1_in1k'))
    apis.train(
        [SYNTHETIC_L1, '--work-dir', work_dir, '--amp', '--cfg-options'] +
        synthetic_data_overrides('imagenet', root))
    checkpoint = os.path.join(work_dir, 'epoch_2.pth')
    return dict(
        root=root,
        checkpoint=checkpoint,
        work_dir=work_dir,
        saved=load_checkpoint_file(checkpoint, map_location='cpu'))


def backbone_weights(saved, ema=False):
    if ema:
        return {
            k[len('module.backbone.'):]: v
            for k, v in saved['ema_state_dict'].items()
            if k.startswith('module.backbone.')
        }
    return {
        k[len('backbone.'):]: v
        for k, v in saved['state_dict'].items() if k.startswith('backbone.')
    }


def downstream(config, checkpoint, use_ema, extra):
    options = {
        'model.backbone.arch': 'l1',
        'model.backbone.out_channels': L1_WIDE,
        'model.backbone.init_cfg.checkpoint': checkpoint,
        'model.backbone.init_cfg.use_ema': use_ema,
    }
    options.update(extra)
    model = build_model(load_config(config, options))
    model.init_weights()
    return model.backbone


@pytest.mark.parametrize('use_ema', [False, True])
@pytest.mark.parametrize('config, extra', [
    (SEG_CONFIG, {
        'model.decode_head.in_channels': list(L1_WIDE),
        'model.auxiliary_head.in_channels': 256
    }),
    (DET_CONFIG, {
        'model.neck.in_channels': list(L1_WIDE)
    }),
])
def test_imagenet_checkpoint_feeds_the_downstream_configs(
        l1_run, config, extra, use_ema):
    backbone = downstream(config, l1_run['checkpoint'], use_ema, extra)
    report = backbone.load_report
    assert not report['missing']
    assert all(k.startswith('proj') for k in report['new_outputs'])
    expected = backbone_weights(l1_run['saved'], ema=use_ema)
    state = backbone.state_dict()
    loaded = [k for k in expected if k in state]
    assert len(loaded) == len(report['loaded']) > 300
    for key in loaded:
        assert torch.equal(state[key], expected[key]), key


def test_amp_trains_the_classifier_on_cpu_without_nan(l1_run):
    log = open(glob(os.path.join(l1_run['work_dir'], '*', '*.log'))[0]).read()
    # bfloat16 where this CPU computes it, float32 (with a log line) where
    # it would be emulated.
    expected = ('bfloat16 autocast on the CPU' if cpu_computes_bfloat16() else
                'training in float32 instead of AMP')
    assert expected in log
    scalars = glob(
        os.path.join(l1_run['work_dir'], '*', 'vis_data', 'scalars.json'))[0]
    losses = [
        json.loads(line)['loss'] for line in open(scalars) if '"loss"' in line
    ]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    weights = l1_run['saved']['state_dict'].values()
    assert all(
        torch.isfinite(w).all() for w in weights if w.is_floating_point())


def test_ema_weights_differ_from_the_plain_ones(l1_run):
    plain = backbone_weights(l1_run['saved'])
    ema = backbone_weights(l1_run['saved'], ema=True)
    key = 'stages.2.blocks.0.attn.qkv.weight'
    assert not torch.equal(plain[key], ema[key])


def test_inferencer_and_get_model(l1_run):
    from mmengine.registry import init_default_scope
    from mmpretrain import ImageClassificationInferencer, get_model

    # Earlier tests in this process made 'mmdet' the default scope; a user's
    # fresh process starts without one.
    init_default_scope('mmpretrain')
    image = os.path.join(l1_run['root'], 'val', 'class_0000',
                         'synthetic_val_00000.JPEG')
    # mmengine 0.10.7 reads checkpoints with torch's weights_only default,
    # and no allow-list: the runner's checkpoints hold weights only.
    inferencer = ImageClassificationInferencer(
        L1_CONFIG, pretrained=l1_run['checkpoint'], device='cpu')
    model = get_model(L1_CONFIG, pretrained=l1_run['checkpoint'])
    result = inferencer(image)[0]
    assert 0 <= result['pred_label'] < 1000
    assert result['pred_scores'].shape == (1000, )
    assert isinstance(model.backbone, FcaFormer)


def test_mmpretrain_layer_decay_uses_get_layer_depth():
    model = build_model(load_config(L1_CONFIG))
    wrapper = build_optim_wrapper(
        model,
        dict(
            optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05),
            constructor='LearningRateDecayOptimWrapperConstructor',
            paramwise_cfg=dict(layer_decay_rate=0.5)))
    lrs = {}
    for group in wrapper.optimizer.param_groups:
        for param in group['params']:
            lrs[id(param)] = group['lr']
    named = dict(model.named_parameters())
    stem = lrs[id(named['backbone.downsample_layers.0.conv1.conv.weight'])]
    stage3 = lrs[id(named['backbone.stages.2.blocks.0.attn.qkv.weight'])]
    head = lrs[id(named['head.fc.weight'])]
    assert stem < stage3 < head == pytest.approx(1e-3)
    assert model.backbone.get_layer_depth(
        'backbone.stages.2.blocks.4.ffn.fc1.weight', 'backbone.') == (4, 8)


def test_bias_tables_resize_for_another_resolution(official_cls):
    """A 224 checkpoint fine-tunes or evaluates at 288 with global
    attention (windows 18 / 9) once the tables are resized."""
    path = official_cls['l1']['path']
    kwargs = dict(
        out_indices=(3, ), gap_before_final_norm=True, window_size=(18, 9))
    with pytest.raises(ValueError, match='resize_bias_tables=True'):
        model = FcaFormer(
            'l1', init_cfg=dict(type='Pretrained', checkpoint=path), **kwargs)
        model.init_weights()
    model = FcaFormer(
        'l1',
        resize_bias_tables=True,
        init_cfg=dict(type='Pretrained', checkpoint=path),
        **kwargs)
    model.init_weights()
    attn = model.stages[2].blocks[3].attn
    assert attn.position_bias.shape == (6, 18 * 18)
    assert attn.depth_bias.shape == (1, 6, 1, 3 * 25)
    assert attn.cross_scale.shape == (1, 3 * 25, 1)
    # The resized table keeps the corners of the old one.
    old = official_cls['l1']['model']['layer_2.blocks.3.attention_biases']
    grid = attn.position_bias.detach().reshape(6, 18, 18)
    torch.testing.assert_close(
        grid[:, 0, 0], old.reshape(6, 14, 14)[:, 0, 0], atol=0.15, rtol=0)
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 288, 288))[0]).all()
    # The same through mmengine's load_checkpoint path (load_state_dict).
    again = FcaFormer('l1', resize_bias_tables=True, **kwargs)
    again.load_state_dict(model.state_dict())
    small = FcaFormer(
        'l1',
        resize_bias_tables=True,
        out_indices=(3, ),
        gap_before_final_norm=True)
    small.load_state_dict(model.state_dict())  # 18 -> 14 works as well
    assert small.stages[2].blocks[3].attn.position_bias.shape == (6, 196)


def test_at_224_the_classifier_is_the_official_one(official_cls):
    model = build_model(load_config(L1_CONFIG))
    from mmfca.models.utils.checkpoint import convert_official_keys
    backbone, head, _ = convert_official_keys(official_cls['l1']['model'])
    model.backbone.load_state_dict(backbone)
    model.head.load_state_dict(head)
    model.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, mode='tensor'),
            reference_forward(official_cls['l1']['model'], 'l1', x),
            rtol=1e-4,
            atol=2e-5)
