from .checkpoint import (convert_official_keys, convert_official_state_dict,
                         fit_backbone_weights, is_official_layout,
                         prepare_backbone_state_dict)

__all__ = [
    'convert_official_keys', 'convert_official_state_dict',
    'fit_backbone_weights', 'is_official_layout', 'prepare_backbone_state_dict'
]
