from .fcaformer import FcaFormer

__all__ = ['FcaFormer']
