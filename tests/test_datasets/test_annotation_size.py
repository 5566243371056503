"""CheckAnnotationSize in the shipped pipelines, on small datasets written
to disk and loaded through the codebases' dataset classes: a label map, or
an image, of another size than its annotations were made for stops loading
with an error naming both; matching samples load as without the check."""
import copy
import functools
import json
import os
import random
import shutil

import cv2
import numpy as np
import pytest
import torch
from mmengine.structures import BaseDataElement

from mmfca.apis import load_config, register_scope
from mmfca.datasets import CheckAnnotationSize, LoadImageFromFileOrSkip
from mmfca.testing import make_synthetic_coco

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEG_CONFIGS = [
    'configs/upernet_fcaformer_l2_160k_ade20k.py',
    'configs/synthetic/upernet_fcaformer_l2_synthetic_ade20k.py',
]
DET_CONFIGS = [
    'configs/mask_rcnn_fcaformer_l2_fpn_3x_coco.py',
    'configs/synthetic/mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py',
]
CASCADE = 'configs/cascade_mask_rcnn_fcaformer_l2_fpn_3x_coco.py'
LOADERS = ['train_dataloader', 'val_dataloader', 'test_dataloader']
CHECK = 'CheckAnnotationSize'

VOC_SIZE = (48, 64)  # height, width
VOC_HALF = (24, 32)
COCO_SIZE = (64, 85)  # make_synthetic_coco(size=64): 64 x 64 * 4 // 3
COCO_HALF = (32, 42)


@pytest.fixture(scope='module')
def voc(tmp_path_factory):
    """A Pascal VOC layout with two images: ``2007_000001`` and its label
    map (split ``matching``), and ``2007_000002`` whose label map was saved
    at half its image's size (split ``mismatched``)."""
    root = tmp_path_factory.mktemp('voc')
    for folder in ('JPEGImages', 'SegmentationClass',
                   'ImageSets/Segmentation'):
        os.makedirs(root / folder)
    rng = np.random.default_rng(0)
    height, width = VOC_SIZE
    for name, label_size in (('2007_000001', VOC_SIZE), ('2007_000002',
                                                         VOC_HALF)):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        # Two VOC classes and an ignored boundary.
        label = np.ones(VOC_SIZE, np.uint8)
        label[10:40, 12:50] = 15
        label[10:40, 12] = 255
        label = cv2.resize(
            label, label_size[::-1], interpolation=cv2.INTER_NEAREST)
        cv2.imwrite(str(root / 'JPEGImages' / f'{name}.jpg'), image)
        cv2.imwrite(str(root / 'SegmentationClass' / f'{name}.png'), label)
    splits = root / 'ImageSets' / 'Segmentation'
    (splits / 'matching.txt').write_text('2007_000001\n')
    (splits / 'mismatched.txt').write_text('2007_000002\n')
    return str(root)


@pytest.fixture(scope='module')
def coco(tmp_path_factory):
    """A synthetic COCO whose first training and first validation image
    (``images`` id 1) were re-saved at half the size the annotation file
    records."""
    root = str(tmp_path_factory.mktemp('coco'))
    make_synthetic_coco(root, num_train=3, num_val=2, size=64)
    for split in ('train2017', 'val2017'):
        path = os.path.join(root, split, f'synthetic_{split}_00000.jpg')
        image = cv2.imread(path)
        assert image.shape[:2] == COCO_SIZE
        cv2.imwrite(path, cv2.resize(image, COCO_HALF[::-1]))
    return root


def uncompressed_rle(mask):
    """COCO's crowd-region format: run lengths over the column-major
    pixels, starting with a run of zeros."""
    flat = mask.ravel(order='F')
    ends = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], ends, [flat.size]]))
    if flat[0]:
        counts = np.concatenate([[0], counts])
    return dict(counts=counts.tolist(), size=list(mask.shape))


@pytest.fixture(scope='module')
def coco_with_crowd(coco, tmp_path_factory):
    """``coco`` plus a crowd region (an uncompressed RLE of the recorded
    size) on the half-size image of id 1."""
    root = str(tmp_path_factory.mktemp('coco_with_crowd'))
    shutil.copytree(coco, root, dirs_exist_ok=True)
    path = os.path.join(root, 'annotations', 'instances_train2017.json')
    with open(path) as file:
        content = json.load(file)
    mask = np.zeros(COCO_SIZE, np.uint8)
    mask[5:30, 5:40] = 1
    content['annotations'].append(
        dict(
            id=1000,
            image_id=1,
            category_id=1,
            segmentation=uncompressed_rle(mask),
            area=float(mask.sum()),
            bbox=[5.0, 5.0, 35.0, 25.0],
            iscrowd=1))
    with open(path, 'w') as file:
        json.dump(content, file)
    return root


def without_check(pipeline):
    """``pipeline`` without its CheckAnnotationSize steps (also inside
    TestTimeAug's lists of alternatives)."""
    kept = []
    for step in pipeline:
        if isinstance(step, list):
            alternatives = without_check(step)
            if alternatives:
                kept.append(alternatives)
        elif step['type'] != CHECK:
            if 'transforms' in step:
                step = dict(step, transforms=without_check(step['transforms']))
            kept.append(step)
    return kept


@functools.lru_cache()
def loaded(config):
    """A shipped config, read once (callers copy what they change)."""
    return load_config(os.path.join(REPO, config))


def dataset_cfg(config, pipeline_key):
    """A copy of the dataset config of ``pipeline_key`` (a dataloader, or
    ``tta_pipeline`` on the validation dataset), with the config's
    codebase scope made the default."""
    cfg = loaded(config)
    register_scope(cfg)
    loader = 'val_dataloader' if pipeline_key == 'tta_pipeline' \
        else pipeline_key
    dataset = copy.deepcopy(cfg[loader].dataset)
    if pipeline_key == 'tta_pipeline':
        dataset.pipeline = copy.deepcopy(cfg.tta_pipeline)
    return dataset


def build(dataset, checked=True):
    from mmengine.registry import DATASETS
    if not checked:
        dataset = dict(dataset, pipeline=without_check(dataset['pipeline']))
    return DATASETS.build(dataset)


def voc_dataset(config, pipeline_key, root, split, checked=True):
    dataset = dataset_cfg(config, pipeline_key)
    dataset.update(
        type='PascalVOCDataset',
        data_root=root,
        data_prefix=dict(
            img_path='JPEGImages', seg_map_path='SegmentationClass'),
        ann_file=f'ImageSets/Segmentation/{split}.txt',
        # As ADE20KDataset, which the configs' LoadAnnotations expect.
        reduce_zero_label=True)
    return build(dataset, checked)


def coco_dataset(config, pipeline_key, root, checked=True):
    dataset = dataset_cfg(config, pipeline_key)
    dataset.data_root = os.path.join(root, '')
    return build(dataset, checked)


def index_of(dataset, img_id):
    return next(
        i for i in range(len(dataset))
        if dataset.get_data_info(i)['img_id'] == img_id)


def load_seeded(dataset, index):
    """``dataset[index]`` with the generators the transforms draw from
    seeded, so that two pipelines draw the same augmentation."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return dataset[index]


def plain(value):
    """A packed sample as nested dicts, lists and numpy arrays."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, BaseDataElement):
        return dict(
            metainfo=plain(value.metainfo),
            fields={
                key: plain(field)
                for key, field in value.items()
            })
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if hasattr(value, 'tensor'):  # mmdet's boxes
        return plain(value.tensor)
    if hasattr(value, 'masks'):  # mmdet's BitmapMasks
        return plain(value.masks)
    return value


def assert_same_sample(checked, unchecked):
    assert checked['inputs'] is not None
    np.testing.assert_equal(plain(checked), plain(unchecked))


@pytest.mark.parametrize('config', SEG_CONFIGS + DET_CONFIGS + [CASCADE])
def test_configs_check_where_the_data_enter(config):
    """Segmentation: right after LoadAnnotations; detection: right after
    the image is loaded (before LoadAnnotations draws the masks)."""
    cfg = loaded(config)
    after = 'LoadAnnotations' if config in SEG_CONFIGS else 'LoadImageFrom'
    pipelines = {key: cfg[key].dataset.pipeline for key in LOADERS}
    if 'tta_pipeline' in cfg:
        alternatives = cfg.tta_pipeline[1].transforms
        pipelines['tta_pipeline'] = [steps[0] for steps in alternatives]
    for key, pipeline in pipelines.items():
        types = [step['type'] for step in pipeline]
        assert types.count(CHECK) == 1, key
        assert types[types.index(CHECK) - 1].startswith(after), key


@pytest.mark.parametrize('pipeline_key', LOADERS + ['tta_pipeline'])
@pytest.mark.parametrize('config', SEG_CONFIGS)
def test_matching_label_maps_load_unchanged(config, pipeline_key, voc):
    checked = voc_dataset(config, pipeline_key, voc, 'matching')
    unchecked = voc_dataset(config, pipeline_key, voc, 'matching', False)
    assert CHECK in repr(checked.pipeline)
    assert CHECK not in repr(unchecked.pipeline)
    assert_same_sample(load_seeded(checked, 0), load_seeded(unchecked, 0))


@pytest.mark.parametrize('pipeline_key', LOADERS + ['tta_pipeline'])
@pytest.mark.parametrize('config', SEG_CONFIGS)
def test_half_size_label_map_is_refused(config, pipeline_key, voc):
    dataset = voc_dataset(config, pipeline_key, voc, 'mismatched')
    skipped = LoadImageFromFileOrSkip.skipped
    with pytest.raises(ValueError) as error:
        dataset[0]
    message = str(error.value)
    for text in ('JPEGImages/2007_000002.jpg',
                 'SegmentationClass/2007_000002.png', '48 x 64', '24 x 32',
                 'nearest-neighbour'):
        assert text in message
    # Refused, not skipped as an unreadable image.
    assert LoadImageFromFileOrSkip.skipped == skipped


@pytest.mark.parametrize('pipeline_key', LOADERS)
@pytest.mark.parametrize('config', DET_CONFIGS)
def test_images_of_the_recorded_size_load_unchanged(config, pipeline_key,
                                                    coco):
    checked = coco_dataset(config, pipeline_key, coco)
    unchecked = coco_dataset(config, pipeline_key, coco, False)
    assert CHECK in repr(checked.pipeline)
    index = index_of(checked, 2)
    sample = load_seeded(checked, index)
    assert len(sample['data_samples'].gt_instances) > 0
    assert_same_sample(sample, load_seeded(unchecked, index))


@pytest.mark.parametrize('pipeline_key', LOADERS)
@pytest.mark.parametrize('config', DET_CONFIGS)
def test_image_of_another_size_than_recorded_is_refused(
        config, pipeline_key, coco):
    dataset = coco_dataset(config, pipeline_key, coco)
    split = 'train2017' if pipeline_key == 'train_dataloader' else 'val2017'
    skipped = LoadImageFromFileOrSkip.skipped
    with pytest.raises(ValueError) as error:
        dataset[index_of(dataset, 1)]
    message = str(error.value)
    for text in (f'{split}/synthetic_{split}_00000.jpg', 'id 1', '64 x 85',
                 '32 x 42', 'set height to 32 and width to 42'):
        assert text in message
    assert LoadImageFromFileOrSkip.skipped == skipped


def test_crowd_region_of_the_recorded_size_is_refused_before_loading(
        coco_with_crowd):
    """Why the detection configs check before LoadAnnotations: it decodes
    the RLE at its recorded size and stacks it with the polygon masks it
    draws at the image's, which numpy refuses without naming the file."""
    config = DET_CONFIGS[1]
    unchecked = coco_dataset(config, 'train_dataloader', coco_with_crowd,
                             False)
    with pytest.raises(
            ValueError, match='all input arrays must have the '
            'same shape'):
        unchecked[index_of(unchecked, 1)]
    checked = coco_dataset(config, 'train_dataloader', coco_with_crowd)
    with pytest.raises(
            ValueError,
            match=r"synthetic_train2017_00000\.jpg"
            r"' \(its images entry with id 1\) as 64 x 85"):
        checked[index_of(checked, 1)]


def test_check_before_the_image_is_loaded_is_refused():
    with pytest.raises(ValueError, match='after the image loading step'):
        CheckAnnotationSize()(dict(img_path='a.jpg', height=4, width=4))


def test_colour_label_map_is_compared_by_height_and_width():
    results = dict(
        img_path='a.jpg',
        seg_map_path='a.png',
        ori_shape=(4, 6),
        gt_seg_map=np.zeros((4, 6, 3), np.uint8))
    assert CheckAnnotationSize()(results) is results
    results['gt_seg_map'] = np.zeros((6, 4, 3), np.uint8)
    with pytest.raises(
            ValueError, match=r"'a\.png' is 6 x 4 .*'a\.jpg' is "
            r'4 x 6'):
        CheckAnnotationSize()(results)
