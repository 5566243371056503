"""mmfca: FcaFormer for mmpretrain, mmsegmentation and mmdetection.

``import mmfca`` (or ``custom_imports = dict(imports=['mmfca'])`` in a
config) registers the FcaFormer backbone in the MODELS registry of each
installed codebase and allow-lists mmengine's checkpoint contents for
torch's ``weights_only`` loading.
"""
from . import timm_models  # noqa: F401  registers fcaformer_l1..l4 in timm
from .models import FcaFormer
from .registry import register_models
from .serialization import register_safe_globals
from .version import __version__

register_safe_globals()
register_models({'FcaFormer': FcaFormer})

__all__ = ['FcaFormer', '__version__']
