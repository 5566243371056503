"""Small synthetic datasets in the standard on-disk layouts.

They let the whole train -> test cycle run on a CPU in minutes, through the
codebases' real dataset classes, pipelines and metrics.
"""
import json
import os
from typing import Dict, List

import cv2
import numpy as np

# ADE20K label values (1-based; 0 is "other" and is ignored) used by the
# synthetic scenes: a textured background and four kinds of shapes.
SYNTHETIC_ADE_LABELS = {
    'background': 1,  # wall
    'rectangle': 2,  # building
    'ellipse': 3,  # sky
    'triangle': 4,  # floor
    'cross': 5,  # tree
}
_COLOURS = {
    2: (200, 60, 40),
    3: (40, 170, 220),
    4: (60, 200, 70),
    5: (220, 200, 40),
}


def _draw_shape(image, label_map, kind, rng, size):
    height, width = size
    cy, cx = rng.integers(height // 6, height * 5 //
                          6), rng.integers(width // 6, width * 5 // 6)
    ry = int(rng.integers(height // 10, height // 4))
    rx = int(rng.integers(width // 10, width // 4))
    mask = np.zeros((height, width), np.uint8)
    if kind == 2:
        cv2.rectangle(mask, (cx - rx, cy - ry), (cx + rx, cy + ry), 1, -1)
    elif kind == 3:
        cv2.ellipse(mask, (int(cx), int(cy)), (rx, ry), 0, 0, 360, 1, -1)
    elif kind == 4:
        points = np.array([[cx, cy - ry], [cx - rx, cy + ry],
                           [cx + rx, cy + ry]], np.int32)
        cv2.fillPoly(mask, [points], 1)
    else:
        thick = max(2, min(rx, ry) // 3)
        cv2.rectangle(mask, (cx - rx, cy - thick), (cx + rx, cy + thick), 1,
                      -1)
        cv2.rectangle(mask, (cx - thick, cy - ry), (cx + thick, cy + ry), 1,
                      -1)
    colour = np.array(_COLOURS[kind], np.float32)
    noise = rng.normal(0, 18, (height, width, 3))
    region = mask.astype(bool)
    image[region] = np.clip(colour + noise[region], 0, 255)
    label_map[region] = kind


def _background(rng, size) -> np.ndarray:
    """A random flat colour with slanted stripes and noise (float)."""
    height, width = size
    base = rng.uniform(60, 140, 3)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    period = rng.uniform(6, 14)
    stripes = 25 * np.sin((xx + yy * rng.uniform(-1, 1)) / period)
    return base[None, None, :] + stripes[..., None] + rng.normal(
        0, 12, (height, width, 3))


def _scene(rng, size):
    height, width = size
    image = _background(rng, size)
    label_map = np.full((height, width), SYNTHETIC_ADE_LABELS['background'],
                        np.uint8)
    for kind in rng.choice([2, 3, 4, 5], size=rng.integers(1, 4)):
        _draw_shape(image, label_map, int(kind), rng, size)
    return np.clip(image, 0, 255).astype(np.uint8), label_map


def make_synthetic_ade20k(root: str,
                          num_train: int = 40,
                          num_val: int = 10,
                          size: int = 128,
                          seed: int = 0) -> Dict[str, int]:
    """Write a small dataset in the ADEChallengeData2016 layout.

    ``root/images/{training,validation}/*.jpg`` and
    ``root/annotations/{training,validation}/*.png``, with ADE20K label
    values (0 ignored; see :data:`SYNTHETIC_ADE_LABELS`), readable by mmseg's
    ``ADE20KDataset`` with ``reduce_zero_label=True``.

    Args:
        root (str): Dataset root (use it as ``data_root``).
        num_train (int): Training images. Defaults to 40.
        num_val (int): Validation images. Defaults to 10.
        size (int): Image side (images are size x 4/3 size). Defaults to 128.
        seed (int): Random seed. Defaults to 0.

    Returns:
        dict: Images written per split.
    """
    rng = np.random.default_rng(seed)
    shape = (size, size * 4 // 3)
    counts = {}
    for split, count in (('training', num_train), ('validation', num_val)):
        image_dir = os.path.join(root, 'images', split)
        label_dir = os.path.join(root, 'annotations', split)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for i in range(count):
            image, label_map = _scene(rng, shape)
            name = f'synthetic_{split}_{i:05d}'
            cv2.imwrite(os.path.join(image_dir, name + '.jpg'), image)
            cv2.imwrite(os.path.join(label_dir, name + '.png'), label_map)
        counts[split] = count
    return counts


# The 80 COCO category ids (1-90 with gaps), in the order of the names of
# mmdet's CocoDataset.
COCO_CATEGORY_IDS = [
    i for i in range(1, 91)
    if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
]

# COCO categories the synthetic detection scenes draw (real COCO ids and
# names, so the configs' 80-class metadata applies unchanged).
SYNTHETIC_COCO_CATEGORIES = {
    1: ('person', 2),  # drawn as rectangles
    3: ('car', 3),  # ellipses
    18: ('dog', 4),  # triangles
}


def _polygon_of(mask: np.ndarray) -> list:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    contour = max(contours, key=cv2.contourArea)
    return [float(v) for v in contour.reshape(-1)]


def _coco_split(rng, count, shape, image_dir, split, first_ann_id):
    images, annotations = [], []
    ann_id = first_ann_id
    for i in range(count):
        image_id = i + 1
        name = f'synthetic_{split}_{i:05d}.jpg'
        height, width = shape
        # Every fifth image is empty: no objects, no annotations.
        num_objects = 0 if i % 5 == 4 else int(rng.integers(1, 4))
        image = _background(rng, shape)
        for j in range(num_objects):
            cat_id = int(rng.choice(list(SYNTHETIC_COCO_CATEGORIES)))
            kind = SYNTHETIC_COCO_CATEGORIES[cat_id][1]
            label_map = np.zeros((height, width), np.uint8)
            _draw_shape(image, label_map, kind, rng, shape)
            mask = (label_map == kind).astype(np.uint8)
            if mask.sum() < 16:
                continue
            x, y, w, h = cv2.boundingRect(mask)
            annotations.append(
                dict(
                    id=ann_id,
                    image_id=image_id,
                    category_id=cat_id,
                    segmentation=[_polygon_of(mask)],
                    area=float(mask.sum()),
                    bbox=[float(x), float(y),
                          float(w), float(h)],
                    # Now and then a crowd region, as COCO has.
                    iscrowd=int(j == 2)))
            ann_id += 1
        cv2.imwrite(
            os.path.join(image_dir, name),
            np.clip(image, 0, 255).astype(np.uint8))
        images.append(
            dict(id=image_id, file_name=name, height=height, width=width))
    return images, annotations, ann_id


def make_synthetic_coco(root: str,
                        num_train: int = 40,
                        num_val: int = 10,
                        size: int = 128,
                        seed: int = 0) -> Dict[str, int]:
    """Write a small instance-segmentation dataset in the COCO 2017 layout.

    ``root/{train2017,val2017}/*.jpg`` and
    ``root/annotations/instances_{train2017,val2017}.json`` with polygon
    masks of three COCO categories (see :data:`SYNTHETIC_COCO_CATEGORIES`),
    some crowd regions and some images without objects, readable by
    mmdet's ``CocoDataset`` and scored by pycocotools. The files list all
    80 COCO categories, as COCO's do, so 80-class models need no change.

    Args:
        root (str): Dataset root (use it as ``data_root``).
        num_train (int): Training images. Defaults to 40.
        num_val (int): Validation images. Defaults to 10.
        size (int): Image height (width is 4/3 of it). Defaults to 128.
        seed (int): Random seed. Defaults to 0.

    Returns:
        dict: Annotations written per split.
    """
    from mmdet.datasets import CocoDataset
    rng = np.random.default_rng(seed)
    shape = (size, size * 4 // 3)
    categories = [
        dict(id=cat_id, name=name,
             supercategory='coco') for cat_id, name in zip(
                 COCO_CATEGORY_IDS, CocoDataset.METAINFO['classes'])
    ]
    os.makedirs(os.path.join(root, 'annotations'), exist_ok=True)
    counts, ann_id = {}, 1
    for split, count in (('train2017', num_train), ('val2017', num_val)):
        image_dir = os.path.join(root, split)
        os.makedirs(image_dir, exist_ok=True)
        images, annotations, ann_id = _coco_split(rng, count, shape, image_dir,
                                                  split, ann_id)
        with open(
                os.path.join(root, 'annotations', f'instances_{split}.json'),
                'w') as file:
            json.dump(
                dict(
                    images=images,
                    annotations=annotations,
                    categories=categories), file)
        counts[split] = len(annotations)
    return counts


# ImageNet classes the synthetic classification images stand for (their
# indices in ImageNet-1k, so 1000-class heads need no change) and the shape
# drawn for each.
SYNTHETIC_IMAGENET_CLASSES = {0: 2, 1: 3, 2: 4, 3: 5}


def make_synthetic_imagenet(root: str,
                            num_train: int = 32,
                            num_val: int = 8,
                            size: int = 96,
                            seed: int = 0) -> Dict[str, int]:
    """Write a small classification dataset in mmpretrain's ImageNet layout.

    ``root/{train,val}/<class folder>/*.JPEG`` and ``root/meta/{train,val}
    .txt`` ("relative/path label" per line), readable by mmpretrain's
    ``ImageNet`` dataset with ``data_root=root``. Each image shows one shape
    whose kind is the label (four classes, ImageNet indices 0-3).

    Args:
        root (str): Dataset root (use it as ``data_root``).
        num_train (int): Training images. Defaults to 32.
        num_val (int): Validation images. Defaults to 8.
        size (int): Image side. Defaults to 96.
        seed (int): Random seed. Defaults to 0.

    Returns:
        dict: Images written per split.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, 'meta'), exist_ok=True)
    counts = {}
    for split, count in (('train', num_train), ('val', num_val)):
        lines = []
        for i in range(count):
            label = i % len(SYNTHETIC_IMAGENET_CLASSES)
            folder = f'class_{label:04d}'
            os.makedirs(os.path.join(root, split, folder), exist_ok=True)
            image = _background(rng, (size, size))
            _draw_shape(image, np.zeros((size, size), np.uint8),
                        SYNTHETIC_IMAGENET_CLASSES[label], rng, (size, size))
            name = f'{folder}/synthetic_{split}_{i:05d}.JPEG'
            cv2.imwrite(
                os.path.join(root, split, name),
                np.clip(image, 0, 255).astype(np.uint8))
            lines.append(f'{name} {label}')
        with open(os.path.join(root, 'meta', f'{split}.txt'), 'w') as file:
            file.write('\n'.join(lines) + '\n')
        counts[split] = count
    return counts


def synthetic_data_overrides(dataset: str, root: str) -> List[str]:
    """``--cfg-options`` that point a ``configs/synthetic/`` config at
    synthetic data written to ``root`` instead of its default location.

    The synthetic configs read ``data/synthetic_ade``,
    ``data/synthetic_coco`` and ``data/synthetic_imagenet``, where
    ``tools/dataset_converters/make_synthetic_data.py`` writes by default;
    these options move the train, val and test datasets (and the COCO
    annotation file of the evaluators) to ``root``, and change nothing
    else.

    Args:
        dataset (str): 'ade20k', 'coco' or 'imagenet', the layout written
            by :func:`make_synthetic_ade20k`, :func:`make_synthetic_coco`
            or :func:`make_synthetic_imagenet`.
        root (str): The dataset root.

    Returns:
        list[str]: ``key=value`` strings for ``--cfg-options``.
    """
    if dataset not in ('ade20k', 'coco', 'imagenet'):
        raise ValueError(f"dataset must be 'ade20k', 'coco' or 'imagenet', "
                         f'got {dataset!r}.')
    # mmdet joins data_root and the relative paths without a separator.
    data_root = os.path.join(root, '') if dataset == 'coco' else root
    options = [
        f'{split}_dataloader.dataset.data_root={data_root}'
        for split in ('train', 'val', 'test')
    ]
    if dataset == 'coco':
        ann_file = os.path.join(root, 'annotations', 'instances_val2017.json')
        options += [
            f'{split}_evaluator.ann_file={ann_file}'
            for split in ('val', 'test')
        ]
    return options
