"""FcaFormer models.

The core (:mod:`mmfca.models.layers`, :mod:`mmfca.models.utils`) and the
timm classifiers (:mod:`mmfca.models.timm_models`) need torch and timm
alone. :class:`FcaFormer`, the OpenMMLab backbone, needs mmengine and mmcv;
it is imported when first asked for, and a missing package is named then.
"""
import importlib
from typing import Any

__all__ = ['FcaFormer']


def __getattr__(name: str) -> Any:
    if name != 'FcaFormer':
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    from ..openmmlab import require_openmmlab
    require_openmmlab('the OpenMMLab backbone mmfca.models.FcaFormer')
    return importlib.import_module('.backbones', __name__).FcaFormer
