"""Whole-model inference latency: UperNet at 512x512 and Mask R-CNN at
800x1216, each with FcaFormer-L2 and with ConvNeXt-T, batch 1, random
weights, post-processing included.

    python tools/analysis/whole_model_latency.py
        [--tasks segmentation detection] [--mode deploy|eval]
        [--device cpu] [--threads 2] [--amp fp16|bf16] [--repeat 3]
        [--out work_dirs/whole_model_latency.json]

The two models of a task are timed in paired rounds (see bench_lib): the
table gives each one's median ms [quartiles] and the median of the
per-round ratios to the ConvNeXt-T model [quartiles] (range). See
bench_models for ``--mode``.
"""
import argparse
from typing import Optional, Sequence

import torch
from bench_lib import (add_run_arguments, report, save, start, summarize,
                       time_rounds)
from bench_models import (DETECTORS, SEGMENTORS, add_mode_argument,
                          forward_call, model_from_config, prepare)

TASKS = {
    'segmentation': (SEGMENTORS, (512, 512)),
    'detection': (DETECTORS, (800, 1216)),
}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--tasks',
        nargs='+',
        choices=list(TASKS),
        default=list(TASKS),
        help='segmentation = UperNet at 512x512, detection = Mask R-CNN at '
        '800x1216 (default both)')
    add_mode_argument(parser)
    add_run_arguments(
        parser, repeat=3, out='work_dirs/whole_model_latency.json')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    results = start(args, mode=args.mode)
    results['whole_model_latency'] = {}
    for task in args.tasks:
        configs, size = TASKS[task]
        calls = {}
        for name, path in configs.items():
            model = prepare(model_from_config(path, args.mode), args.device)
            calls[name] = forward_call(
                model, torch.randn(1, 3, *size, device=args.device))
        reference = next(name for name in configs if 'ConvNeXt-T' in name)
        summary = summarize(
            time_rounds(calls, args.device, 1, args.repeat, args.amp),
            (reference, ))
        report(f'Whole-model inference, batch 1, {size[0]}x{size[1]}', summary)
        results['whole_model_latency'].update(summary)
    save(results, args.out)
    return results


if __name__ == '__main__':
    main()
