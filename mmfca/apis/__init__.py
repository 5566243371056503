"""Entry points: the train and test tools as functions, and config
loading."""
from .config import build_model, load_config, register_scope
from .train_test import test, train

__all__ = ['train', 'test', 'load_config', 'register_scope', 'build_model']
