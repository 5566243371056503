"""Paired GPU latency of FcaFormer-L2 against ConvNeXt-T, with torch and
timm only (for a GPU machine without the OpenMMLab stack).

FcaFormer-L2 is mmfca's timm model (``import mmfca`` needs torch and timm
alone): the classifier, or with ``--dense`` its stages with the official
widened outputs (96, 192, 384, 768); ConvNeXt-T is timm's
``convnext_tiny``. FcaFormer runs in deploy form (conv-BN folded, attention
masks precomputed). Calls alternate A, B, A, B; each is timed with CUDA
events after a synchronise, and the median of the per-pair ratios is
printed with its quartiles.

Example::

    python tools/analysis/cuda_latency.py --batch 1 64 --rounds 100
    python tools/analysis/cuda_latency.py --dense --shape 512 512 --batch 1 8
"""
import argparse
import statistics

import timm
import torch
import torch.nn as nn

import mmfca  # noqa: F401  registers fcaformer_l* in timm
from mmfca.models.layers import OutputProjection, fold_for_inference

DENSE_WIDTHS = (96, 192, 384, 768)


class DenseFcaFormer(nn.Module):
    """timm's ``features_only`` FcaFormer with the official widened outputs
    (1x1 conv + LayerNorm per stage), as the dense backbone has them."""

    def __init__(self, name: str = 'fcaformer_l2'):
        super().__init__()
        self.features = timm.create_model(name, features_only=True)
        self.outputs = nn.ModuleList(
            OutputProjection(info['num_chs'], width) for info, width in zip(
                self.features.feature_info.get_dicts(), DENSE_WIDTHS))

    def forward(self, x: torch.Tensor):
        return tuple(
            output(feature)
            for output, feature in zip(self.outputs, self.features(x)))


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
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit('cuda_latency.py needs a CUDA device; use '
                         'the tools in tools/analysis on a CPU.')
    fcaformer = DenseFcaFormer() if args.dense else timm.create_model(
        'fcaformer_l2')
    models = [fold_for_inference(fcaformer).cuda()]
    models.append(
        timm.create_model('convnext_tiny',
                          features_only=args.dense).cuda().eval())
    if args.compile:
        models = [torch.compile(m, mode=args.compile) for m in models]
    names = ['FcaFormer-L2']
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
                print(f'  {name} {statistics.median(times[i]):.2f} ms, '
                      f'/ ConvNeXt-T {_ratio(times[i], times[-1])}')


if __name__ == '__main__':
    main()
