"""FcaFormer classifiers in timm: ``timm.create_model('fcaformer_l2')``.

After ``import mmfca``, ``fcaformer_l1`` ... ``fcaformer_l4`` are timm models
built on the same :class:`~mmfca.models.FcaFormer` backbone, with timm's
``features_only=True`` (through ``forward_intermediates``) and loading of
official or mmfca weights via ``pretrained=True,
pretrained_cfg_overlay=dict(file=PATH)`` (timm's loader takes the EMA
weights, ``model_ema``, when the file has them).
"""
from functools import partial
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.models import (build_model_with_cfg, generate_default_cfgs,
                         register_model)
# A private timm module (verified with timm 1.0.x).
from timm.models._features import feature_take_indices

from ..utils.serialization import checkpoint_globals
from ..utils.versions import check_verified
from .backbones import FcaFormer
from .utils.checkpoint import (check_backbone_coverage,
                               convert_official_state_dict, is_official_layout,
                               select_state_dict, strip_prefix)

check_verified('timm', 'timm.models._features.feature_take_indices')


class FcaFormerClassifier(nn.Module):
    """FcaFormer with the official classification head, timm style:
    global average pooling, LayerNorm, Linear.

    Args:
        arch (str | dict): FcaFormer arch.
        num_classes (int): Classes; 0 for no classifier. Defaults to 1000.
        in_chans (int): Input channels. Defaults to 3.
        drop_path_rate (float): Stochastic depth. Defaults to 0.
        drop_rate (float): Dropout before the classifier. Defaults to 0.
        global_pool (str): 'avg' (the only pooling). Defaults to 'avg'.
    """

    def __init__(self,
                 arch: Union[str, dict] = 'l2',
                 num_classes: int = 1000,
                 in_chans: int = 3,
                 drop_path_rate: float = 0.,
                 drop_rate: float = 0.,
                 global_pool: str = 'avg'):
        super().__init__()
        if global_pool != 'avg':
            raise ValueError(f"FcaFormer supports global_pool='avg' only, got "
                             f'{global_pool!r}.')
        self.backbone = FcaFormer(
            arch,
            in_channels=in_chans,
            out_indices=(3, ),
            gap_before_final_norm=True,
            drop_path_rate=drop_path_rate)
        self.backbone.init_weights()
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.backbone.channels[-1]
        self.drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) \
            if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)
        reduction = 4
        self.feature_info = []
        for i, width in enumerate(self.backbone.channels):
            reduction = reduction * 2 if i else reduction
            self.feature_info.append(
                dict(
                    num_chs=width,
                    reduction=reduction,
                    module=f'backbone.stages.{i}'))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str = 'avg'):
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) \
            if num_classes > 0 else nn.Identity()

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = 'NCHW',
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stage outputs (NCHW) for timm's feature extraction.

        Args:
            x (torch.Tensor): Images.
            indices (int | list[int], optional): Stages to return (an int
                means the last n).
            norm (bool): Unused; the stage outputs carry no norm.
            stop_early (bool): Stop after the last requested stage.
            output_fmt (str): Only 'NCHW'.
            intermediates_only (bool): Return only the intermediates.
        """
        if output_fmt != 'NCHW':
            raise ValueError("FcaFormer intermediates are 'NCHW' only.")
        take, max_index = feature_take_indices(
            len(self.backbone.stages), indices)
        intermediates = []
        last = max_index if stop_early else len(self.backbone.stages) - 1
        for i in range(last + 1):
            x = self.backbone.stages[i](self.backbone.downsample_layers[i](x))
            if i in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self,
                                  indices: Union[int, List[int]] = 1,
                                  prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Keep what ``indices`` needs (timm's features_only calls this)."""
        take, _ = feature_take_indices(len(self.backbone.stages), indices)
        if prune_head:
            self.reset_classifier(0)
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for i, stage in enumerate(self.backbone.stages):
            x = stage(self.backbone.downsample_layers[i](x))
        return x

    def forward_head(self,
                     x: torch.Tensor,
                     pre_logits: bool = False) -> torch.Tensor:
        x = self.backbone.norm3(x.mean((-2, -1)))
        x = self.drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict,
                         model: nn.Module,
                         strict: bool = True) -> dict:
    """Turn an official or mmfca/mmpretrain checkpoint into this model's
    state dict.

    timm drops the classifier and loads non-strictly when ``num_classes``
    differs and for ``features_only``, so the backbone is checked here:
    a file that lacks backbone tensors is refused, naming the file and what
    it holds.

    Args:
        state_dict (dict): What timm read from the file.
        model (nn.Module): The :class:`FcaFormerClassifier` to load.
        strict (bool): Refuse missing backbone tensors; timm's
            ``pretrained_strict=False`` sets it to False (a file that
            matches nothing is refused either way). Defaults to True.
    """
    weights = select_state_dict(state_dict)
    if is_official_layout(strip_prefix(weights, None)[0]):
        weights, _ = convert_official_state_dict(weights)
    backbone, prefix = strip_prefix(weights, None)
    # mmpretrain's head is ``head.fc.*``, timm's own ``head.*``; other
    # entries of an OpenMMLab checkpoint go on for timm's load_state_dict to
    # judge.
    head = {
        k[len('head.'):]: v
        for k, v in weights.items() if prefix and k.startswith('head.')
    }
    rest = {
        k: v
        for k, v in weights.items()
        if prefix and not k.startswith((prefix, 'head.'))
    }
    pretrained_cfg = getattr(model, 'pretrained_cfg', None) or {}
    source = (
        pretrained_cfg.get('file') or pretrained_cfg.get('url')
        or pretrained_cfg.get('hf_hub_id') or 'the pretrained weights')
    check_backbone_coverage(
        model.backbone,
        backbone,
        source=source,
        where=(f'under prefix {prefix!r}' if prefix else
               "in the whole file (no key starts with 'backbone.')"),
        checkpoint=weights,
        fix=('Check the file: it must hold official FcaFormer weights or an '
             'mmfca / mmpretrain checkpoint of this arch.'),
        strict=strict,
        opt_out='pretrained_strict=False in timm.create_model')
    out = {f'backbone.{k}': v for k, v in backbone.items()}
    out.update((f"head.{k.removeprefix('fc.')}", v) for k, v in head.items())
    out.update(rest)
    return out


def _cfg(**kwargs) -> dict:
    return dict(
        url='',
        num_classes=1000,
        input_size=(3, 224, 224),
        pool_size=(7, 7),
        crop_pct=0.875,
        interpolation='bicubic',
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        first_conv='backbone.downsample_layers.0.conv1.conv',
        classifier='head',
        **kwargs)


# No hub weights: load a local file with
# ``pretrained=True, pretrained_cfg_overlay=dict(file=PATH)``.
default_cfgs = generate_default_cfgs(
    {f'fcaformer_{arch}': _cfg()
     for arch in FcaFormer.arch_zoo})


def _create(variant: str, pretrained: bool = False, **kwargs):
    arch = variant.split('_')[-1]
    # timm reads the file with weights_only=True: mmengine checkpoints need
    # mmfca's allow-list while it does.
    with checkpoint_globals():
        return build_model_with_cfg(
            FcaFormerClassifier,
            variant,
            pretrained,
            pretrained_filter_fn=partial(
                checkpoint_filter_fn,
                strict=kwargs.get('pretrained_strict', True)),
            feature_cfg=dict(feature_cls='getter', out_indices=(0, 1, 2, 3)),
            arch=arch,
            **kwargs)


@register_model
def fcaformer_l1(pretrained: bool = False, **kwargs) -> FcaFormerClassifier:
    """FcaFormer-L1: 6.2M parameters, 80.3% ImageNet top-1 (paper)."""
    return _create('fcaformer_l1', pretrained, **kwargs)


@register_model
def fcaformer_l2(pretrained: bool = False, **kwargs) -> FcaFormerClassifier:
    """FcaFormer-L2: 16.3M parameters, 83.1% ImageNet top-1 (paper)."""
    return _create('fcaformer_l2', pretrained, **kwargs)


@register_model
def fcaformer_l3(pretrained: bool = False, **kwargs) -> FcaFormerClassifier:
    """FcaFormer-L3: 27.9M parameters, 84.2% ImageNet top-1 (paper)."""
    return _create('fcaformer_l3', pretrained, **kwargs)


@register_model
def fcaformer_l4(pretrained: bool = False, **kwargs) -> FcaFormerClassifier:
    """FcaFormer-L4: 65.6M parameters, 84.9% ImageNet top-1 (paper)."""
    return _create('fcaformer_l4', pretrained, **kwargs)
