from .checkpoint import (convert_official_keys, is_official_layout,
                         load_backbone_state_dict)
from .layer_groups import fcaformer_layer_id

__all__ = [
    'convert_official_keys', 'is_official_layout', 'load_backbone_state_dict',
    'fcaformer_layer_id'
]
