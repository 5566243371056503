"""Small synthetic data sets on disk and the config overrides that train
on them on a CPU, for tests and tryouts (as ``mmdet.testing``)."""
from .synthetic import (ade20k_cpu_overrides, coco_cpu_overrides,
                        make_synthetic_ade20k, make_synthetic_coco,
                        make_synthetic_imagenet)

__all__ = [
    'make_synthetic_ade20k', 'make_synthetic_coco', 'make_synthetic_imagenet',
    'ade20k_cpu_overrides', 'coco_cpu_overrides'
]
