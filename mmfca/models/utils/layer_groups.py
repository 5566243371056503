"""Layer groups of FcaFormer parameters for learning-rate decay.

Shared by the segmentation / detection optimiser constructor
(:class:`~mmfca.engine.FcaFormerLearningRateDecayOptimizerConstructor`)
and the backbone's ``get_layer_depth``
(mmpretrain's layer-decay constructor).
"""
import re


def fcaformer_layer_id(name: str, decay_type: str, num_layers: int) -> int:
    """Layer group of a parameter of a model with an FcaFormer backbone.

    Args:
        name (str): Parameter name in the whole model (``backbone.…``).
        decay_type (str): 'stage_wise' or 'layer_wise_cab'.
        num_layers (int): ``paramwise_cfg['num_layers']`` (6 officially).
    """
    top = num_layers + 1
    if not name.startswith('backbone.'):
        return top
    if name.endswith(('attn.cross_scale', 'attn.depth_bias')):
        return 0
    match = re.match(r'backbone\.downsample_layers\.(\d+)\.', name)
    if match:
        index = int(match.group(1))
        if decay_type == 'stage_wise' or index < 2:
            return 0
        return index
    match = re.match(r'backbone\.stages\.(\d+)\.(?:blocks\.)?(\d+)\.', name)
    if match:
        stage, block = int(match.group(1)), int(match.group(2))
        if decay_type == 'stage_wise':
            return stage + 1
        return {0: 1, 1: 2, 2: 3 + block // 3}.get(stage, num_layers)
    return top
