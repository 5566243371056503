"""Register mmfca's modules with every installed OpenMMLab codebase.

mmpretrain, mmsegmentation and mmdetection each keep their own ``MODELS``
registry (children of mmengine's root registry); a config resolves
``type='FcaFormer'`` in the registry of its ``default_scope``. The same class
is registered in each, so one backbone serves all three. A codebase that is
not installed is skipped.
"""
import importlib

CODEBASES = ('mmpretrain', 'mmseg', 'mmdet')


def installed_model_registries() -> dict:
    """``{scope: MODELS}`` for the codebases that can be imported."""
    registries = {}
    for scope in CODEBASES:
        try:
            module = importlib.import_module(f'{scope}.registry')
        except ImportError:
            continue
        registries[scope] = module.MODELS
    return registries


def register_models(modules: dict) -> None:
    """Register ``{name: class}`` in the MODELS registry of every codebase.

    Args:
        modules (dict): Registry names and the classes they stand for.
    """
    for registry in installed_model_registries().values():
        for name, module in modules.items():
            registry.register_module(name=name, module=module, force=True)
