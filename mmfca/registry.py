"""Register mmfca's modules with every installed OpenMMLab codebase.

mmpretrain, mmsegmentation and mmdetection each keep their own registries
(children of mmengine's root registries); a config resolves ``type=...`` in
the registries of its ``default_scope``. The same classes are registered in
each, so one backbone serves all three. A codebase that is not installed is
skipped.
"""
import importlib

CODEBASES = ('mmpretrain', 'mmseg', 'mmdet')


def installed_registries(registry_name: str) -> dict:
    """``{scope: registry}`` for the codebases that can be imported.

    Args:
        registry_name (str): e.g. 'MODELS' or 'OPTIM_WRAPPER_CONSTRUCTORS'.
    """
    registries = {}
    for scope in CODEBASES:
        try:
            module = importlib.import_module(f'{scope}.registry')
        except ImportError:
            continue
        registries[scope] = getattr(module, registry_name)
    return registries


def register_everywhere(registry_name: str, modules: dict) -> None:
    """Register ``{name: class}`` in that registry of every codebase.

    Args:
        registry_name (str): e.g. 'MODELS'.
        modules (dict): Registry names and the classes they stand for.
    """
    for registry in installed_registries(registry_name).values():
        for name, module in modules.items():
            registry.register_module(name=name, module=module, force=True)
