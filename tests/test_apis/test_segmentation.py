"""UperNet + FcaFormer-L2: learning-rate decay, training, testing,
inference, size."""
import json
import os
import subprocess
import sys
from glob import glob

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from reference import official_shapes

from mmfca import apis
from mmfca.apis import build_model, load_config
from mmfca.engine.optimizers import cpu_computes_bfloat16
from mmfca.models.utils.checkpoint import convert_official_key
from mmfca.testing import synthetic_data_overrides
from mmfca.utils.mac_counting import complexity

#: Trains, exports or starts processes: not in `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEG_CONFIG = os.path.join(REPO, 'configs/upernet_fcaformer_l2_160k_ade20k.py')
# The CPU cycle of docs/segmentation.md: the real config on synthetic data.
SYNTHETIC_SEG = os.path.join(
    REPO, 'configs/synthetic/upernet_fcaformer_l2_synthetic_ade20k.py')


def synthetic_overrides(root):
    """--cfg-options that move the synthetic config's data to ``root``."""
    return synthetic_data_overrides('ade20k', root)


@pytest.fixture(scope='session')
def seg_run(synthetic_ade, tmp_path_factory):
    """Train the synthetic config (the real one, small, for 12
    iterations), as the CPU cycle of docs/segmentation.md does."""
    work_dir = str(tmp_path_factory.mktemp('seg_work_dir'))
    apis.train([SYNTHETIC_SEG, '--work-dir', work_dir, '--cfg-options'] +
               synthetic_overrides(synthetic_ade))
    return dict(
        work_dir=work_dir,
        root=synthetic_ade,
        checkpoint=os.path.join(work_dir, 'iter_12.pth'))


def test_training_on_synthetic_data_lowers_the_loss(seg_run):
    assert os.path.isfile(seg_run['checkpoint'])
    scalars = glob(
        os.path.join(seg_run['work_dir'], '*', 'vis_data', 'scalars.json'))
    records = [json.loads(line) for line in open(scalars[0])]
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) == 12
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.9 * sum(losses[:3]) / 3, losses
    # The run used the official optimiser grouping, and AMP ran on the CPU.
    log = open(glob(os.path.join(seg_run['work_dir'], '*', '*.log'))[0]).read()
    assert 'stage_wise learning-rate decay groups' in log
    # bfloat16 where this CPU computes it, float32 (with a log line) where
    # it would be emulated.
    expected = ('bfloat16 autocast on the CPU' if cpu_computes_bfloat16() else
                'training in float32 instead of AMP')
    assert expected in log


def test_test_tool_prints_and_saves_miou(seg_run, tmp_path):
    """tools/test.py in a fresh process: the checkpoint loads under torch's
    weights_only default, mIoU is printed and saved."""
    work_dir = str(tmp_path / 'test')
    result = subprocess.run(
        [
            sys.executable, 'tools/test.py', SYNTHETIC_SEG,
            seg_run['checkpoint'], '--work-dir', work_dir, '--cfg-options'
        ] + synthetic_overrides(seg_run['root']),
        cwd=REPO,
        capture_output=True,
        text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'mIoU: ' in result.stdout
    saved = json.load(
        open(glob(os.path.join(work_dir, '*', 'test_metrics.json'))[0]))
    assert 0 <= saved['metrics']['mIoU'] <= 100


def test_tta_result_dump_and_drawings(seg_run, tmp_path):
    """--tta (multi-scale + flip), --out (label maps), --show-dir."""
    metrics = apis.test([
        SYNTHETIC_SEG, seg_run['checkpoint'], '--work-dir',
        str(tmp_path / 'work'), '--tta', '--out',
        str(tmp_path / 'preds'), '--show-dir',
        str(tmp_path / 'vis'), '--cfg-options'
    ] + synthetic_overrides(seg_run['root']))
    assert 0 <= metrics['mIoU'] <= 100
    assert len(glob(str(tmp_path / 'preds' / '*.png'))) == 4
    assert len(glob(str(tmp_path / 'vis' / '**' / '*.png'),
                    recursive=True)) == 4


def test_inferencer_and_demo(seg_run, tmp_path):
    image = sorted(
        glob(os.path.join(seg_run['root'], 'images', 'validation',
                          '*.jpg')))[0]
    out = str(tmp_path / 'overlay.png')
    result = subprocess.run([
        sys.executable, 'demo/seg_demo.py', image, SEG_CONFIG,
        seg_run['checkpoint'], '--out-file', out
    ],
                            cwd=REPO,
                            capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'predicted classes' in result.stdout
    import mmcv
    assert mmcv.imread(out).shape == mmcv.imread(image).shape

    from mmseg.apis import inference_model, init_model
    model = init_model(SEG_CONFIG, seg_run['checkpoint'], device='cpu')
    prediction = inference_model(model, image)
    assert prediction.pred_sem_seg.data.shape[-2:] == mmcv.imread(
        image).shape[:2]


def test_missing_pretrained_checkpoint_says_what_to_do(synthetic_ade,
                                                       tmp_path):
    # The real config, which starts from the ImageNet checkpoint.
    with pytest.raises(
            FileNotFoundError,
            match='fcaformer_l2_in1k.pth.*official_to_mmfca'):
        apis.train([SEG_CONFIG, '--work-dir',
                    str(tmp_path), '--cfg-options'] +
                   synthetic_overrides(synthetic_ade))


def test_size_matches_the_official_measurement():
    """mmengine's counter on the official UperNet-L2: 48.8M, ~945 GMACs."""
    model = build_model(load_config(SEG_CONFIG))
    result = complexity(model, torch.randn(1, 3, 512, 2048))
    assert result['params'] / 1e6 == pytest.approx(48.8, rel=0.01)
    assert result['macs'] / 1e9 == pytest.approx(945, rel=0.03)


# The official grouping, restated on the official parameter names.
def official_layer_id(name, decay_type, num_layers=6):
    if name.startswith('backbone.patch_embed'):
        return 0
    if 's_scale_factors' in name or 's_token_bias' in name:
        return 0
    if name.startswith('backbone.layer_'):
        parts = name.split('.')
        stage, kind = int(parts[1].split('_')[-1]), parts[2]
        if decay_type == 'stage_wise':
            return stage + 1 if kind == 'blocks' else 0
        if kind == 'blocks':
            return {
                0: 1,
                1: 2,
                2: 3 + int(parts[3]) // 3
            }.get(stage, num_layers)
        return {0: 0, 1: 2, 2: 3}.get(stage, num_layers)
    return num_layers + 1


def official_no_decay(name, ndim, decay_type):
    plain = ndim == 1 or name.endswith('.bias') or name in ('pos_embed',
                                                            'cls_token')
    if decay_type == 'layer_wise_cab':
        return plain
    return plain or name.endswith(
        ('token_bias', '_biases')) or ('norm' in name)


@pytest.mark.parametrize('decay_type, rate, weight_decay',
                         [('stage_wise', 0.9, 0.01),
                          ('layer_wise_cab', 0.95, 0.05)])
def test_learning_rate_decay_matches_the_official_table(
        decay_type, rate, weight_decay):
    cfg = load_config(SEG_CONFIG)
    model = build_model(cfg)
    optim_cfg = cfg.optim_wrapper.copy()
    optim_cfg.type = 'OptimWrapper'
    optim_cfg.pop('loss_scale')
    optim_cfg.optimizer.weight_decay = weight_decay
    optim_cfg.paramwise_cfg = dict(
        decay_rate=rate, decay_type=decay_type, num_layers=6)
    wrapper = build_optim_wrapper(model, optim_cfg)
    settings = {}
    for group in wrapper.optimizer.param_groups:
        for name in group['param_names']:
            settings[name] = (group['lr'], group['weight_decay'])

    official = official_shapes('l2', head_dims=(96, 192, 384, 768))
    ours_to_official = {}
    for key, shape in official.items():
        buffer = ('running_mean', 'running_var', 'num_batches_tracked')
        if key.endswith(buffer):
            continue
        _, ours = convert_official_key(key)
        ours_to_official[f'backbone.{ours}'] = (f'backbone.{key}', len(shape))
    checked = 0
    for name, param in model.named_parameters():
        official_name, ndim = ours_to_official.get(name, (name, param.ndim))
        layer_id = official_layer_id(official_name, decay_type)
        lr = 1e-4 * rate**(6 + 2 - layer_id - 1)
        wd = 0. if official_no_decay(official_name, ndim,
                                     decay_type) else weight_decay
        assert settings[name] == pytest.approx((lr, wd)), (name, official_name)
        checked += 1
    assert checked == len(settings) == len(list(model.parameters()))
    # Every backbone parameter had an official counterpart.
    assert all(n in ours_to_official for n, _ in model.named_parameters()
               if n.startswith('backbone.'))
