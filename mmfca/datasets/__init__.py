from .synthetic import make_synthetic_ade20k

__all__ = ['make_synthetic_ade20k']
