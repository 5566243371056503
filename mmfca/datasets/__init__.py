from .synthetic import (ade20k_cpu_overrides, coco_cpu_overrides,
                        make_synthetic_ade20k, make_synthetic_coco,
                        make_synthetic_imagenet)
from .transforms import LoadImageFromFileOrSkip

__all__ = [
    'make_synthetic_ade20k', 'make_synthetic_coco', 'make_synthetic_imagenet',
    'ade20k_cpu_overrides', 'coco_cpu_overrides', 'LoadImageFromFileOrSkip'
]
