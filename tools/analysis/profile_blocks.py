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
* rest: the hooked call outside all of these (attaching and detaching
  the hooks included).

The hooked forward, the same forward without hooks (the whole time, and
the hooks' cost against it) and mmpretrain's ConvNeXt-T backbone are
timed in paired rounds (see bench_lib), so load changes on a shared
machine hit them alike: the table gives their median ms [quartiles] and
the medians of the per-round ratios [quartiles] (range); each part's
median ms and the median of its per-round share of the hooked forward
follow. The model is in deploy mode (conv-BN folded, masks
precomputed) with random weights, eval, no grad, on the CPU. ``--ops``
also prints torch.profiler's most expensive operators over a few forwards.
"""
import argparse
import functools
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from bench_lib import positive_int, quartiles, report, summarize, time_rounds

from mmfca.models import FcaFormer
from mmfca.models.layers import FcaBlock, FcaStage, init_fcaformer_weights

PARTS = ('stem', 'ConvNeXt stages', 'downsample', 'attention', 'TME', 'FFN',
         'stage glue', 'output norms')
HOOKED = 'FcaFormer, hooked'
WHOLE = 'FcaFormer'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='l2')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeat', type=positive_int, default=30)
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
    return parser.parse_args(argv)


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
                del block.merge_and_enhance  # the class's method again
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

        # An instance attribute: FcaBlock's forwards (whole and padded
        # windows) call it in place of the method until attached() deletes
        # it.
        block.merge_and_enhance = timed_merge_and_enhance
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


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
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
    parts: Dict[str, List[float]] = defaultdict(list)

    def hooked():
        clock.seconds.clear()
        with clock.attached():
            model(x)
        for part in PARTS:
            parts[part].append(clock.seconds[part] * 1000)

    times = time_rounds(
        {
            HOOKED: hooked,
            WHOLE: functools.partial(model, x),
            'ConvNeXt-T': functools.partial(baseline, x),
        }, 'cpu', 3, args.repeat)
    # The warm-up's hooked forwards are not reported.
    parts = {part: values[-args.repeat:] for part, values in parts.items()}
    parts['rest'] = [
        total - sum(parts[part][i] for part in PARTS)
        for i, total in enumerate(times[HOOKED])
    ]
    summary = summarize(times, (WHOLE, 'ConvNeXt-T'))
    report(
        f'FcaFormer-{args.arch.upper()} backbone, deploy mode, batch '
        f'{args.batch}, {args.shape[0]}x{args.shape[1]}, {args.threads} '
        f'threads, {args.repeat} rounds', summary)
    shares = {
        part: quartiles([p / t for p, t in zip(values, times[HOOKED])])
        for part, values in parts.items()
    }
    print(f'  {"part":16s} {"ms":>7s} {"share":>6s}   (of the hooked '
          f'forward; medians, the share per round)')
    for part in PARTS + ('rest', ):
        print(f'  {part:16s} {statistics.median(parts[part]):7.2f} '
              f'{shares[part]["median"]:6.1%}')
    if args.ops:
        from torch.profiler import ProfilerActivity, profile
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) \
                as prof:
            for _ in range(5):
                model(x)
        print(prof.key_averages().table(
            sort_by='self_cpu_time_total', row_limit=args.ops))
    return dict(times=summary, part_ms=parts, part_shares=shares)


if __name__ == '__main__':
    main()
