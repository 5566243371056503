from .fcaformer_layers import (FCAFORMER_ARCHS, ConvBN, FcaBlock, FcaStage,
                               ForwardCrossAttention, add_class_token,
                               build_fcaformer_layers, fold_for_inference,
                               init_fcaformer_weights, num_conv_stages,
                               parse_arch, parse_window_size,
                               set_grad_checkpointing, symbolic_shapes)

__all__ = [
    'FCAFORMER_ARCHS', 'ConvBN', 'FcaBlock', 'FcaStage',
    'ForwardCrossAttention', 'add_class_token', 'build_fcaformer_layers',
    'fold_for_inference', 'init_fcaformer_weights', 'num_conv_stages',
    'parse_arch', 'parse_window_size', 'set_grad_checkpointing',
    'symbolic_shapes'
]
