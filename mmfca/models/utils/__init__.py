from .checkpoint import (FcaFormerPretrainedInit, convert_official_keys,
                         convert_official_state_dict, is_official_layout,
                         prepare_backbone_state_dict)
from .layer_groups import fcaformer_layer_id

__all__ = [
    'FcaFormerPretrainedInit', 'convert_official_keys',
    'convert_official_state_dict', 'is_official_layout',
    'prepare_backbone_state_dict', 'fcaformer_layer_id'
]
