"""FcaFormer classifiers in timm: ``timm.create_model('fcaformer_l2')``.

After ``import mmfca``, ``fcaformer_l0`` ... ``fcaformer_l4`` are timm models
on the layers the OpenMMLab backbone shares
(:mod:`mmfca.models.layers`). They follow timm's model
contract: ``forward_features`` / ``forward_head``, ``reset_classifier``,
``global_pool``, ``features_only`` (through ``forward_intermediates``),
``prune_intermediate_layers``, ``set_grad_checkpointing``, ``group_matcher``
and ``no_weight_decay``; they script with TorchScript and trace with
``torch.fx``. Official or mmfca weights load through the shared conversion
with ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)`` (timm's
loader takes the EMA weights, ``model_ema``, when the file has them).
"""
from collections import OrderedDict
from contextlib import nullcontext
from functools import partial
from typing import Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d, NormMlpClassifierHead, to_2tuple
from timm.models import (build_model_with_cfg, generate_default_cfgs,
                         register_model)
# Private timm modules (verified with timm 1.0.x).
from timm.models._features import feature_take_indices

from ..utils.serialization import checkpoint_globals
from ..utils.versions import check_verified
from .layers import (FCAFORMER_ARCHS, add_class_token, build_fcaformer_layers,
                     grid_to_map, init_fcaformer_weights, is_plain, parse_arch,
                     parse_window_size, set_grad_checkpointing)
from .names import timm_group_matcher
from .utils.checkpoint import fit_backbone_weights, rename_prefix

Intermediates = Union[List[torch.Tensor], Tuple[torch.Tensor,
                                                List[torch.Tensor]]]


def _on_device(device) -> object:
    """Build under ``device`` (timm's ``device=`` argument), so that
    parameters and buffers are created there, not moved."""
    return torch.device(device) if device is not None else nullcontext()


class _TimmFcaFormer(nn.Module):
    """What both timm classifiers share: the arch check, the layers,
    timm's layer groups, checkpointing and the forward."""

    #: Whether the class builds the plain model.
    plain = False

    @classmethod
    def _arch_settings(cls, arch: Union[str, dict]) -> dict:
        """The settings of ``arch``, refused if it is not of this class's
        kind (plain or hybrid)."""
        settings = parse_arch(arch)
        if is_plain(settings) != cls.plain:
            kind, other = ('hybrid', 'FcaFormerClassifier (timm: '
                           'fcaformer_l1 ... l4)') if cls.plain else (
                               'plain',
                               'PlainFcaFormerClassifier (timm: fcaformer_l0)')
            raise ValueError(
                f'{arch!r} is a {kind} FcaFormer: build it with {other}.')
        return settings

    def _build_layers(self, settings: dict, in_chans: int, num_classes: int,
                      window_size, drop_path_rate: float,
                      layer_scale_init_value: float) -> None:
        """Build ``downsample_layers`` and ``stages`` of an arch."""
        # forward_intermediates relies on feature_take_indices (private).
        check_verified('timm', 'timm.models._features.feature_take_indices')
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.window_size = parse_window_size(settings, window_size)
        self.downsample_layers, self.stages = build_fcaformer_layers(
            settings,
            in_channels=in_chans,
            window_size=self.window_size,
            drop_path_rate=drop_path_rate,
            layer_scale_init_value=layer_scale_init_value)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        """Parameter groups, for timm's layer-wise learning-rate decay."""
        return timm_group_matcher(plain=self.plain, coarse=coarse)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        set_grad_checkpointing(self.stages, enable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class FcaFormerClassifier(_TimmFcaFormer):
    """A hybrid FcaFormer (L1-L4) with the official classification head:
    global average pooling, LayerNorm, Linear (timm's
    ``NormMlpClassifierHead``).

    Args:
        arch (str | dict): A hybrid arch, see
            :func:`~mmfca.models.layers.parse_arch`.
            Defaults to 'l2'.
        in_chans (int): Input channels. Defaults to 3.
        num_classes (int): Classes; 0 for no classifier. Defaults to 1000.
        global_pool (str): 'avg', or '' to keep the feature map (the head's
            norm still applies, per position). Defaults to 'avg'.
        drop_rate (float): Dropout before the classifier. Defaults to 0.
        drop_path_rate (float): Stochastic depth. Defaults to 0.
        layer_scale_init_value (float): Layer scale init. Defaults to 1e-6.
        window_size (int | Sequence[int], optional): Attention windows of
            the two FcaFormer stages; the default (14, 7) is what the
            pretrained weights were trained with.
        device: Where to create the parameters.
        dtype: Their dtype.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'l2',
                 in_chans: int = 3,
                 num_classes: int = 1000,
                 global_pool: str = 'avg',
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 window_size=None,
                 device=None,
                 dtype=None):
        super().__init__()
        settings = self._arch_settings(arch)
        channels = settings['channels']
        self.num_stages = len(channels)
        self.num_features = self.head_hidden_size = channels[-1]
        with _on_device(device):
            self._build_layers(settings, in_chans, num_classes, window_size,
                               drop_path_rate, layer_scale_init_value)
            self.head = NormMlpClassifierHead(
                self.num_features,
                num_classes,
                pool_type=global_pool,
                drop_rate=drop_rate,
                norm_layer=partial(LayerNorm2d, eps=1e-5))
        self.feature_info = [
            dict(num_chs=width, reduction=4 * 2**i, module=f'stages.{i}')
            for i, width in enumerate(channels)
        ]
        self.apply(init_fcaformer_weights)
        if dtype is not None:
            self.to(dtype=dtype)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """None: the official recipe decays every weight of two or more
        dimensions (bias tables, depth biases and LSFs included); timm
        already exempts norms and biases."""
        return set()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self,
                         num_classes: int,
                         global_pool: Optional[str] = None,
                         reset_other: bool = False) -> None:
        """A new classifier for ``num_classes`` (0 for none); the pooling
        changes only when ``global_pool`` is given."""
        self.num_classes = num_classes
        parameter = next(self.parameters())
        self.head.reset(
            num_classes,
            global_pool,
            reset_other=reset_other,
            in_features=self.num_features,
            device=parameter.device,
            dtype=parameter.dtype)
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(self,
                              x: torch.Tensor,
                              indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False,
                              stop_early: bool = False,
                              output_fmt: str = 'NCHW',
                              intermediates_only: bool = False
                              ) -> Intermediates:
        """Stage outputs, for timm's feature extraction.

        Args:
            x (torch.Tensor): Images.
            indices (int | list[int], optional): Stages to return (an int
                means the last n; None all).
            norm (bool): Unused: the head's norm follows the pooling, so the
                stage outputs have no norm to apply.
            stop_early (bool): Stop after the last requested stage.
            output_fmt (str): 'NCHW' only.
            intermediates_only (bool): Return only the intermediates.

        Returns:
            The intermediates, or the last stage output and them.
        """
        if output_fmt != 'NCHW':
            raise ValueError(
                f"FcaFormer's intermediates are 'NCHW', got {output_fmt!r}.")
        take, max_index = feature_take_indices(len(self.stages), indices)
        last = max_index if stop_early else len(self.stages) - 1
        intermediates = []
        for i in range(last + 1):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self,
                                  indices: Union[int, List[int]] = 1,
                                  prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` (and the head), so
        that ``forward_intermediates`` computes only what it returns."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        self.downsample_layers = self.downsample_layers[:max_index + 1]
        pruned_end = max_index < self.num_stages - 1
        if pruned_end:
            # The head's norm is sized for the last stage.
            self.num_features = self.feature_info[max_index]['num_chs']
        if prune_head or prune_norm or pruned_end:
            self.reset_classifier(0, '', reset_other=True)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for downsample, stage in zip(self.downsample_layers, self.stages):
            x = stage(downsample(x))
        return x

    def forward_head(self,
                     x: torch.Tensor,
                     pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)


class PlainFcaFormerClassifier(_TimmFcaFormer):
    """The plain FcaFormer (L0) with DeiT's task head: class token, learned
    position embedding, final LayerNorm, Linear on the class token.

    It attends over one window of patches with a position embedding of
    that size, so it takes 224x224 images (``fixed_input_size``).

    Args:
        arch (str | dict): A plain arch (with ``patch_size``). Defaults to
            'l0'.
        in_chans (int): Input channels. Defaults to 3.
        num_classes (int): Classes; 0 for no classifier. Defaults to 1000.
        global_pool (str): 'token' (the class token, DeiT's), 'avg' (the
            mean of the patch tokens) or '' (all tokens). Defaults to
            'token'.
        drop_rate (float): Dropout before the classifier. Defaults to 0.
        drop_path_rate (float): Stochastic depth. Defaults to 0.
        layer_scale_init_value (float): Layer scale init. Defaults to 1e-6.
        img_size (int | tuple[int, int]): Size of the (square) images, a
            multiple of the patch size: the window and the position
            embedding are the patch grid. Defaults to 224, the pretrained
            weights' size.
        device: Where to create the parameters.
        dtype: Their dtype.
    """

    plain = True
    pools = ('token', 'avg', '')

    def __init__(self,
                 arch: Union[str, dict] = 'l0',
                 in_chans: int = 3,
                 num_classes: int = 1000,
                 global_pool: str = 'token',
                 drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 layer_scale_init_value: float = 1e-6,
                 img_size: Union[int, Tuple[int, int]] = 224,
                 device=None,
                 dtype=None):
        super().__init__()
        self._check_pool(global_pool)
        self.global_pool = global_pool
        self.num_stages = 1
        self.num_prefix_tokens = 1
        settings = self._arch_settings(arch)
        self.patch_size = settings['patch_size']
        width = settings['channels'][0]
        self.num_features = self.head_hidden_size = width
        img_height, img_width = to_2tuple(img_size)
        if img_height != img_width or img_height % self.patch_size:
            raise ValueError(
                f'img_size must be square and a multiple of the patch size '
                f'{self.patch_size}, got {img_size}.')
        grid = img_height // self.patch_size
        with _on_device(device):
            self._build_layers(settings, in_chans, num_classes, grid,
                               drop_path_rate, layer_scale_init_value)
            self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
            self.pos_embed = nn.Parameter(
                torch.zeros(1, 1 + grid * grid, width))
            self.norm = nn.LayerNorm(width, eps=1e-6)
            self.head_drop = nn.Dropout(drop_rate)
            self.head = nn.Linear(width, num_classes) \
                if num_classes > 0 else nn.Identity()
        self.feature_info = [
            dict(
                num_chs=width,
                reduction=self.patch_size,
                module=f'stages.0.blocks.{i}')
            for i in range(len(self.stages[0].blocks))
        ]
        self.apply(init_fcaformer_weights)
        nn.init.trunc_normal_(self.cls_token, std=.02)
        nn.init.trunc_normal_(self.pos_embed, std=.02)
        if dtype is not None:
            self.to(dtype=dtype)

    @classmethod
    def _check_pool(cls, global_pool: str) -> None:
        if global_pool not in cls.pools:
            raise ValueError(f'global_pool must be one of {cls.pools}, got '
                             f'{global_pool!r}.')

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """The class token and position embedding, as DeiT."""
        return {'cls_token', 'pos_embed'}

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self,
                         num_classes: int,
                         global_pool: Optional[str] = None) -> None:
        """A new classifier for ``num_classes`` (0 for none); the pooling
        changes only when ``global_pool`` is given."""
        if global_pool is not None:
            self._check_pool(global_pool)
            self.global_pool = global_pool
        self.num_classes = num_classes
        parameter = next(self.parameters())
        self.head = nn.Linear(
            self.num_features,
            num_classes,
            device=parameter.device,
            dtype=parameter.dtype) if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        return add_class_token(self.downsample_layers[0](x), self.cls_token,
                               self.pos_embed)

    def forward_intermediates(self,
                              x: torch.Tensor,
                              indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False,
                              stop_early: bool = False,
                              output_fmt: str = 'NCHW',
                              intermediates_only: bool = False
                              ) -> Intermediates:
        """Block outputs, for timm's feature extraction: the patch tokens as
        a map (NCHW) or a sequence (NLC), without the class token.

        Args:
            x (torch.Tensor): Images.
            indices (int | list[int], optional): Blocks to return (an int
                means the last n; None all).
            norm (bool): Apply the final norm to the intermediates.
            stop_early (bool): Stop after the last requested block.
            output_fmt (str): 'NCHW' or 'NLC'.
            intermediates_only (bool): Return only the intermediates.

        Returns:
            The intermediates, or the normalised tokens and them.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got "
                             f'{output_fmt!r}.')
        blocks = self.stages[0].blocks
        take, max_index = feature_take_indices(len(blocks), indices)
        last = max_index if stop_early else len(blocks) - 1
        outputs = self.stages[0].run_blocks(
            self._tokens(x), num_blocks=last + 1, keep_all=True)
        grid = self.window_size[0]
        intermediates = []
        for i in take:
            out = self.norm(outputs[i]) if norm else outputs[i]
            out = out[:, self.num_prefix_tokens:]
            if output_fmt == 'NCHW':
                out = grid_to_map(out, grid, grid)
            intermediates.append(out)
        if intermediates_only:
            return intermediates
        return self.norm(outputs[-1]), intermediates

    def prune_intermediate_layers(self,
                                  indices: Union[int, List[int]] = 1,
                                  prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the blocks after the last of ``indices`` (the last kept
        block then makes no cross tokens), the norm and the head."""
        blocks = self.stages[0].blocks
        take, max_index = feature_take_indices(len(blocks), indices)
        self.stages[0].blocks = blocks[:max_index + 1]
        self.stages[0].blocks[-1].cross_token_conv = None
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, '')
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised tokens ``(B, 1 + patches, C)``, class token
        first."""
        return self.norm(self.stages[0].run_blocks(self._tokens(x))[-1])

    def forward_head(self,
                     x: torch.Tensor,
                     pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'token':
            x = x[:, 0]
        elif self.global_pool == 'avg':
            x = x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


FcaFormerTimmModel = Union[FcaFormerClassifier, PlainFcaFormerClassifier]


def _names(model: FcaFormerTimmModel) -> Tuple[str, str, str]:
    """The timm names of the final norm and the classifier, and the
    backbone name of the final norm."""
    if isinstance(model, PlainFcaFormerClassifier):
        return 'norm.', 'head.', 'norm0.'
    return 'head.norm.', 'head.fc.', f'norm{model.num_stages - 1}.'


def checkpoint_filter_fn(state_dict: dict,
                         model: FcaFormerTimmModel,
                         strict: bool = True) -> dict:
    """Turn an official, mmfca / mmpretrain or timm checkpoint into this
    model's state dict, through
    :func:`~mmfca.models.utils.checkpoint.fit_backbone_weights`.

    timm drops the classifier and loads non-strictly when ``num_classes``
    differs and for ``features_only``, so the backbone is checked here:
    a file that lacks backbone tensors is refused, naming the file and what
    it holds.

    Args:
        state_dict (dict): What timm read from the file.
        model (nn.Module): The classifier to load.
        strict (bool): Refuse missing backbone tensors; timm's
            ``pretrained_strict=False`` sets it to False (a file that
            matches nothing is refused either way). Defaults to True.
    """
    timm_norm, timm_fc, backbone_norm = _names(model)
    pretrained_cfg = getattr(model, 'pretrained_cfg', None) or {}
    source = (
        pretrained_cfg.get('file') or pretrained_cfg.get('url')
        or pretrained_cfg.get('hf_hub_id') or 'the pretrained weights')
    own = OrderedDict((rename_prefix(k, {timm_norm: backbone_norm}), v)
                      for k, v in model.state_dict().items()
                      if not k.startswith(timm_fc))
    fitted = fit_backbone_weights(
        state_dict,
        own,
        model.num_stages,
        source=source,
        fix=('Check the file: it must hold official FcaFormer weights or an '
             'mmfca / mmpretrain checkpoint of this arch.'),
        opt_out='pretrained_strict=False in timm.create_model',
        strict=strict,
        bare_names={
            timm_norm: 'backbone.' + backbone_norm,
            timm_fc: 'head.fc.'
        })
    out = OrderedDict((rename_prefix(k, {backbone_norm: timm_norm}), v)
                      for k, v in fitted.backbone.items())
    # mmpretrain's head is ``fc.*``; any other head entry keeps its name,
    # for timm's load_state_dict to judge.
    out.update(
        (timm_fc + k[len('fc.'):] if k.startswith('fc.') else 'head.' + k, v)
        for k, v in fitted.head.items())
    # Other entries of an OpenMMLab checkpoint go on for timm's
    # load_state_dict to judge.
    out.update(fitted.others)
    return out


def _cfg(plain: bool) -> dict:
    """timm's pretrained config of a variant. There are no hub weights:
    load a local file with ``pretrained=True,
    pretrained_cfg_overlay=dict(file=PATH)``. No weights license is stated:
    the official repository states none for its weights."""
    cfg = dict(
        url='',
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation='bicubic',
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        first_conv='downsample_layers.0.conv1.conv',
        classifier='head.fc',
        paper_ids='arXiv:2211.07198')
    if plain:
        cfg.update(
            pool_size=None,
            fixed_input_size=True,
            first_conv='downsample_layers.0',
            classifier='head')
    return cfg


#: One timm variant per entry of the arch table.
VARIANTS = {f'fcaformer_{arch}': arch for arch in FCAFORMER_ARCHS}
default_cfgs = generate_default_cfgs({
    variant:
    _cfg(is_plain(FCAFORMER_ARCHS[arch]))
    for variant, arch in VARIANTS.items()
})


def _create(variant: str,
            pretrained: bool = False,
            **kwargs) -> FcaFormerTimmModel:
    # ``arch`` may name another arch of the table or give one as a dict.
    arch = kwargs.pop('arch', VARIANTS[variant])
    plain = is_plain(parse_arch(arch))
    # timm reads the file with weights_only=True: the official checkpoints
    # (an argparse.Namespace inside) need mmfca's allow-list while it does.
    with checkpoint_globals():
        return build_model_with_cfg(
            PlainFcaFormerClassifier if plain else FcaFormerClassifier,
            variant,
            pretrained,
            pretrained_filter_fn=partial(
                checkpoint_filter_fn,
                strict=kwargs.get('pretrained_strict', True)),
            feature_cfg=dict(
                feature_cls='getter', out_indices=3 if plain else
                (0, 1, 2, 3)),
            arch=arch,
            **kwargs)


def _register(variant: str) -> None:
    """Register ``variant`` with timm (``timm.create_model(variant)``) and
    make it a function of this module, as timm's own model files have."""

    def create(pretrained: bool = False, **kwargs) -> FcaFormerTimmModel:
        return _create(variant, pretrained, **kwargs)

    create.__name__ = create.__qualname__ = variant
    create.__doc__ = (f'FcaFormer-{VARIANTS[variant].upper()} (arch table: '
                      f':data:`~mmfca.models.layers.FCAFORMER_ARCHS`).')
    globals()[variant] = register_model(create)


for _variant in VARIANTS:
    _register(_variant)
