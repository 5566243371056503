"""Hooks that make training runs safe to interrupt and quick to fail.

:class:`~mmfca.engine.runner.ReliableRunner` installs all four; with the
stock Runner they can be listed in ``custom_hooks`` (and the checkpoint hook
in ``default_hooks.checkpoint``).
"""
from .checkpoint_hook import SafeCheckpointHook
from .guard_hooks import LabelRangeHook, NonFiniteLossHook
from .rng_state_hook import RNGStateHook

__all__ = [
    'SafeCheckpointHook', 'RNGStateHook', 'NonFiniteLossHook',
    'LabelRangeHook'
]
