"""Paired GPU latency of FcaFormer-L2 against ConvNeXt-T, with torch and
timm only (for a GPU machine without the OpenMMLab stack).

FcaFormer-L2 is built from mmfca's shared layers
(``mmfca/models/layers/fcaformer_layers.py``, loaded by path, so neither
mmengine nor mmcv is needed) with the official head; ConvNeXt-T is timm's
``convnext_tiny``. Both run in deploy form where they have one (FcaFormer:
conv-BN folded, attention masks precomputed). Calls alternate A, B, A, B;
each is timed with CUDA events after a synchronise, and the median of the
per-pair ratios is printed with its quartiles.

Example::

    python tools/analysis/cuda_latency.py --batch 1 64 --rounds 100
    python tools/analysis/cuda_latency.py --dense --shape 512 512 --batch 1 8
"""
import argparse
import importlib.util
import os.path as osp
import statistics
import sys
from functools import partial

import timm
import torch
import torch.nn as nn
from timm.layers import LayerNorm2d, NormMlpClassifierHead

LAYERS = osp.join(
    osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'mmfca',
    'models', 'layers', 'fcaformer_layers.py')


def load_layers(path: str = LAYERS, name: str = 'fcaformer_layers'):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # torch.compile looks modules up by name.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class FcaFormerL2(nn.Module):
    """The L2 classifier (official head) or, with ``dense``, the dense
    backbone with the official widened outputs (96, 192, 384, 768)."""

    def __init__(self, layers, dense: bool):
        super().__init__()
        settings = layers.parse_arch('l2')
        self.downsample_layers, self.stages = layers.build_fcaformer_layers(
            settings, window_size=layers.parse_window_size(settings))
        self.dense = dense
        if dense:
            self.outputs = nn.ModuleList(
                layers.OutputProjection(c, o)
                for c, o in zip(settings['channels'], (96, 192, 384, 768)))
        else:
            self.head = NormMlpClassifierHead(
                settings['channels'][-1],
                1000,
                norm_layer=partial(LayerNorm2d, eps=1e-5))
        self.apply(layers.init_fcaformer_weights)

    def forward(self, x):
        outs = []
        for i, (down,
                stage) in enumerate(zip(self.downsample_layers, self.stages)):
            x = stage(down(x))
            if self.dense:
                outs.append(self.outputs[i](x))
        return tuple(outs) if self.dense else self.head(x)


def _ratio(times, other):
    """Median and quartiles of the per-round ratios ``times / other``."""
    ratios = sorted(a / b for a, b in zip(times, other))
    quartiles = statistics.quantiles(ratios, n=4)
    return f'{statistics.median(ratios):.3f} [{quartiles[0]:.3f}, ' \
        f'{quartiles[2]:.3f}]'


def time_rounds(models, x, rounds, dtype):
    """Call the models in turn, round after round; each model's times."""
    events = [(torch.cuda.Event(enable_timing=True),
               torch.cuda.Event(enable_timing=True)) for _ in models]
    times = [[] for _ in models]
    autocast = torch.autocast('cuda', dtype=dtype, enabled=dtype is not None)
    with torch.inference_mode(), autocast:
        for _ in range(10):
            for model in models:
                model(x)
        for _ in range(rounds):
            for (start, end), model, record in zip(events, models, times):
                torch.cuda.synchronize()
                start.record()
                model(x)
                end.record()
                torch.cuda.synchronize()
                record.append(start.elapsed_time(end))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batch', type=int, nargs='+', default=[1, 64])
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224])
    parser.add_argument('--dense', action='store_true')
    parser.add_argument('--rounds', type=int, default=100)
    parser.add_argument(
        '--compile',
        choices=['default', 'reduce-overhead', 'max-autotune'],
        help='torch.compile every model with this mode (inductor)')
    parser.add_argument(
        '--layers',
        nargs='+',
        default=[LAYERS],
        help='layers files to build FcaFormer from (other versions of it, '
        'timed in the same rounds)')
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit('cuda_latency.py needs a CUDA device; use '
                         'tools/analysis/benchmark.py on a CPU.')
    models = [
        load_layers(path, f'fcaformer_layers_{i}')
        for i, path in enumerate(args.layers)
    ]
    models = [
        layers.fold_for_inference(FcaFormerL2(layers, args.dense)).cuda()
        for layers in models
    ]
    models.append(
        timm.create_model('convnext_tiny',
                          features_only=args.dense).cuda().eval())
    if args.compile:
        models = [torch.compile(m, mode=args.compile) for m in models]
    names = [f'FcaFormer-L2 ({osp.basename(p)})' for p in args.layers]
    print(f'{torch.cuda.get_device_name()}, torch {torch.__version__}, '
          f'timm {timm.__version__}; '
          f'{"dense backbones" if args.dense else "classifiers"} at '
          f'{args.shape[0]}x{args.shape[1]}, deploy form, '
          f'{"torch.compile " + args.compile if args.compile else "eager"}')
    for dtype in (None, torch.float16):
        for batch in args.batch:
            x = torch.randn(batch, 3, *args.shape, device='cuda')
            times = time_rounds(models, x, args.rounds, dtype)
            label = 'fp32' if dtype is None else 'fp16 autocast'
            print(f'{label} batch {batch}: ConvNeXt-T '
                  f'{statistics.median(times[-1]):.2f} ms')
            for i, name in enumerate(names):
                line = (f'  {name} {statistics.median(times[i]):.2f} ms, '
                        f'/ ConvNeXt-T {_ratio(times[i], times[-1])}')
                if i:
                    line += f', / the first {_ratio(times[i], times[0])}'
                print(line)


if __name__ == '__main__':
    main()
