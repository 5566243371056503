"""Dense backbone latency at 512x512 (segmentation) and 800x1216
(detection): the FcaFormer-L2, ConvNeXt-T and Swin-T backbones of the
UperNet configs, batch 1, random weights.

    python tools/analysis/dense_latency.py [--windows 16,8 ...]
        [--mode deploy|eval] [--compile] [--device cpu] [--threads 2]
        [--amp fp16|bf16] [--repeat 5] [--out work_dirs/dense_latency.json]

The backbones are timed in paired rounds (see bench_lib): each size's
table gives each backbone's median ms [quartiles] and the median of its
per-round ratios to ConvNeXt-T [quartiles] (range). ``--windows`` adds
FcaFormer-L2 with other stage-3/4 attention windows (e.g. ``16,8``, whose
windows tile a 512x512 input's 32x32 / 16x16 stage-3/4 maps exactly),
timed in the same rounds; window_drift.py measures how far such a layout
moves the features. See bench_models for ``--mode``.
"""
import argparse
import functools
from typing import Optional, Sequence

import torch
from bench_lib import (add_run_arguments, report, save, start, summarize,
                       time_rounds)
from bench_models import (add_mode_argument, dense_backbones, prepare,
                          window_layout)

SIZES = ((512, 512), (800, 1216))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--windows',
        nargs='+',
        type=window_layout,
        default=[],
        metavar='S3,S4',
        help='also time the FcaFormer-L2 backbone with these stage-3/4 '
        'windows')
    add_mode_argument(parser)
    parser.add_argument(
        '--compile',
        action='store_true',
        help='torch.compile every backbone before timing')
    add_run_arguments(parser, repeat=5, out='work_dirs/dense_latency.json')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    results = start(args, mode=args.mode, compile=args.compile)
    device = args.device
    models = {
        name: prepare(backbone, device, args.compile)
        for name, backbone in dense_backbones(args.mode, args.windows).items()
    }
    results['backbone_latency'] = {}
    for size in SIZES:
        images = torch.randn(1, 3, *size, device=device)
        calls = {
            name: functools.partial(model, images)
            for name, model in models.items()
        }
        summary = summarize(
            time_rounds(calls, device, 1, args.repeat, args.amp),
            ('ConvNeXt-T', ))
        report(f'Backbone latency, {size[0]}x{size[1]}', summary)
        results['backbone_latency'][f'{size[0]}x{size[1]}'] = summary
    save(results, args.out)
    return results


if __name__ == '__main__':
    main()
