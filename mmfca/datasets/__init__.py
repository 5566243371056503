"""Data helpers of the OpenMMLab side: seeded sampling (mmengine), and two
transforms that need mmcv (imported when first asked for, so that the
engine loads where mmcv is missing; :mod:`mmfca.openmmlab` registers them
where it is there)."""
import importlib
from typing import Any

from .seeded_sampling import (SampleIndex, SeededDefaultSampler,
                              SeededInfiniteSampler, SeededSampleDataset)

#: The transforms, which need mmcv, and their modules.
TRANSFORM_MODULES = {
    'CheckAnnotationSize': '.annotation_size',
    'LoadImageFromFileOrSkip': '.transforms',
}

__all__ = [
    'CheckAnnotationSize', 'LoadImageFromFileOrSkip', 'SampleIndex',
    'SeededDefaultSampler', 'SeededInfiniteSampler', 'SeededSampleDataset'
]


def __getattr__(name: str) -> Any:
    if name not in TRANSFORM_MODULES:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    module = importlib.import_module(TRANSFORM_MODULES[name], __name__)
    return getattr(module, name)
