from .transforms import LoadImageFromFileOrSkip

__all__ = ['LoadImageFromFileOrSkip']
