"""The FcaFormer model core: plain ``nn.Module``\\ s on torch and timm alone,
shared by the timm classifiers (:mod:`mmfca.models.timm_models`) and the
OpenMMLab backbone (:class:`mmfca.models.FcaFormer`).

========================  ==============================================
:mod:`.arch`              the arch table and the checks of the settings
:mod:`.attention`         forward cross attention and its bias tables
:mod:`.blocks`            stem, transitions, ConvNeXt block, FcaBlock
:mod:`.windows`           token / map conversions, (padded) windows
:mod:`.stage`             the FcaFormer stage and the layer builder
:mod:`.heads`             widened dense outputs, DeiT's class token
:mod:`.fast_paths`        the CPU fast paths and their one switch
:mod:`.deploy`            deploy mode (folded conv-BN, fixed masks)
:mod:`.tracing`           whether a forward is run or recorded
========================  ==============================================

The modules take timm-style arguments (``norm_layer`` callables), script
with TorchScript and trace with ``torch.fx``, so timm's tooling works on
them.
"""
from .arch import (FCAFORMER_ARCHS, init_fcaformer_weights, is_plain,
                   num_conv_stages, parse_arch, parse_window_size)
from .attention import ForwardCrossAttention
from .blocks import ConvBN, ConvNeXtBlock, FcaBlock, FeedForward
from .deploy import fold_for_inference, onnx_export_form
from .fast_paths import fast_paths_enabled, set_fast_paths, use_fast_paths
from .heads import OutputProjection, add_class_token
from .stage import FcaStage, build_fcaformer_layers, set_grad_checkpointing
from .tracing import symbolic_shapes
from .windows import grid_to_map, map_to_grid

__all__ = [
    'FCAFORMER_ARCHS', 'init_fcaformer_weights', 'is_plain', 'num_conv_stages',
    'parse_arch', 'parse_window_size', 'ForwardCrossAttention', 'ConvBN',
    'ConvNeXtBlock', 'FcaBlock', 'FeedForward', 'fold_for_inference',
    'onnx_export_form', 'fast_paths_enabled', 'set_fast_paths',
    'use_fast_paths', 'OutputProjection', 'add_class_token', 'FcaStage',
    'build_fcaformer_layers', 'set_grad_checkpointing', 'symbolic_shapes',
    'grid_to_map', 'map_to_grid'
]
