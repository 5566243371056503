from .synthetic import (make_synthetic_ade20k, make_synthetic_coco,
                        make_synthetic_imagenet)

__all__ = [
    'make_synthetic_ade20k', 'make_synthetic_coco', 'make_synthetic_imagenet'
]
