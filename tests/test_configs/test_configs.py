"""The shipped configs as built by mmengine: the dense recipes against the
official configs, the shared header, and the synthetic configs as the real
ones at small sizes."""
import os

import pytest
from mmengine.config import Config

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(REPO, 'configs')
SEG = 'upernet_fcaformer_l2_160k_ade20k.py'
MASK_RCNN = 'mask_rcnn_fcaformer_l2_fpn_3x_coco.py'
CASCADE = 'cascade_mask_rcnn_fcaformer_l2_fpn_3x_coco.py'
CLASSIFIERS = [f'fcaformer_l{i}_in1k.py' for i in range(5)]


def load(name):
    return Config.fromfile(os.path.join(CONFIGS, name)).to_dict()


def without_scope(value):
    """``value`` without mmengine's ``_scope_`` marks of base variables."""
    if isinstance(value, dict):
        return {
            k: without_scope(v)
            for k, v in value.items() if k != '_scope_'
        }
    if isinstance(value, (list, tuple)):
        return type(value)(without_scope(v) for v in value)
    return value


# The official configs (github.com/hkzhang-git/FcaFormer):
# semantic-segmentation/configs/fcaformer/upernet_fcaformer_l2_160k_ade20k_ms
# .py and object_detection/configs/fcaformer/{mask,cascade_mask}_rcnn_
# fcaformer_l2_set1_480-800_adamw_3x_coco_in1k.py. Their L2 backbone (dims
# 96-480, depths 2-2-7-2) widens its four outputs to 96, 192, 384 and 768
# channels, with layer scale 1.0; all train in fp16 with AdamW (betas 0.9,
# 0.999) and a learning-rate decay over 6 layer groups.
OFFICIAL = {
    SEG:
    dict(
        drop_path_rate=0.1,
        optimizer=dict(lr=1e-4, weight_decay=0.01),
        decay=dict(decay_rate=0.9, decay_type='stage_wise'),
        # lr_config: poly (power 1, min_lr 0) over 160k iterations from
        # iteration 0, times a linear warm-up of 1500 iterations from 1e-6
        # (mmengine's `end` is exclusive: test_recipes.py steps it against
        # the mmcv 1.x formula at every iteration).
        param_scheduler=[
            dict(
                type='LinearLR',
                start_factor=1e-6,
                by_epoch=False,
                begin=0,
                end=1501),
            dict(
                type='PolyLR',
                power=1.0,
                eta_min=0.0,
                begin=0,
                end=160001,
                by_epoch=False),
        ]),
    MASK_RCNN:
    dict(
        drop_path_rate=0.2,
        optimizer=dict(lr=1e-4, weight_decay=0.05),
        decay=dict(decay_rate=0.95, decay_type='layer_wise_cab')),
    CASCADE:
    dict(
        drop_path_rate=0.2,
        optimizer=dict(lr=2e-4, weight_decay=0.05),
        decay=dict(decay_rate=0.7, decay_type='layer_wise_cab')),
}
# mmdet 2.x schedule_1x's linear warm-up over 500 iterations from 0.001
# (LinearLR reaches its end factor at iteration end - 1), steps at epochs
# 27 and 33 of 36; tests/test_recipes.py steps it against the official
# formula.
DETECTION_SCHEDULE = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=501),
    dict(
        type='MultiStepLR',
        begin=0,
        end=36,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1),
]


@pytest.mark.parametrize('name', [SEG, MASK_RCNN, CASCADE])
def test_dense_configs_are_the_official_recipes(name):
    cfg = without_scope(load(name))
    official = OFFICIAL[name]
    assert cfg['model']['backbone'] == dict(
        type='FcaFormer',
        arch='l2',
        out_indices=(0, 1, 2, 3),
        out_channels=(96, 192, 384, 768),
        drop_path_rate=official['drop_path_rate'],
        layer_scale_init_value=1.0,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/fcaformer_l2_in1k.pth',
            prefix='backbone.'))
    widths = [96, 192, 384, 768]
    if name == SEG:
        assert cfg['model']['decode_head']['in_channels'] == widths
        assert cfg['model']['auxiliary_head']['in_channels'] == 384
    else:
        assert cfg['model']['neck']['in_channels'] == widths

    wrapper = cfg['optim_wrapper']
    assert wrapper['type'] == 'AnyDeviceAmpOptimWrapper'
    assert wrapper['loss_scale'] == 'dynamic'
    assert wrapper['constructor'] == \
        'FcaFormerLearningRateDecayOptimizerConstructor'
    assert wrapper['optimizer'] == dict(
        type='AdamW', betas=(0.9, 0.999), **official['optimizer'])
    assert wrapper['paramwise_cfg'] == dict(num_layers=6, **official['decay'])
    # mmcv's CPU NMS and RoIAlign have no bfloat16 kernels.
    assert wrapper.get('cpu_autocast',
                       'auto') == ('auto' if name == SEG else False)
    assert cfg['param_scheduler'] == official.get('param_scheduler',
                                                  DETECTION_SCHEDULE)
    if name == SEG:
        assert cfg['train_cfg']['max_iters'] == 160000
        assert cfg['train_dataloader']['batch_size'] == 2  # x 8 GPUs
    else:
        assert cfg['train_cfg']['max_epochs'] == 36


@pytest.mark.parametrize('name', [SEG, MASK_RCNN, CASCADE] + CLASSIFIERS)
def test_every_config_has_the_mmfca_header(name):
    """configs/_base_/mmfca_runtime.py: the plugin import, ReliableRunner,
    and the hooks merged by name into the codebase's default_hooks (its
    checkpoint settings kept); training skips undecodable images."""
    cfg = without_scope(load(name))
    assert cfg['custom_imports'] == dict(
        imports=['mmfca'], allow_failed_imports=False)
    assert cfg['runner_type'] == 'ReliableRunner'
    hooks = cfg['default_hooks']
    assert hooks['checkpoint']['type'] == 'SafeCheckpointHook'
    assert hooks['checkpoint']['interval'] == (16000 if name == SEG else 1)
    types = {key: hook['type'] for key, hook in hooks.items()}
    assert types.items() >= dict(
        rng_state='RNGStateHook',
        non_finite_loss='NonFiniteLossHook',
        label_range='LabelRangeHook',
        logger='LoggerHook').items()
    train = cfg['train_dataloader']['dataset']['pipeline']
    assert train[0]['type'] == 'LoadImageFromFileOrSkip'
    assert cfg['test_dataloader']['dataset']['pipeline'][0]['type'] == \
        'LoadImageFromFile'
    # Only the classifiers with an EMA (L1-L4, as the official scripts)
    # list custom hooks.
    ema = name in CLASSIFIERS and name != 'fcaformer_l0_in1k.py'
    expected = ['EMAHook'] if ema else []
    assert [hook['type'] for hook in cfg.get('custom_hooks', [])] == \
        expected


def step_types(pipeline):
    """The step types of a pipeline, nested ones (RandomChoice,
    TestTimeAug) included, in order."""
    types = []
    for step in pipeline:
        if isinstance(step, (list, tuple)):
            types.append(step_types(step))
            continue
        types.append(step['type'])
        if 'transforms' in step:
            types.append(step_types(step['transforms']))
    return types


def differences(a, b, path=''):
    """Dotted paths where two config values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        found = set()
        for key in set(a) | set(b):
            if key not in a or key not in b:
                found.add(f'{path}{key}')
            else:
                found |= differences(a[key], b[key], f'{path}{key}.')
        return found
    return set() if a == b else {path.rstrip('.')}


SYNTHETIC = {
    'synthetic/upernet_fcaformer_l2_synthetic_ade20k.py': (SEG, {
        'model':
        {'data_preprocessor.size', 'backbone.init_cfg', 'test_cfg.mode'},
        'optim_wrapper': {'optimizer.lr'},
        'default_hooks': {'checkpoint.interval', 'logger.interval'},
    }),
    'synthetic/mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py': (MASK_RCNN, {
        'model': {
            'backbone.init_cfg', 'train_cfg.rpn_proposal.nms_pre',
            'train_cfg.rpn_proposal.max_per_img', 'test_cfg.rpn.nms_pre',
            'test_cfg.rpn.max_per_img', 'test_cfg.rcnn.max_per_img',
            'test_cfg.rcnn.score_thr'
        },
        'optim_wrapper': {'optimizer.lr'},
        'default_hooks': {'logger.interval'},
    }),
    'synthetic/fcaformer_l1_synthetic_imagenet.py': ('fcaformer_l1_in1k.py', {
        'model': set(),
        'optim_wrapper': set(),
        'default_hooks': {'logger.interval'},
    }),
}


@pytest.mark.parametrize('name', sorted(SYNTHETIC))
def test_synthetic_configs_are_the_real_ones_small(name):
    """The same model, optimiser, hooks and pipeline steps as the real
    config; only sizes, lengths, paths and the pretrained weights
    differ."""
    real_name, allowed = SYNTHETIC[name]
    real, synthetic = without_scope(load(real_name)), without_scope(load(name))
    for key in ('model', 'optim_wrapper', 'default_hooks'):
        assert differences(real[key], synthetic[key]) == allowed[key], key
    for key in ('runner_type', 'custom_imports', 'custom_hooks',
                'val_evaluator', 'test_evaluator'):
        assert differences(real.get(key),
                           synthetic.get(key)) <= {'ann_file'}, key
    for split in ('train', 'val', 'test'):
        loader = f'{split}_dataloader'
        assert step_types(synthetic[loader]['dataset']['pipeline']) == \
            step_types(real[loader]['dataset']['pipeline']), loader
        assert synthetic[loader]['num_workers'] == 0
        assert synthetic[loader]['dataset']['data_root'].startswith(
            'data/synthetic_')
    if 'tta_pipeline' in real:
        assert step_types(synthetic['tta_pipeline']) == step_types(
            real['tta_pipeline'])
    assert [s['type'] for s in synthetic['param_scheduler']] == \
        [s['type'] for s in real['param_scheduler']]
