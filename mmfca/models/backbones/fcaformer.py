"""FcaFormer for mmpretrain, mmsegmentation and mmdetection.

`FcaFormer <https://arxiv.org/abs/2211.07198>`_ (Zhang et al., ICCV 2023) is
a hybrid backbone: a convolutional stem and two ConvNeXt stages, then two
transformer stages whose blocks also attend to the *cross tokens* made by the
earlier blocks of the same stage.

This is the OpenMMLab front end of the model core in
:mod:`mmfca.models.layers`, which the timm classifiers share. One class
serves classification, segmentation and detection.
Attention always runs in square windows (14 in stage 3, 7 in stage 4 by
default): at 224x224 input these windows cover the whole feature map, which
is exactly the ImageNet classifier; for larger or irregular inputs the maps
are padded to whole windows, as the official downstream models do.
"""
import difflib
import inspect
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from timm.layers import LayerNorm2d
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers import (FCAFORMER_ARCHS, OutputProjection, add_class_token,
                      build_fcaformer_layers, fold_for_inference, is_plain,
                      num_conv_stages, parse_arch, parse_window_size,
                      set_grad_checkpointing, symbolic_shapes)
from ..names import layer_depth, num_layer_depths
from ..utils.checkpoint import prepare_backbone_state_dict
from .pretrained_init import FcaFormerPretrainedInit


def bn_layer_from_cfg(norm_cfg: dict):
    """An mmcv ``norm_cfg`` as the ``norm_layer`` callable the layers take.

    Only BatchNorm types are accepted (BN, SyncBN, ...): deploy mode folds
    them into the convolutions, and the weights are named ``bn``.
    """
    _, probe = build_norm_layer(norm_cfg, 8)
    if not isinstance(probe, _BatchNorm):
        raise ValueError(
            f'FcaFormer\'s norm_cfg must be a BatchNorm type (e.g. '
            f'dict(type=\'BN\') or dict(type=\'SyncBN\')), got {norm_cfg}: '
            f'its conv-BN pairs are folded in deploy mode and the '
            f'checkpoints name them "bn".')

    def build(channels: int) -> nn.Module:
        return build_norm_layer(norm_cfg, channels)[1]

    return build


@MODELS.register_module()
class FcaFormer(BaseModule):
    """FcaFormer backbone for classification, segmentation and detection.

    A PyTorch implementation of `FcaFormer: Forward Cross Attention in
    Hybrid Vision Transformer <https://arxiv.org/abs/2211.07198>`_, built to
    load the official ImageNet and downstream weights unchanged.

    Args:
        arch (str | dict): 'l1', 'l2', 'l3' or 'l4' (case-insensitive), or a
            dict with ``channels`` (4 ints), ``depths`` (4 ints) and
            ``num_heads`` (4 ints; the first two, for the ConvNeXt stages,
            are ignored). 'l0' is the paper's plain model, DeiT-Tiny with
            FcaBlocks: a 16x16 patch embedding, DeiT's class token and
            learned position embedding (``cls_token``, ``pos_embed``) and
            one stage of FcaBlocks; it outputs the normalised class token
            (DeiT's head input) and takes images whose patch grid is one
            attention window (224x224 by default). A dict with one entry
            per key and ``patch_size`` builds other plain models. Defaults
            to 'l2'.
        in_channels (int): Input image channels. Defaults to 3.
        window_size (int | Sequence[int], optional): Attention window of
            each FcaFormer stage (stages 3 and 4; the one stage of 'l0').
            Defaults to the feature sizes of 224x224 ImageNet pretraining,
            (14, 7) or (14, ) for 'l0', so pretrained bias tables load
            unchanged.
        out_indices (int | Sequence[int]): Stages to output. Defaults to -1
            (the last).
        out_channels (Sequence[int], optional): If given, every output is
            widened by a 1x1 conv + LayerNorm to these channels (one entry
            per stage), as the official dense models do, e.g.
            ``(96, 192, 384, 768)`` for L2. Defaults to None (a LayerNorm
            per output, no projection).
        gap_before_final_norm (bool): Average-pool each output and apply a
            LayerNorm (the hybrid ImageNet classifiers' final norm; the
            plain model's head reads its class token instead). Defaults to
            False.
        drop_path_rate (float): Stochastic depth rate. Defaults to 0.
        layer_scale_init_value (float): Layer scale init. Defaults to 1e-6.
        mlp_ratio (float): FFN expansion. Defaults to 4.
        norm_cfg (dict): Config of the BN layers (stem, downsampling, TME).
            Defaults to ``dict(type='BN')``.
        frozen_stages (int): Stages to freeze with their downsampling layer
            (stage 0 includes the stem). Defaults to 0.
        norm_eval (bool): Keep BN layers in eval mode while training.
            Defaults to False.
        with_cp (bool): Activation checkpointing per block. Defaults to
            False.
        resize_bias_tables (bool): When loading weights made for other
            windows (e.g. 224 pretraining, then a classifier at 384 with
            ``window_size=(24, 12)``), resize the position and depth bias
            tables and the LSFs bicubically instead of failing. Defaults to
            False.
        init_cfg (dict | list[dict], optional): Initialisation config.
            Defaults to the official initialisation. A
            ``dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')``
            is run by :class:`~.pretrained_init.FcaFormerPretrainedInit`
            after the default initialisation: ``checkpoint`` may be a path,
            a URL or an mmengine storage URI, ``map_location`` works as in
            mmengine, and it accepts official ImageNet checkpoints (add
            ``use_ema=True`` for their EMA weights, or an mmengine
            checkpoint's), official downstream checkpoints and mmfca /
            OpenMMLab checkpoints; ``prefix`` is optional. A checkpoint that
            lacks backbone tensors is refused, except for the output layers
            of a dense backbone started from an ImageNet classifier (logged
            by name); ``strict=False`` loads what matches and logs the rest
            as missing, but a checkpoint that matches nothing is refused
            either way. What was loaded is kept in ``load_report``.

    Every load (``load_state_dict``, mmengine's ``load_checkpoint`` and
    ``load_from``, timm's loader) also takes official key names, resizes
    bias tables with ``resize_bias_tables=True`` and names the arch of
    weights that do not fit: a load-state-dict pre-hook runs
    :func:`~mmfca.models.utils.prepare_backbone_state_dict`.
    """

    #: The paper's archs (see
    #: :data:`~mmfca.models.layers.FCAFORMER_ARCHS`).
    arch_zoo = FCAFORMER_ARCHS
    # The official initialisation: truncated normal for conv and linear
    # weights, unit LayerNorms (BN layers start at weight 1, bias 0).
    default_init_cfg = [
        dict(type='TruncNormal', layer=['Conv2d', 'Linear'], std=.02, bias=0.),
        dict(type='Constant', layer=['LayerNorm'], val=1., bias=0.),
    ]

    @classmethod
    def _unknown_arguments(cls, unknown: dict) -> str:
        """The message for config keys FcaFormer does not take, with the
        closest valid names (a typo in a config otherwise surfaces as a bare
        ``unexpected keyword argument``)."""
        valid = [
            name for name in inspect.signature(cls.__init__).parameters
            if name not in ('self', 'unknown')
        ]
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean '{close[0]}'?" if close else 'unknown'
            hints.append(f"'{name}' ({hint})")
        return (f'FcaFormer got unexpected argument(s) {", ".join(hints)}. '
                f'Its arguments are: {", ".join(valid)}.')

    def __init__(self,
                 arch: Union[str, dict] = 'l2',
                 in_channels: int = 3,
                 window_size: Optional[Union[int, Sequence[int]]] = None,
                 out_indices: Union[int, Sequence[int]] = -1,
                 out_channels: Optional[Sequence[int]] = None,
                 gap_before_final_norm: bool = False,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 mlp_ratio: float = 4.,
                 norm_cfg: dict = dict(type='BN'),
                 frozen_stages: int = 0,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 resize_bias_tables: bool = False,
                 init_cfg: Optional[Union[dict, List[dict]]] = None,
                 **unknown):
        if unknown:
            raise TypeError(self._unknown_arguments(unknown))
        super().__init__(init_cfg=self._with_pretrained_loader(init_cfg))
        self.arch_settings = parse_arch(arch)
        channels = self.arch_settings['channels']
        depths = self.arch_settings['depths']
        self.num_stages = len(depths)
        self.num_conv_stages = num_conv_stages(self.arch_settings)
        # The plain model is a ViT: a class token and absolute positions.
        self.is_plain = is_plain(self.arch_settings)
        if self.is_plain and (gap_before_final_norm
                              or out_channels is not None):
            raise ValueError(
                'The plain FcaFormer (arch with patch_size, e.g. \'l0\') '
                'outputs its class token, as DeiT: leave '
                'gap_before_final_norm=False and out_channels=None.')
        self.channels = channels
        self.in_channels = in_channels
        self.window_size = parse_window_size(self.arch_settings, window_size)
        self.out_indices = self._parse_out_indices(out_indices)
        self.gap_before_final_norm = gap_before_final_norm
        if not 0 <= frozen_stages <= self.num_stages:
            raise ValueError(
                f'frozen_stages counts the stages to freeze (with the stem '
                f'and their downsampling layers), so it must be in [0, '
                f'{self.num_stages}] for this arch, got {frozen_stages}.')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.resize_bias_tables = resize_bias_tables
        self.deploy = False
        if out_channels is not None:
            out_channels = tuple(out_channels)
            if len(out_channels) != self.num_stages:
                raise ValueError(f'out_channels needs one entry per stage '
                                 f'({self.num_stages}), got {out_channels}.')
        self.out_channels = out_channels

        self.downsample_layers, self.stages = build_fcaformer_layers(
            self.arch_settings,
            in_channels=in_channels,
            window_size=self.window_size,
            drop_path_rate=drop_path_rate,
            layer_scale_init_value=layer_scale_init_value,
            mlp_ratio=mlp_ratio,
            norm_layer=bn_layer_from_cfg(norm_cfg))
        set_grad_checkpointing(self.stages, with_cp)
        if self.is_plain:
            grid = self.window_size[0]
            self.cls_token = nn.Parameter(torch.zeros(1, 1, channels[0]))
            self.pos_embed = nn.Parameter(
                torch.zeros(1, 1 + grid * grid, channels[0]))
            # DeiT's initialisation; Pretrained weights replace it.
            nn.init.trunc_normal_(self.cls_token, std=.02)
            nn.init.trunc_normal_(self.pos_embed, std=.02)

        for i in self.out_indices:
            if self.is_plain:
                # DeiT's final norm, on the tokens.
                self.add_module(f'norm{i}',
                                nn.LayerNorm(channels[i], eps=1e-6))
            elif gap_before_final_norm:
                self.add_module(f'norm{i}', nn.LayerNorm(channels[i]))
            elif out_channels is not None:
                self.add_module(f'proj{i}',
                                OutputProjection(channels[i], out_channels[i]))
            else:
                self.add_module(f'norm{i}', LayerNorm2d(channels[i], eps=1e-6))
        self._freeze_stages()
        # As mmpretrain's Swin fits its tables: for every way of loading.
        self._register_load_state_dict_pre_hook(self._prepare_state_dict)

    @classmethod
    def _with_pretrained_loader(cls, init_cfg: Optional[Union[dict,
                                                              List[dict]]]
                                ) -> Union[dict, List[dict]]:
        """The init_cfg that mmengine runs: the default initialisation
        unless another is given, and a ``Pretrained`` entry run by
        :class:`FcaFormerPretrainedInit` after the others. (mmengine runs it
        before the children's ``init_weights``, not after as its own
        ``Pretrained``; FcaFormer's parts initialise nothing themselves.)"""
        if not init_cfg:
            return cls.default_init_cfg
        cfgs = [init_cfg] if isinstance(init_cfg, dict) else list(init_cfg)
        pretrained = [
            dict(cfg, type=FcaFormerPretrainedInit) for cfg in cfgs
            if cfg.get('type') == 'Pretrained'
        ]
        if not pretrained:
            return init_cfg
        others = [cfg for cfg in cfgs if cfg.get('type') != 'Pretrained']
        return (others or cls.default_init_cfg) + pretrained

    def _parse_out_indices(self, out_indices) -> Tuple[int, ...]:
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        parsed = []
        for index in out_indices:
            if not -self.num_stages <= index < self.num_stages:
                raise ValueError(
                    f'out_indices entries must be in [-{self.num_stages}, '
                    f'{self.num_stages - 1}], got {index}.')
            parsed.append(index % self.num_stages)
        return tuple(sorted(set(parsed)))

    def output_module(self, index: int) -> nn.Module:
        """The norm or projection applied to output ``index``."""
        if hasattr(self, f'proj{index}'):
            return getattr(self, f'proj{index}')
        return getattr(self, f'norm{index}')

    def _check_images(self, x: torch.Tensor) -> None:
        """Refuse a batch the stem cannot take, naming the fix (outside
        recorded graphs, whose inputs are symbolic)."""
        if x.dim() != 4:
            raise ValueError(
                f'FcaFormer expects images as a 4-D tensor (N, C, H, W), got '
                f'a {x.dim()}-D tensor of shape {tuple(x.shape)}.')
        if symbolic_shapes():
            return
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f'FcaFormer was built for {self.in_channels} input channels '
                f'but got {x.shape[1]} (input shape {tuple(x.shape)}); set '
                f'in_channels={x.shape[1]} in the backbone config or fix the '
                f'data pipeline.')
        weight = next(self.downsample_layers[0].parameters())
        autocast = torch.amp.is_autocast_available(x.device.type) and \
            torch.is_autocast_enabled(x.device.type)
        if x.dtype != weight.dtype and not autocast:
            raise TypeError(
                f'FcaFormer\'s weights are {weight.dtype} but the images are '
                f'{x.dtype}: convert the batch (x.to({weight.dtype})) or the '
                f'model (model.to({x.dtype})), or run under torch.autocast.')

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        self._check_images(x)
        if self.is_plain:
            return self._forward_plain(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(self.downsample_layers[i](x))
            if i in self.out_indices:
                if self.gap_before_final_norm:
                    outs.append(self.output_module(i)(x.mean((-2, -1))))
                else:
                    outs.append(self.output_module(i)(x))
        return tuple(outs)

    def _forward_plain(self, x: torch.Tensor) -> Tuple[torch.Tensor]:
        """The plain model: patch tokens after the class token, position
        embedding, the blocks on the one window, the normalised class
        token."""
        x = self.downsample_layers[0](x)
        side = self.window_size[0]
        if not symbolic_shapes() and x.shape[-2:] != (side, side):
            patch = self.arch_settings['patch_size']
            raise ValueError(
                f'The plain FcaFormer attends over one {side}x{side} window '
                f'of {patch}x{patch} patches with a position embedding of '
                f'that size, so it takes {side * patch}x{side * patch} '
                f'images; got a {x.shape[-2]}x{x.shape[-1]} patch grid '
                f'(input {tuple(x.shape)}). Resize the images (the ImageNet '
                f'pipelines crop to 224) or build it with window_size equal '
                f'to your patch grid.')
        tokens = add_class_token(x, self.cls_token, self.pos_embed)
        tokens = self.stages[0].run_blocks(tokens)[-1]
        return (self.output_module(0)(tokens[:, 0]), )

    @torch.no_grad()
    def switch_to_deploy(self) -> 'FcaFormer':
        """Prepare for inference, as mmpretrain's LeViT and RepVGG do: fold
        every conv + BatchNorm pair into one convolution, precompute the
        attention bias masks and run the linear layers as oneDNN calls on
        the CPU
        (:func:`~mmfca.models.layers.fold_for_inference`).
        Outputs equal eval-mode outputs (up to float rounding); the model
        can no longer be trained or load checkpoints.

        Returns:
            FcaFormer: ``self``, in eval mode.
        """
        fold_for_inference(self)
        self.deploy = True
        return self

    def get_layer_depth(self,
                        param_name: str,
                        prefix: str = '') -> Tuple[int, int]:
        """Layer depth of a parameter, for mmpretrain's
        ``LearningRateDecayOptimWrapperConstructor``
        (:func:`mmfca.models.names.layer_depth`: the official layer-wise
        groups of the detection recipe over the arch's ``decay_layers``; the
        plain 'l0' has one depth per block).

        Args:
            param_name (str): Parameter name.
            prefix (str): Prefix of the backbone in ``param_name``.

        Returns:
            tuple[int, int]: The depth and the number of depths.
        """
        depths = num_layer_depths(self.arch_settings)
        if not param_name.startswith(prefix):
            return depths + 1, depths + 2
        return layer_depth(param_name[len(prefix):],
                           self.arch_settings), depths + 2

    def _prepare_state_dict(self, state_dict: dict, prefix: str, *args,
                            **kwargs) -> None:
        """Load-state-dict pre-hook: official names, bias tables for other
        windows, weights of another shape (see
        :func:`~mmfca.models.utils.prepare_backbone_state_dict`)."""
        prepare_backbone_state_dict(self, state_dict, prefix)

    def _freeze_stages(self):
        if self.is_plain and self.frozen_stages > 0:
            self.cls_token.requires_grad = False
            self.pos_embed.requires_grad = False
        for i in range(self.frozen_stages):
            for module in (self.downsample_layers[i], self.stages[i]):
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False
            if i in self.out_indices:
                module = self.output_module(i)
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode: bool = True):
        if mode and self.deploy:
            raise RuntimeError(
                'This FcaFormer was switched to deploy mode (BatchNorm '
                'folded into the convolutions, attention masks '
                'precomputed), so it cannot be trained. Build a new model '
                '(and load the weights) to train.')
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self
