"""Where the time of an FcaFormer backbone forward goes, by block part.

    python tools/analysis/profile_blocks.py [--arch l2] [--shape 224 224]
        [--batch 1] [--threads 2] [--repeat 30] [--window-size 14 7]
        [--ops 15]

The backbone's own forward is timed: the clock is read at the boundaries
of its parts by forward hooks on its modules (pre and post) and by a
wrapper around each block's ``FcaBlock.merge_and_enhance``, which calls
the real method. The parts partition the forward as it runs:

* stem: the conv stem (stage-0 downsampling);
* ConvNeXt stages: the two convolutional stages;
* downsample: the three stage transitions;
* attention: an FcaBlock from its start to the start of its token merging:
  LayerNorm, forward cross attention (cross-token scaling and norm, qkv,
  attention with the bias mask, projection), layer scale and the residual
  addition;
* TME: ``merge_and_enhance``, token merging and enhancement (the token <->
  map views, the 7x7 stride-4 cross-token conv and the 3x3 depthwise conv);
* FFN: the rest of the block: LayerNorm, FeedForward, layer scale and the
  residual addition;
* stage glue: what an FcaStage spends outside its blocks (padding, window
  partition and reverse, concatenating cross tokens);
* output norms;
* rest: the backbone's forward outside all of these.

Each round runs the hooked forward, the same forward without hooks (the
whole time, and the hooks' cost against it) and mmpretrain's ConvNeXt-T
backbone (for a ratio), in an order that rotates from round to round, so
load changes on a shared machine hit them alike. Medians over the rounds
are reported. The model is in deploy mode (conv-BN folded, masks
precomputed) with random weights, eval, no grad, on the CPU. ``--ops``
also prints torch.profiler's most expensive operators over a few forwards.
"""
import argparse
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, List

import torch
import torch.nn as nn

from mmfca.models import FcaFormer
from mmfca.models.layers import FcaBlock, FcaStage, init_fcaformer_weights

PARTS = ('stem', 'ConvNeXt stages', 'downsample', 'attention', 'TME', 'FFN',
         'stage glue', 'output norms')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='l2')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeat', type=int, default=30)
    parser.add_argument(
        '--window-size',
        type=int,
        nargs='+',
        help='attention windows of the FcaFormer stages')
    parser.add_argument(
        '--ops',
        type=int,
        default=0,
        help='also list this many top torch.profiler ops')
    return parser.parse_args()


class PartClock:
    """Adds the seconds each part of a backbone's forward takes to
    :attr:`seconds`, while :meth:`attached`.

    Args:
        model (FcaFormer): The backbone (not modified outside
            :meth:`attached`).
    """

    def __init__(self, model: FcaFormer):
        self.model = model
        self.seconds: Dict[str, float] = defaultdict(float)
        self._started: Dict[nn.Module, float] = {}
        self._handles: list = []
        self._blocks: List[FcaBlock] = []

    @contextmanager
    def attached(self):
        """Hooks in place for the forwards run inside."""
        model = self.model
        self._watch(model.downsample_layers[0], 'stem')
        for i, stage in enumerate(model.stages):
            if i > 0:
                self._watch(model.downsample_layers[i], 'downsample')
            if isinstance(stage, FcaStage):
                # The blocks take their time back out (see _watch_block).
                self._watch(stage, 'stage glue')
                for block in stage.blocks:
                    self._watch_block(block, stage)
            else:
                self._watch(stage, 'ConvNeXt stages')
        for i in model.out_indices:
            self._watch(model.output_module(i), 'output norms')
        try:
            yield self
        finally:
            for handle in self._handles:
                handle.remove()
            for block in self._blocks:
                del block.merge_and_enhance  # the class's methods again
                del block.forward_padded
            self._handles, self._blocks = [], []
            self._started.clear()

    def _watch(self, module: nn.Module, part: str) -> None:

        def start(module, args):
            self._started[module] = time.perf_counter()

        def stop(module, args, output):
            elapsed = time.perf_counter() - self._started.pop(module)
            self.seconds[part] += elapsed

        self._handles += [
            module.register_forward_pre_hook(start),
            module.register_forward_hook(stop)
        ]

    def _watch_block(self, block: FcaBlock, stage: FcaStage) -> None:
        marks = {}
        merge_and_enhance = block.merge_and_enhance

        def start(module, args):
            marks['start'] = marks['last'] = time.perf_counter()

        def timed_merge_and_enhance(x):
            begin = time.perf_counter()
            self.seconds['attention'] += begin - marks['last']
            result = merge_and_enhance(x)
            marks['last'] = time.perf_counter()
            self.seconds['TME'] += marks['last'] - begin
            return result

        def stop(module, args, output):
            end = time.perf_counter()
            self.seconds['FFN'] += end - marks['last']
            if stage in self._started:  # the plain model runs no stage
                self.seconds['stage glue'] -= end - marks['start']

        forward_padded = block.forward_padded

        def timed_forward_padded(*args):
            start(block, args)
            output = forward_padded(*args)
            stop(block, args, output)
            return output

        # Instance attributes: FcaBlock's forwards call them in place of the
        # methods (a padded stage calls forward_padded, not the module)
        # until attached() deletes them.
        block.merge_and_enhance = timed_merge_and_enhance
        block.forward_padded = timed_forward_padded
        self._blocks.append(block)
        self._handles += [
            block.register_forward_pre_hook(start),
            block.register_forward_hook(stop)
        ]


def convnext_t():
    from mmpretrain.models import ConvNeXt
    model = ConvNeXt(
        'tiny', out_indices=(0, 1, 2, 3), gap_before_final_norm=False)
    model.eval()
    return model


def hooked_forward(model, x, clock):
    with clock.attached():
        model(x)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    stages = len(FcaFormer.arch_zoo[args.arch.lower()]['depths'])
    model = FcaFormer(
        args.arch,
        out_indices=tuple(range(stages)),
        window_size=args.window_size)
    # The official initialisation (FcaFormer's default init_cfg) without
    # mmengine's per-parameter log.
    model.apply(init_fcaformer_weights)
    model.switch_to_deploy()
    baseline = convnext_t()
    x = torch.randn(args.batch, 3, *args.shape)
    clock = PartClock(model)
    calls = {
        'hooked': lambda: hooked_forward(model, x, clock),
        'whole': lambda: model(x),
        'convnext': lambda: baseline(x),
    }
    names = list(calls)
    times = defaultdict(list)
    parts = defaultdict(list)
    with torch.no_grad():
        for _ in range(3):
            for call in calls.values():
                call()
        for index in range(args.repeat):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                clock.seconds.clear()
                start = time.perf_counter()
                calls[name]()
                times[name].append((time.perf_counter() - start) * 1000)
                if name == 'hooked':
                    for part in PARTS:
                        parts[part].append(clock.seconds[part] * 1000)
                    parts['rest'].append(times[name][-1] - sum(parts[p][-1]
                                                               for p in PARTS))
    ms = {name: statistics.median(values) for name, values in times.items()}
    part_ms = {
        name: statistics.median(values)
        for name, values in parts.items()
    }
    print(f'FcaFormer-{args.arch.upper()} backbone, deploy mode, batch '
          f'{args.batch}, {args.shape[0]}x{args.shape[1]}, {args.threads} '
          f'threads, medians of {args.repeat} interleaved rounds')
    print(f'  whole forward {ms["whole"]:.1f} ms ({ms["hooked"]:.1f} ms '
          f'with the timing hooks), ConvNeXt-T backbone '
          f'{ms["convnext"]:.1f} ms (ratio '
          f'{ms["whole"] / ms["convnext"]:.2f})')
    print(f'  {"part":16s} {"ms":>7s} {"share":>6s}   (of the hooked '
          f'forward)')
    for name in PARTS + ('rest', ):
        print(f'  {name:16s} {part_ms[name]:7.2f} '
              f'{part_ms[name] / ms["hooked"]:6.1%}')
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
