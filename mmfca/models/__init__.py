from .backbones import FcaFormer

__all__ = ['FcaFormer']
