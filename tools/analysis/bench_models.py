"""The models the benchmark tools of tools/analysis compare, built from
their configs with random weights.

FcaFormer is compared with mmpretrain's ConvNeXt-T and Swin-T (mmseg's and
mmdet's configs for the dense models), and optionally with the official
FcaFormer-L2 from a local copy of its repository. ``mode`` applies to every
FcaFormer model, ours and the official one alike: ``eval`` is evaluation
mode with nothing folded; ``deploy`` is ours after ``switch_to_deploy()``
(conv-BN folded, attention bias masks precomputed) and the official model
with every ``Conv2d_BN`` replaced by what the official
``Conv2d_BN.fuse()`` returns (the official code has that method but no
model-level call, and no bias cache). ConvNeXt-T and Swin-T have nothing
to fold (no BatchNorm).
"""
import argparse
import functools
import importlib.util
import os.path as osp
import sys
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmfca.apis import build_model, load_config
from mmfca.utils import TensorForward

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CLASSIFIERS = {
    'FcaFormer-L1': osp.join(REPO, 'configs/fcaformer_l1_in1k.py'),
    'FcaFormer-L2': osp.join(REPO, 'configs/fcaformer_l2_in1k.py'),
    'ConvNeXt-T': 'mmpretrain::convnext/convnext-tiny_32xb128_in1k.py',
    'Swin-T': 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
}
OFFICIAL = 'FcaFormer-L2 (official)'
SEGMENTORS = {
    'UperNet FcaFormer-L2':
    osp.join(REPO, 'configs/upernet_fcaformer_l2_160k_ade20k.py'),
    'UperNet ConvNeXt-T':
    'mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py',
}
SWIN_T_UPERNET = ('mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_'
                  '8xb2-160k_ade20k-512x512.py')
DETECTORS = {
    'Mask R-CNN FcaFormer-L2':
    osp.join(REPO, 'configs/mask_rcnn_fcaformer_l2_fpn_3x_coco.py'),
    'Mask R-CNN ConvNeXt-T':
    'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
}
MODES = ('deploy', 'eval')

Window = Tuple[int, ...]


def add_mode_argument(parser: argparse.ArgumentParser) -> None:
    """``--mode``: how FcaFormer models are prepared for inference."""
    parser.add_argument(
        '--mode',
        choices=MODES,
        default='deploy',
        help='FcaFormer models, ours and the official one alike: deploy = '
        'conv-BN folded, bias masks precomputed; eval = evaluation mode, '
        'nothing folded')


def model_from_config(path: str, mode: str) -> nn.Module:
    """The model of a config (a classifier, segmentor or detector), its
    FcaFormer backbone switched to deploy mode when ``mode`` is
    ``deploy`` (other backbones have nothing to fold)."""
    model = build_model(load_config(path))
    backbone = getattr(model, 'backbone', None)
    if mode == 'deploy' and hasattr(backbone, 'switch_to_deploy'):
        backbone.switch_to_deploy()
    return model


def official_l2(repo: str, mode: str) -> nn.Module:
    """The official FcaFormer-L2 classifier from a local copy of its
    repository (the user's; nothing of it is shipped with mmfca).

    In ``deploy`` mode every official ``Conv2d_BN`` is replaced by what its
    own ``fuse()`` returns: the official code's folding, applied to every
    pair, as LeViT-style code does before inference.

    Args:
        repo (str): Root of the copy (it holds
            ``image_classification/models/fcaformer.py``).
        mode (str): One of :data:`MODES`.
    """
    path = osp.join(repo, 'image_classification', 'models', 'fcaformer.py')
    if not osp.isfile(path):
        raise SystemExit(
            f'--official {repo!r}: no {path}. Give the root of a copy of the '
            f'official FcaFormer repository (it holds '
            f'image_classification/models/fcaformer.py).')
    spec = importlib.util.spec_from_file_location('official_fcaformer', path)
    module = importlib.util.module_from_spec(spec)
    # timm's register_model looks the module up; the official file also
    # registers 'fcaformer_l*' names in timm, for this process only.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        raise SystemExit(
            f'The official code ({path}) could not be imported: {error}. It '
            f'needs timm, einops and matplotlib (pip install einops '
            f'matplotlib).')
    model = module.fcaformer_l2()
    model.eval()
    if mode == 'deploy':
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, module.Conv2d_BN):
                    setattr(parent, name, child.fuse())
    return model


def window_layout(text: str) -> Window:
    """Stage-3/4 attention windows from ``S3,S4`` (an argparse type)."""
    try:
        return tuple(int(value) for value in text.split(','))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'takes comma-separated ints, e.g. 16,8; got {text!r}')


def window_overrides(window: Window) -> dict:
    """Config overrides that give the UperNet FcaFormer-L2 backbone the
    attention windows ``window``, its bias tables resized (bicubically)
    to fit them."""
    return {
        'model.backbone.window_size': tuple(window),
        'model.backbone.resize_bias_tables': True
    }


def fcaformer_l2_backbone(mode: str,
                          window: Optional[Window] = None) -> nn.Module:
    """The backbone of the UperNet FcaFormer-L2 config (four widened
    outputs), in ``mode``, with the windows of ``window`` if given."""
    overrides = window_overrides(window) if window else None
    backbone = build_model(
        load_config(SEGMENTORS['UperNet FcaFormer-L2'], overrides)).backbone
    return backbone.switch_to_deploy() if mode == 'deploy' else backbone


def dense_backbones(mode: str,
                    windows: Sequence[Window] = ()) -> Dict[str, nn.Module]:
    """FcaFormer-L2 (default windows, then each of ``windows``; in
    ``mode``), ConvNeXt-T and Swin-T backbones of the UperNet configs."""
    backbones = {'FcaFormer-L2': fcaformer_l2_backbone(mode)}
    for window in windows:
        backbones[f'FcaFormer-L2 windows {window}'] = fcaformer_l2_backbone(
            mode, window)
    backbones['ConvNeXt-T'] = build_model(
        load_config(SEGMENTORS['UperNet ConvNeXt-T'])).backbone
    backbones['Swin-T'] = build_model(load_config(SWIN_T_UPERNET)).backbone
    return backbones


def prepare(model: nn.Module, device: str, compile_model: bool = False):
    """The model on ``device`` in eval mode (optionally compiled by
    ``torch.compile``). Fold before this, so that what folding makes ends
    on ``device`` too."""
    model = model.to(device)
    model.eval()  # some backbones' train() returns None, so not chained
    if compile_model:
        model = torch.compile(model)
    return model


def forward_call(model: nn.Module,
                 inputs: torch.Tensor) -> Callable[[], object]:
    """One inference forward of ``model`` on ``inputs``, with the
    post-processing of detectors and segmentors, as a call."""
    return functools.partial(TensorForward(model, 'predict'), inputs)
