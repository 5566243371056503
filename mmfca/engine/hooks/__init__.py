"""Hooks that make training runs safe to interrupt and quick to fail.

mmfca's configs merge all four into ``default_hooks`` (``mmfca_hooks`` of
``configs/_base_/mmfca_runtime.py``); they work with the stock Runner too.
"""
from .checkpoint_hook import SafeCheckpointHook
from .guard_hooks import LabelRangeHook, NonFiniteLossHook
from .rng_state_hook import RNGStateHook

__all__ = [
    'SafeCheckpointHook', 'RNGStateHook', 'NonFiniteLossHook', 'LabelRangeHook'
]
