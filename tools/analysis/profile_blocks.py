"""Where the time of an FcaFormer forward goes, by block type.

    python tools/analysis/profile_blocks.py [--arch l2] [--shape 224 224]
        [--batch 1] [--threads 2] [--repeat 30] [--window-size 14 7]
        [--ops 15]

Forward hooks time every module (the backbone in deploy mode, eval, no
grad) and sum the times per part:

* stem: the conv stem (stage-0 downsampling);
* ConvNeXt stages: the two convolutional stages;
* downsample: the three stage transitions;
* attention: LayerNorm + forward cross attention (cross-token scaling and
  norm, qkv, attention, projection) + layer scale;
* TME: token merging and enhancement (the 7x7 stride-4 cross-token conv,
  the 3x3 depthwise conv) with the token <-> map reshapes and the residual
  additions of the block (the block's time minus attention and FFN);
* FFN: LayerNorm + FeedForward + layer scale;
* stage glue: FcaStage work outside the blocks (padding, window partition
  and reverse, concatenating the cross tokens);
* output norms, and what is left of the whole forward (hook overhead,
  Python).

Each part is the median over ``--repeat`` forwards. ``--ops`` also prints
the most expensive operators from torch.profiler over a few forwards.
"""
import argparse
import statistics
import time
from collections import defaultdict

import torch

from mmfca.models import FcaFormer
from mmfca.models.fcaformer import FcaStage

PARTS = ('stem', 'ConvNeXt stages', 'downsample', 'attention', 'TME', 'FFN',
         'stage glue', 'output norms', 'rest')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='l2')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeat', type=int, default=30)
    parser.add_argument('--window-size', type=int, nargs='+',
                        help='attention windows of the FcaFormer stages')
    parser.add_argument('--ops', type=int, default=0,
                        help='also list this many top torch.profiler ops')
    return parser.parse_args()


class Timer:
    """Accumulates the wall time of hooked modules under names."""

    def __init__(self):
        self.totals = defaultdict(float)
        self.starts = {}

    def hook(self, module: torch.nn.Module, name: str):
        def pre(*_):
            self.starts[id(module)] = time.perf_counter()

        def post(*_):
            self.totals[name] += time.perf_counter() - self.starts.pop(
                id(module))

        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)


def instrument(model: FcaFormer) -> Timer:
    timer = Timer()
    timer.hook(model.downsample_layers[0], 'stem')
    for i in range(1, model.num_stages):
        timer.hook(model.downsample_layers[i], 'downsample')
    for i, stage in enumerate(model.stages):
        if not isinstance(stage, FcaStage):
            timer.hook(stage, 'ConvNeXt stages')
            continue
        timer.hook(stage, '_fca stages')
        for block in stage.blocks:
            timer.hook(block, '_blocks')
            for name in ('norm1', 'attn', 'ls1'):
                timer.hook(getattr(block, name), 'attention')
            for name in ('norm2', 'ffn', 'ls2'):
                timer.hook(getattr(block, name), 'FFN')
    for i in model.out_indices:
        timer.hook(model.output_module(i), 'output norms')
    return timer


def parts(totals: dict, whole: float) -> dict:
    result = {k: v for k, v in totals.items() if not k.startswith('_')}
    result['TME'] = totals['_blocks'] - totals['attention'] - totals['FFN']
    result['stage glue'] = totals['_fca stages'] - totals['_blocks']
    result['rest'] = whole - sum(result.values())
    return result


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    model = FcaFormer(args.arch, out_indices=(0, 1, 2, 3),
                      window_size=args.window_size)
    model.init_weights()
    model.switch_to_deploy()
    x = torch.randn(args.batch, 3, *args.shape)
    with torch.no_grad():
        for _ in range(5):
            model(x)
        plain = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            model(x)
            plain.append(time.perf_counter() - start)
        timer = instrument(model)
        runs = defaultdict(list)
        for _ in range(args.repeat):
            timer.totals.clear()
            start = time.perf_counter()
            model(x)
            whole = time.perf_counter() - start
            for name, value in parts(timer.totals, whole).items():
                runs[name].append(value * 1000)
            runs['whole (hooked)'].append(whole * 1000)
    total = statistics.median(runs['whole (hooked)'])
    print(f'FcaFormer-{args.arch.upper()} backbone, deploy mode, batch '
          f'{args.batch}, {args.shape[0]}x{args.shape[1]}, '
          f'{args.threads} threads, median of {args.repeat}')
    print(f'  forward without hooks: {statistics.median(plain) * 1000:.1f} '
          f'ms; with hooks: {total:.1f} ms')
    print(f'  {"part":18s} {"ms":>7s} {"share":>6s}')
    for name in PARTS:
        value = statistics.median(runs[name])
        print(f'  {name:18s} {value:7.2f} {value / total:6.1%}')
    if args.ops:
        from torch.profiler import ProfilerActivity, profile
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) \
                as prof:
            for _ in range(5):
                model(x)
        print(prof.key_averages().table(
            sort_by='self_cpu_time_total', row_limit=args.ops))


if __name__ == '__main__':
    main()
