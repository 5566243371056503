"""Mask R-CNN and Cascade Mask R-CNN with FcaFormer-L2: configs, CPU
training on synthetic COCO, testing with pycocotools, inference, sizes."""
import json
import os
import pickle
import subprocess
import sys
from glob import glob

import pytest
import torch

from mmfca import apis
from mmfca.apis import build_model, load_config
from mmfca.models import FcaFormer
from mmfca.testing import synthetic_data_overrides
from mmfca.utils.mac_counting import complexity, keep_all_proposals
from mmfca.utils.serialization import load_checkpoint_file

#: Trains, exports or starts processes: not in `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MASK_RCNN = os.path.join(REPO, 'configs/mask_rcnn_fcaformer_l2_fpn_3x_coco.py')
CASCADE = os.path.join(
    REPO, 'configs/cascade_mask_rcnn_fcaformer_l2_fpn_3x_coco.py')
# The CPU run of docs/detection.md: the real Mask R-CNN config on
# synthetic COCO.
SYNTHETIC_MASK_RCNN = os.path.join(
    REPO, 'configs/synthetic/mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py')


def synthetic_overrides(root):
    """--cfg-options that move the synthetic config's data to ``root``."""
    return synthetic_data_overrides('coco', root)


def synthetic_cascade_config(path):
    """Write the Cascade Mask R-CNN config with the data, sizes and
    schedule of the synthetic Mask R-CNN config to ``path``."""
    from mmengine.config import Config
    synthetic = Config.fromfile(SYNTHETIC_MASK_RCNN)
    cfg = Config.fromfile(CASCADE)
    keys = ('train_dataloader', 'val_dataloader', 'test_dataloader',
            'val_evaluator', 'test_evaluator', 'train_cfg', 'param_scheduler',
            'default_hooks', 'randomness')
    cfg.merge_from_dict({key: synthetic[key] for key in keys})
    cfg.merge_from_dict(
        dict(
            model=dict(
                backbone=dict(init_cfg=None),
                train_cfg=dict(
                    rpn_proposal=synthetic.model.train_cfg.rpn_proposal),
                test_cfg=synthetic.model.test_cfg)))
    cfg.dump(str(path))
    return str(path)


def losses_of(work_dir):
    scalars = glob(os.path.join(work_dir, '*', 'vis_data', 'scalars.json'))
    return [
        json.loads(line)['loss'] for line in open(scalars[0])
        if '"loss"' in line
    ]


# mask_rcnn_run: tests/conftest.py (test_resume.py resumes it too).


def test_mask_rcnn_trains_on_cpu(mask_rcnn_run):
    assert os.path.isfile(mask_rcnn_run['checkpoint'])
    losses = losses_of(mask_rcnn_run['work_dir'])
    assert len(losses) == 8  # 2 epochs x 4 batches (2 empty images dropped)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses
    log = open(glob(os.path.join(mask_rcnn_run['work_dir'], '*',
                                 '*.log'))[0]).read()
    assert 'layer_wise_cab learning-rate decay groups' in log
    assert 'training in float32 (cpu_autocast=False' in log


def test_epoch_based_resume_is_bit_identical(mask_rcnn_run, tmp_path):
    # The 2-epoch run stopped after epoch 1 (as a kill after that
    # checkpoint would), then resumed: the RoI samplers' draws continue.
    options = synthetic_overrides(
        mask_rcnn_run['root']) + ['randomness.deterministic=True']
    work_dir = str(tmp_path)
    apis.train([SYNTHETIC_MASK_RCNN, '--work-dir', work_dir, '--cfg-options'] +
               options + ['train_cfg.max_epochs=1'])
    apis.train([
        SYNTHETIC_MASK_RCNN, '--work-dir', work_dir, '--resume',
        '--cfg-options'
    ] + options)
    expected = load_checkpoint_file(mask_rcnn_run['checkpoint'])
    resumed = load_checkpoint_file(os.path.join(work_dir, 'epoch_2.pth'))
    assert resumed['meta']['epoch'] == expected['meta']['epoch'] == 2
    assert resumed['meta']['iter'] == expected['meta']['iter']
    for key, value in expected['state_dict'].items():
        assert torch.equal(resumed['state_dict'][key], value), key
    for index, state in expected['optimizer']['state'].items():
        for name, value in state.items():
            assert torch.equal(resumed['optimizer']['state'][index][name],
                               value), (index, name)
    assert resumed['param_schedulers'] == expected['param_schedulers']


def test_annotation_file_that_is_not_coco_is_refused(synthetic_coco, tmp_path):
    not_coco = tmp_path / 'labels.json'
    not_coco.write_text(json.dumps({'images': [], 'labels': []}))
    with pytest.raises(
            ValueError,
            match="not a COCO annotation file.*"
            r"lacks the top-level key\(s\) \['annotations', "
            r"'categories'\]"):
        apis.train([
            SYNTHETIC_MASK_RCNN, '--work-dir',
            str(tmp_path / 'work'), '--cfg-options'
        ] + synthetic_overrides(synthetic_coco) +
                   [f'train_dataloader.dataset.ann_file={not_coco}'])


def test_cascade_mask_rcnn_trains_on_cpu(synthetic_coco, tmp_path):
    config = synthetic_cascade_config(tmp_path / 'cascade_synthetic.py')
    apis.train([config, '--work-dir',
                str(tmp_path), '--cfg-options'] +
               synthetic_overrides(synthetic_coco) +
               ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1'])
    losses = losses_of(str(tmp_path))
    assert len(losses) == 4
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
    assert os.path.isfile(str(tmp_path / 'epoch_1.pth'))


def test_test_tool_reports_coco_ap(mask_rcnn_run, tmp_path):
    """tools/test.py in a fresh process: box and mask AP from pycocotools,
    raw results as .pkl, drawings."""
    out = str(tmp_path / 'results.pkl')
    result = subprocess.run(
        [
            sys.executable, 'tools/test.py', SYNTHETIC_MASK_RCNN,
            mask_rcnn_run['checkpoint'], '--work-dir',
            str(tmp_path / 'work'), '--out', out, '--show-dir',
            str(tmp_path / 'vis'), '--cfg-options'
        ] + synthetic_overrides(mask_rcnn_run['root']),
        cwd=REPO,
        capture_output=True,
        text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ('coco/bbox_mAP: ', 'coco/bbox_mAP_50: ', 'coco/bbox_mAP_s: ',
                'coco/segm_mAP: ', 'coco/segm_mAP_75: ', 'coco/segm_mAP_l: '):
        assert key in result.stdout, key
    results = pickle.load(open(out, 'rb'))
    assert len(results) == 4 and 'pred_instances' in results[0]
    assert 'masks' in results[0]['pred_instances']
    assert len(glob(str(tmp_path / 'work' / '*' / 'vis' / '*.jpg'))) == 4 or \
        len(glob(str(tmp_path / 'vis' / '*'))) == 4


def test_format_only_writes_coco_result_json(mask_rcnn_run, tmp_path):
    prefix = str(tmp_path / 'submission')
    apis.test([
        SYNTHETIC_MASK_RCNN, mask_rcnn_run['checkpoint'], '--work-dir',
        str(tmp_path / 'work'), '--cfg-options'
    ] + synthetic_overrides(mask_rcnn_run['root']) + [
        'test_evaluator.format_only=True',
        f'test_evaluator.outfile_prefix={prefix}'
    ])
    boxes = json.load(open(prefix + '.bbox.json'))
    masks = json.load(open(prefix + '.segm.json'))
    assert isinstance(boxes, list) and isinstance(masks, list)
    if boxes:
        assert {'image_id', 'bbox', 'score', 'category_id'} <= set(boxes[0])


def test_inferencer_and_demo(mask_rcnn_run, tmp_path):
    image = sorted(
        glob(os.path.join(mask_rcnn_run['root'], 'val2017', '*.jpg')))[0]
    out = str(tmp_path / 'drawn.png')
    result = subprocess.run([
        sys.executable, 'demo/det_demo.py', image, MASK_RCNN,
        mask_rcnn_run['checkpoint'], '--out-file', out, '--score-thr', '0.0'
    ],
                            cwd=REPO,
                            capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'detections with score' in result.stdout
    assert os.path.isfile(out)


@pytest.mark.parametrize('size', [(800, 1216), (1333, 800), (501, 333),
                                  (97, 61), (32, 32)])
def test_every_pipeline_size_goes_through_the_backbone(size):
    model = FcaFormer(
        'l2', out_indices=(0, 1, 2, 3),
        out_channels=(96, 192, 384, 768)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert [o.shape[1] for o in outs] == [96, 192, 384, 768]
    assert outs[-1].shape[-2:] == (-(-size[0] // 32), -(-size[1] // 32))


@pytest.mark.parametrize('config, params', [(MASK_RCNN, 36.6),
                                            (CASCADE, 74.4)])
def test_detector_sizes(config, params):
    cfg = load_config(config)
    keep_all_proposals(cfg)
    model = build_model(cfg)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert count == pytest.approx(params, abs=0.05)
    if config == MASK_RCNN:
        # mmengine's counter on the official Mask R-CNN-L2: ~255 GMACs at
        # 1280x800 (the paper's 249G), with 1000 proposals.
        result = complexity(model, torch.randn(1, 3, 800, 1280))
        assert result['macs'] / 1e9 == pytest.approx(255, rel=0.05)
