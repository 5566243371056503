"""Config loading and model building for every OpenMMLab codebase.

The tools read a config's ``default_scope`` ('mmpretrain', 'mmseg' or
'mmdet'), register that codebase's modules and build from its registries,
so one set of tools serves classification, segmentation and detection.
"""
import importlib
import os
from typing import Optional

from mmengine.config import Config

SCOPE_MODULES = {
    'mmpretrain': 'mmpretrain.utils',
    'mmseg': 'mmseg.utils',
    'mmdet': 'mmdet.utils',
}


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config file and apply ``--cfg-options`` overrides.

    Args:
        path (str): A config file, or ``scope::path`` for a config shipped
            with mmpretrain, mmseg or mmdet.
        cfg_options (dict, optional): Overrides, as ``--cfg-options``.

    Raises:
        FileNotFoundError: The config file does not exist.
    """
    if '::' in path:
        # A codebase's own config, e.g. 'mmseg::convnext/<name>.py'.
        from mmengine.hub import get_config
        cfg = get_config(path)
    elif not os.path.isfile(path):
        raise FileNotFoundError(
            f'Config file not found: {path!r}. The configs shipped with '
            f'mmfca are in configs/; a codebase\'s own configs are named '
            f'like mmseg::convnext/<config>.py.')
    else:
        cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def register_scope(cfg: Config) -> str:
    """Register the modules of the config's codebase and make its scope
    the default one.

    Returns:
        str: The scope.

    Raises:
        ValueError: The config has no or an unknown ``default_scope``.
    """
    scope = cfg.get('default_scope')
    if scope not in SCOPE_MODULES:
        raise ValueError(
            f'Config default_scope is {scope!r}; mmfca tools serve '
            f'{sorted(SCOPE_MODULES)}. Inherit one of the codebases\' '
            f'default_runtime.py or set default_scope in the config.')
    module = importlib.import_module(SCOPE_MODULES[scope])
    module.register_all_modules(init_default_scope=True)
    importlib.import_module('mmfca')
    return scope


def build_model(cfg: Config):
    """Build ``cfg.model`` in the config's codebase."""
    register_scope(cfg)
    from mmengine.registry import MODELS
    return MODELS.build(cfg.model)
