"""How far other attention-window layouts move FcaFormer-L2's 512x512
features from the default layout's, with the same weights: a proxy for
their accuracy cost, not a measurement of it.

    python tools/analysis/window_drift.py --windows 16,8 [32,16 ...]
        [--checkpoint PATH] [--samples 4] [--threads 2]
        [--out work_dirs/window_drift.json]

The backbone of the UperNet FcaFormer-L2 config is built with the default
windows and with each layout of ``--windows``, the default one's weights
loaded into each (bias tables resized bicubically). With ``--checkpoint``
the weights are that checkpoint's (a UperNet FcaFormer-L2 checkpoint,
its ``backbone.`` keys), otherwise random: every parameter and BN
statistic drawn large enough that bias tables, cross-token scales and
layer scales all change the outputs. On smooth random images (upsampled
noise) the tool reports, for each stage output, the relative L2 distance
and the cosine similarity to the default layout's. The first row is a
yardstick: the default layout's features of the image moved by 32 pixels
(so its content falls into other windows), compared on the part both
views share. CPU, float32, eval mode.
"""
import argparse
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from bench_lib import positive_int, save
from bench_models import SEGMENTORS, Window, window_layout, window_overrides

from mmfca.apis import build_model, load_config

# FcaFormer's bias tables and cross-token scales (LSFs), by name ending.
TABLES = ('position_bias', 'depth_bias', 'cross_scale')
SHIFT = 32  # pixels; a multiple of every stage's stride


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--windows',
        nargs='+',
        type=window_layout,
        required=True,
        metavar='S3,S4',
        help='stage-3/4 window layouts to compare with the default one')
    parser.add_argument(
        '--checkpoint',
        metavar='PATH',
        help='weights of the UperNet FcaFormer-L2 config (default: random '
        'weights)')
    parser.add_argument(
        '--samples',
        type=positive_int,
        default=4,
        metavar='N',
        help='random images compared (default 4)')
    parser.add_argument(
        '--threads',
        type=positive_int,
        default=2,
        metavar='N',
        help='CPU threads (torch.set_num_threads)')
    parser.add_argument(
        '--out',
        default='work_dirs/window_drift.json',
        metavar='PATH',
        help='JSON file of the results')
    return parser.parse_args(argv)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BN statistic drawn at random, large enough that
    bias tables, LSFs and layer scales all change the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            noise = torch.randn(value.shape, generator=gen)
            if name.endswith('running_var'):
                value.copy_(noise.abs() * 0.5 + 0.5)
            elif value.dim() == 1 or name.endswith(TABLES):
                base = 1. if name.endswith(
                    ('weight', 'gamma', 'cross_scale')) else 0.
                value.copy_(base + noise * 0.2)
            else:
                fan_in = value[0].numel()
                value.copy_(noise / fan_in**0.5)
    return model


def default_backbone(checkpoint: Optional[str]) -> nn.Module:
    """The default layout's backbone in eval mode, with the checkpoint's
    backbone weights or random ones (:func:`randomize`)."""
    backbone = build_model(load_config(
        SEGMENTORS['UperNet FcaFormer-L2'])).backbone
    if checkpoint:
        from mmengine.runner import load_checkpoint

        from mmfca.utils.serialization import checkpoint_globals
        with checkpoint_globals():
            load_checkpoint(
                backbone,
                checkpoint,
                map_location='cpu',
                revise_keys=[(r'^backbone\.', '')])
    else:
        randomize(backbone)
    return backbone.eval()


def smooth_images(samples: int) -> torch.Tensor:
    """Upsampled noise, standardised like inputs, of side 512 + ``SHIFT``:
    the 512x512 image and its view moved by ``SHIFT`` pixels both fit."""
    gen = torch.Generator().manual_seed(1)
    side = 512 + SHIFT
    return F.interpolate(
        torch.randn(samples, 3, side // 8, side // 8, generator=gen),
        size=(side, side),
        mode='bilinear',
        align_corners=False)


def distances(outs: Sequence[torch.Tensor],
              refs: Sequence[torch.Tensor]) -> Dict[str, List[float]]:
    """Per output: relative L2 distance and mean cosine similarity (over
    the positions, between the channel vectors flattened per image)."""
    rel, cos = [], []
    for out, ref in zip(outs, refs):
        rel.append(float((out - ref).norm() / ref.norm()))
        cos.append(
            float(F.cosine_similarity(out.flatten(1), ref.flatten(1)).mean()))
    return dict(relative_l2=rel, cosine=cos)


def window_drift(windows: Sequence[Window],
                 checkpoint: Optional[str] = None,
                 samples: int = 4) -> Dict[str, dict]:
    """The drift of each layout of ``windows`` from the default one, after
    the moved-image yardstick (see the module's docstring).

    Returns:
        dict: Row name -> ``relative_l2`` and ``cosine``, one per output.
    """
    default = default_backbone(checkpoint)
    larger = smooth_images(samples)
    images = larger[..., :512, :512]
    results = {}
    with torch.no_grad():
        refs = default(images)
        moved = default(larger[..., SHIFT:, SHIFT:].contiguous())
        cut = [SHIFT // (4 * 2**i) for i in range(len(refs))]
        results[f'default, image moved {SHIFT} px'] = distances(
            [o[..., :-c, :-c] for o, c in zip(moved, cut)],
            [r[..., c:, c:] for r, c in zip(refs, cut)])
        for window in windows:
            other = build_model(
                load_config(SEGMENTORS['UperNet FcaFormer-L2'],
                            window_overrides(window))).backbone
            other.load_state_dict(default.state_dict())
            other.eval()
            results[f'windows {window}'] = distances(other(images), refs)
    return results


def report_drift(results: Dict[str, dict], checkpoint: Optional[str]) -> None:
    """Print :func:`window_drift`'s rows."""
    print(f'\nFeature drift from the default windows at 512x512 ('
          f'{"checkpoint" if checkpoint else "random weights"}; relative '
          f'L2 / cosine per output)')
    for name, value in results.items():
        cells = '  '.join(
            f'{r:.3f}/{c:.3f}'
            for r, c in zip(value['relative_l2'], value['cosine']))
        print(f'  {name:28s} {cells}')


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    drift = window_drift(args.windows, args.checkpoint, args.samples)
    report_drift(drift, args.checkpoint)
    results = dict(
        threads=args.threads,
        torch=torch.__version__,
        weights=args.checkpoint or 'random',
        window_drift=drift)
    save(results, args.out)
    return results


if __name__ == '__main__':
    main()
