"""The arch table of FcaFormer and the checks of its settings.

`FcaFormer <https://arxiv.org/abs/2211.07198>`_ (Zhang et al., ICCV 2023) is
a hybrid backbone: a convolutional stem and two ConvNeXt stages, then two
stages whose blocks also attend to the *cross tokens* made by the earlier
blocks of the same stage. Its plain variant, L0, is DeiT-Tiny with those
blocks. :data:`FCAFORMER_ARCHS` is the one list of the paper's models:
both front ends, the converter and the tests read it.
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import torch.nn as nn
from timm.layers import trunc_normal_

#: The paper's models. The hybrids ('l1' to 'l4') have a conv stem, two
#: ConvNeXt stages (their ``num_heads`` are unused) and two FcaFormer
#: stages; 'l0' is the plain model of the paper's Table 1, DeiT-Tiny's
#: layout (16x16 patches, 192 channels, 12 blocks, 3 heads) with FcaBlocks.
#: ``decay_layers`` is a hybrid's number of layer-wise decay depths
#: (:func:`mmfca.models.names.layer_depth`): the official detection
#: recipe's 6, twice that for the archs with 12 blocks in stage 3.
FCAFORMER_ARCHS: Dict[str, Dict[str, Union[int, Tuple[int, ...]]]] = {
    'l0':
    dict(channels=(192, ), depths=(12, ), num_heads=(3, ), patch_size=16),
    'l1':
    dict(
        channels=(64, 128, 192, 320),
        depths=(2, 2, 6, 2),
        num_heads=(0, 0, 6, 10),
        decay_layers=6),
    'l2':
    dict(
        channels=(96, 192, 320, 480),
        depths=(2, 2, 7, 2),
        num_heads=(0, 0, 10, 15),
        decay_layers=6),
    'l3':
    dict(
        channels=(96, 192, 320, 512),
        depths=(3, 6, 12, 3),
        num_heads=(0, 0, 10, 16),
        decay_layers=12),
    'l4':
    dict(
        channels=(128, 256, 512, 768),
        depths=(3, 6, 12, 3),
        num_heads=(0, 0, 16, 24),
        decay_layers=12),
}
HYBRID_STAGES = 4
HYBRID_CONV_STAGES = 2


def parse_arch(arch: Union[str, dict]) -> dict:
    """Check an arch name or dict and return its settings.

    Args:
        arch (str | dict): A key of :data:`FCAFORMER_ARCHS`
            (case-insensitive), or a dict with ``channels``, ``depths`` and
            ``num_heads`` (4 entries each for a hybrid, and optionally
            ``decay_layers``, 6 by default; one per stage plus
            ``patch_size`` for a plain model).

    Returns:
        dict: ``channels``, ``depths``, ``num_heads`` as int tuples, and
        ``decay_layers`` for a hybrid or ``patch_size`` for a plain model.
    """
    if isinstance(arch, str):
        key = arch.lower()
        if key not in FCAFORMER_ARCHS:
            raise ValueError(
                f'Unknown FcaFormer arch {arch!r}. Choose one of '
                f'{sorted(FCAFORMER_ARCHS)} or pass a dict with "channels", '
                f'"depths" and "num_heads".')
        return dict(FCAFORMER_ARCHS[key])
    if not isinstance(arch, dict):
        raise TypeError(
            f'arch must be a str or a dict, got {type(arch).__name__}.')
    needed = {'channels', 'depths', 'num_heads'}
    plain = 'patch_size' in arch
    optional = {'patch_size'} if plain else {'decay_layers'}
    if not needed <= set(arch) <= needed | optional:
        raise ValueError(
            f'A custom FcaFormer arch needs exactly the keys {sorted(needed)}'
            f' (plus "patch_size" for a plain model, optionally '
            f'"decay_layers" for a hybrid), got {sorted(arch)}.')
    settings = {k: tuple(int(v) for v in arch[k]) for k in needed}
    stages = len(settings['depths']) if plain else HYBRID_STAGES
    for key, values in settings.items():
        if len(values) != stages:
            raise ValueError(
                f'arch["{key}"] needs {stages} entries, got {values}.')
    if plain:
        settings['patch_size'] = int(arch['patch_size'])
    else:
        settings['decay_layers'] = int(arch.get('decay_layers', 6))
    for i in range(0 if plain else HYBRID_CONV_STAGES, stages):
        width, heads = settings['channels'][i], settings['num_heads'][i]
        if heads <= 0 or width % heads:
            raise ValueError(
                f'Stage {i}: {width} channels cannot be split into {heads} '
                f'attention heads; choose num_heads that divides the '
                f'channels.')
    return settings


def is_plain(arch_settings: dict) -> bool:
    """Whether an arch is a plain model (a patch embedding, a class token
    and FcaBlocks only, as 'l0'): the one test every front end asks."""
    return bool(arch_settings.get('patch_size'))


def num_conv_stages(arch_settings: dict) -> int:
    """ConvNeXt stages of an arch: 0 for a plain model."""
    return 0 if is_plain(arch_settings) else HYBRID_CONV_STAGES


def parse_window_size(arch_settings: dict,
                      window_size: Optional[Union[int, Sequence[int]]] = None
                      ) -> Tuple[int, ...]:
    """One attention window side per FcaFormer stage.

    Args:
        arch_settings (dict): From :func:`parse_arch`.
        window_size (int | Sequence[int], optional): The windows; None gives
            the feature sizes of 224x224 pretraining, under which pretrained
            bias tables load unchanged.
    """
    count = len(arch_settings['depths']) - num_conv_stages(arch_settings)
    if window_size is None:
        stride = arch_settings.get('patch_size') or 16
        window_size = tuple(224 // (stride * 2**i) for i in range(count))
    if isinstance(window_size, int):
        window_size = (window_size, ) * count
    window_size = tuple(window_size)
    if len(window_size) != count or any(not isinstance(w, int) or w < 1
                                        for w in window_size):
        raise ValueError(
            f'window_size must be a positive int or {count} of them (one per '
            f'FcaFormer stage), got {window_size}.')
    return window_size


def check_rates(drop_path_rate: float, mlp_ratio: float) -> None:
    """Refuse, where a model is built, settings that would fail only at the
    first training step or build empty layers.

    Args:
        drop_path_rate (float): Stochastic depth of the last block, a
            probability in [0, 1).
        mlp_ratio (float): FFN hidden / embed channels, positive.
    """
    if not 0 <= drop_path_rate < 1:
        raise ValueError(
            f'drop_path_rate is the probability of dropping the last '
            f'block\'s branch and must be in [0, 1), got {drop_path_rate}. '
            f'The official recipes use 0.1 (L2) to 0.4 (L4).')
    if not mlp_ratio > 0:
        raise ValueError(
            f'mlp_ratio (FFN hidden / embed channels) must be positive, got '
            f'{mlp_ratio}; FcaFormer uses 4.')


def init_fcaformer_weights(module: nn.Module) -> None:
    """The official initialisation, for ``model.apply``: truncated normal
    (std 0.02) for conv and linear weights, zero biases, unit LayerNorms.
    BatchNorm layers keep PyTorch's (weight 1, bias 0).

    :class:`~mmfca.models.FcaFormer` states the same as its
    ``default_init_cfg``, in mmengine's terms.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        trunc_normal_(module.weight, std=.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
