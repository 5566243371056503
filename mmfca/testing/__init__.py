"""Small synthetic data sets on disk, which the configs in
``configs/synthetic/`` train on in minutes on a CPU, for tests and tryouts
(as ``mmdet.testing``)."""
from .synthetic import (make_synthetic_ade20k, make_synthetic_coco,
                        make_synthetic_imagenet, synthetic_data_overrides)

__all__ = [
    'make_synthetic_ade20k', 'make_synthetic_coco', 'make_synthetic_imagenet',
    'synthetic_data_overrides'
]
