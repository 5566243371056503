"""The official recipes where the configs say "official": the detection
warm-up, the segmentation aug-test, and the paper's figures in the
model-zoo metafile."""
import os

import mmcv
import numpy as np
import pytest
import torch
import yaml

from mmfca.apis import load_config, register_scope

#: Trains, exports or starts processes: not in `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MASK_RCNN = os.path.join(REPO, 'configs/mask_rcnn_fcaformer_l2_fpn_3x_coco.py')
CASCADE = os.path.join(
    REPO, 'configs/cascade_mask_rcnn_fcaformer_l2_fpn_3x_coco.py')
SEG_CONFIG = os.path.join(REPO, 'configs/upernet_fcaformer_l2_160k_ade20k.py')
METAFILE = os.path.join(REPO, 'configs/metafile.yml')


def official_lr_factor(iteration, epoch):
    """The official detection schedule, restated from mmdet 2.x
    ``schedule_1x.py`` (warmup='linear', warmup_iters=500,
    warmup_ratio=0.001), which the official FcaFormer configs keep, with
    their ``lr_config = dict(step=[27, 33])``; mmcv 1.x's linear warm-up is
    ``1 - (1 - ratio) * (1 - i / warmup_iters)`` before iteration 500."""
    warm_up = 1.0
    if iteration < 500:
        warm_up = 1 - (1 - 0.001) * (1 - iteration / 500)
    return warm_up * 0.1**sum(epoch >= step for step in (27, 33))


@pytest.mark.parametrize('config', [MASK_RCNN, CASCADE])
def test_detection_schedule_is_the_official_one(config):
    """Build the config's schedulers with mmengine and step them as its
    ParamSchedulerHook does (iteration-based ones after every iteration,
    epoch-based ones after every epoch), for the 36 epochs."""
    from mmengine.registry import PARAM_SCHEDULERS
    cfg = load_config(config)
    base_lr = cfg.optim_wrapper.optimizer.lr
    # Two groups with their own lr, as layer-wise decay makes them.
    group_lrs = [base_lr, base_lr * 0.95**3]
    optimizer = torch.optim.AdamW([
        dict(params=[torch.nn.Parameter(torch.zeros(1))], lr=lr)
        for lr in group_lrs
    ])
    schedulers = [
        PARAM_SCHEDULERS.build(dict(scheduler, optimizer=optimizer))
        for scheduler in cfg.param_scheduler
    ]
    epoch_length = 600  # covers the warm-up within the first epoch
    iteration = 0
    for epoch in range(36):
        for _ in range(epoch_length):
            expected = [
                lr * official_lr_factor(iteration, epoch) for lr in group_lrs
            ]
            actual = [group['lr'] for group in optimizer.param_groups]
            assert actual == pytest.approx(
                expected, rel=1e-6), (iteration, epoch)
            optimizer.step()
            for scheduler in schedulers:
                if not scheduler.by_epoch:
                    scheduler.step()
            iteration += 1
        for scheduler in schedulers:
            if scheduler.by_epoch:
                scheduler.step()


def test_segmentation_schedule_is_the_official_one():
    """The official UperNet schedule, restated from mmseg 0.x /
    mmcv 1.x: ``lr_config = dict(policy='poly', power=1.0, min_lr=0.0,
    by_epoch=False, warmup='linear', warmup_iters=1500,
    warmup_ratio=1e-6)`` over 160k iterations: the poly lr at iteration i,
    times ``1 - (1 - 1e-6) * (1 - i / 1500)`` before iteration 1500. The
    config's schedulers, stepped after every iteration, at every
    iteration."""
    from mmengine.registry import PARAM_SCHEDULERS
    cfg = load_config(SEG_CONFIG)
    base_lr = cfg.optim_wrapper.optimizer.lr
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))],
                                  lr=base_lr)
    schedulers = [
        PARAM_SCHEDULERS.build(dict(scheduler, optimizer=optimizer))
        for scheduler in cfg.param_scheduler
    ]
    max_iters = cfg.train_cfg.max_iters
    assert max_iters == 160000
    for iteration in range(max_iters):
        warm_up = 1.0
        if iteration < 1500:
            warm_up = 1 - (1 - 1e-6) * (1 - iteration / 1500)
        expected = base_lr * (1 - iteration / max_iters) * warm_up
        assert optimizer.param_groups[0]['lr'] == pytest.approx(
            expected, rel=1e-6), iteration
        optimizer.step()
        for scheduler in schedulers:
            scheduler.step()


def official_aug_test_branches(width, height):
    """The official ``--aug-test``, restated: mmseg 0.x MultiScaleFlipAug
    with img_scale=(2048, 512), img_ratios 0.5-1.75 and flip makes the
    scales ``(int(2048 * r), int(512 * r))``, each tested unflipped then
    flipped; Resize(keep_ratio=True) sizes the image with mmcv 1.x
    ``rescale_size``: factor ``min(long / long_edge, short / short_edge)``,
    size ``int(w * f + 0.5), int(h * f + 0.5)``.

    Returns:
        list[tuple]: ((height, width), flipped) for each branch.
    """
    branches = []
    for ratio in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75):
        scale = (int(2048 * ratio), int(512 * ratio))
        factor = min(
            max(scale) / max(width, height),
            min(scale) / min(width, height))
        size = (int(height * factor + 0.5), int(width * factor + 0.5))
        branches += [(size, False), (size, True)]
    return branches


def test_tta_resizes_as_the_official_aug_test(tmp_path):
    """The config's tta_pipeline, as ``--tta`` puts it into the test
    dataset, on images of an ADE20K shape, a tall and a wide one."""
    sizes = [(683, 512), (300, 1000), (1600, 200)]
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate(sizes):
        name = f'image_{index}'
        mmcv.imwrite(
            rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            str(tmp_path / 'images' / 'validation' / f'{name}.jpg'))
        # Label k in column k (mod 5): 0 (ADE20K's "other") and 1-4.
        label = np.broadcast_to(np.arange(width) % 5, (height, width))
        mmcv.imwrite(
            label.astype(np.uint8),
            str(tmp_path / 'annotations' / 'validation' / f'{name}.png'))

    cfg = load_config(SEG_CONFIG)
    register_scope(cfg)
    from mmengine.registry import DATASETS
    dataset = DATASETS.build(
        dict(
            cfg.test_dataloader.dataset,
            data_root=str(tmp_path),
            pipeline=cfg.tta_pipeline))
    assert len(dataset) == len(sizes)
    for index, (width, height) in enumerate(sizes):
        data = dataset[index]
        got = [(tuple(inputs.shape[-2:]), sample.flip)
               for inputs, sample in zip(data['inputs'], data['data_samples'])]
        assert got == official_aug_test_branches(width,
                                                 height), (width, height)
        for plain, flipped in zip(data['inputs'][::2], data['inputs'][1::2]):
            assert torch.equal(flipped, plain.flip(-1))
        # Labels at the original size, reduced by one (0 becomes ignored).
        expected = np.arange(width) % 5 - 1
        expected[expected < 0] = 255
        for sample in data['data_samples']:
            gt = sample.gt_sem_seg.data[0].numpy()
            assert gt.shape == (height, width)
            assert (gt == expected[None]).all()


# The figures of the official README (github.com/hkzhang-git/FcaFormer),
# the paper's tables.
PAPER_FIGURES = {
    'fcaformer-l0_in1k': {
        'ImageNet-1k': {
            'Top 1 Accuracy': 74.3
        }
    },
    'fcaformer-l1_in1k': {
        'ImageNet-1k': {
            'Top 1 Accuracy': 80.3
        }
    },
    'fcaformer-l2_in1k': {
        'ImageNet-1k': {
            'Top 1 Accuracy': 83.1
        }
    },
    'fcaformer-l3_in1k': {
        'ImageNet-1k': {
            'Top 1 Accuracy': 84.2
        }
    },
    'fcaformer-l4_in1k': {
        'ImageNet-1k': {
            'Top 1 Accuracy': 84.9
        }
    },
    'upernet_fcaformer-l2_160k_ade20k': {
        'ADE20K': {
            'mIoU (ms+flip)': 47.6
        }
    },
    'mask-rcnn_fcaformer-l2_fpn_3x_coco': {
        'COCO': {
            'box AP': 47.0,
            'mask AP': 42.1
        }
    },
    'cascade-mask-rcnn_fcaformer-l2_fpn_3x_coco': {
        'COCO': {
            'box AP': 51.0,
            'mask AP': 43.9
        }
    },
}


def test_metafile_results_are_the_papers_and_say_so():
    """What modelindex (the loader of mim and mmpretrain's model zoo)
    reads: Collections and Models; per model a unique Name, an existing
    collection and config; per Results entry only Task and Dataset
    (strings) and Metrics (a dict): other keys of an entry are dropped on
    load, so the mark is in the metric names. No Weights: there are
    none."""
    with open(METAFILE) as f:
        meta = yaml.safe_load(f)
    assert set(meta) == {'Collections', 'Models'}
    collections = {collection['Name'] for collection in meta['Collections']}
    names = [model['Name'] for model in meta['Models']]
    assert sorted(names) == sorted(PAPER_FIGURES)

    for model in meta['Models']:
        assert model['In Collection'] in collections
        assert os.path.isfile(os.path.join(REPO, model['Config']))
        assert 'Weights' not in model
        figures = {}
        for result in model['Results']:
            assert set(result) == {'Task', 'Dataset', 'Metrics'}
            assert isinstance(result['Task'], str)
            assert isinstance(result['Dataset'], str)
            assert isinstance(result['Metrics'], dict)
            for metric, value in result['Metrics'].items():
                assert metric.endswith(' (paper)') or metric.endswith(
                    ', paper)'), (model['Name'], metric)
                plain = metric.replace(' (paper)', '').replace(', paper)', ')')
                figures.setdefault(result['Dataset'], {})[plain] = value
        assert figures == PAPER_FIGURES[model['Name']], model['Name']
