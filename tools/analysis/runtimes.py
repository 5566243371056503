"""FcaFormer-L2 and ConvNeXt-T, deployed, in eager PyTorch, compiled by
``torch.compile`` and exported to ONNX Runtime: the classifier at
224x224, and the backbone of the UperNet configs and the whole UperNet
segmentor at 512x512, batch 1, random weights.

    python tools/analysis/runtimes.py [--runtimes eager compile onnxruntime]
        [--cases classifier backbone segmentor] [--device cpu] [--threads 2]
        [--repeat 20] [--ort-level disable|basic|extended|all]
        [--ort-profile] [--node-counts] [--malloc pinned|default]
        [--out work_dirs/runtimes.json]

Every model is deployed (FcaFormer in deploy mode, see
:func:`mmfca.deployment.onnx.prepared`). ``compile`` is inductor (on the
CPU it needs a C++ compiler); ``onnxruntime`` runs the model exported by
:func:`mmfca.deployment.onnx.export_onnx` at the fixed input size, at the
graph optimisation level ``--ort-level`` (default ``all``, ORT's own
default), with ``--threads`` intra-op threads that do not spin when idle
(spinning ones would take the cores from the calls that follow them in a
round), the CUDA provider on a CUDA device. All calls of a case (each
model in each runtime) are timed in the same paired rounds (see
bench_lib): the table gives each one's median ms [quartiles] and the
median of its per-round ratios to ConvNeXt-T in the first runtime
[quartiles] (range); then each model's fastest runtime, side by side,
with their per-round ratio, and each model in every later runtime against
itself in the first one (e.g. ONNX Runtime / eager of the same model).

After the rounds, for each model in ONNX Runtime: ``--node-counts``
prints the exported graph's nodes and those of the graph ORT runs (after
its optimisations at ``--ort-level``) by op type; ``--ort-profile`` runs a
profiling session of its own (``--repeat`` runs after 3 warm-up runs,
ORT's profiler) and prints each op type's share of the kernel time. Both
go into the JSON file too.
"""
import argparse
import functools
import os.path as osp
import shutil
import statistics
import tempfile
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence

import torch
from bench_lib import (add_run_arguments, format_ratio, paired_ratios, report,
                       save, start, summarize, time_rounds)
from bench_models import CLASSIFIERS, SEGMENTORS

from mmfca.apis import build_model, load_config
from mmfca.deployment.onnx import (ORT_LEVELS, export_onnx, node_counts,
                                   ort_session, prepared, profile_shares)
from mmfca.models.layers import fast_paths_enabled

RUNTIMES = ('eager', 'compile', 'onnxruntime')
#: The two UperNet configs, whose backbones and whole segmentors are cases.
UPERNETS = {
    'FcaFormer-L2': SEGMENTORS['UperNet FcaFormer-L2'],
    'ConvNeXt-T': SEGMENTORS['UperNet ConvNeXt-T']
}
#: Case -> input size, what is exported (``output``, see
#: :func:`runtime_calls`) and the two models' configs.
CASES = {
    'classifier':
    dict(
        size=(224, 224),
        output='classifier',
        models={
            'FcaFormer-L2': CLASSIFIERS['FcaFormer-L2'],
            'ConvNeXt-T': CLASSIFIERS['ConvNeXt-T']
        }),
    'backbone':
    dict(size=(512, 512), output='backbone', models=UPERNETS),
    'segmentor':
    dict(size=(512, 512), output='segmentor', models=UPERNETS),
}
#: What :func:`runtime_calls` can run: one per case.
OUTPUTS = tuple(case['output'] for case in CASES.values())
COMPILERS = ('g++', 'c++', 'clang++')
#: Untimed runs before the profiled ones of ``--ort-profile``.
PROFILE_WARMUP = 3


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--runtimes',
        nargs='+',
        choices=RUNTIMES,
        default=list(RUNTIMES),
        metavar='RUNTIME',
        help=f'runtimes to compare, of {", ".join(RUNTIMES)} (default all; '
        f'the first one is the reference of the ratios)')
    parser.add_argument(
        '--cases',
        nargs='+',
        choices=list(CASES),
        default=list(CASES),
        metavar='CASE',
        help='classifier = 224x224 classifier, backbone = 512x512 dense '
        'backbone, segmentor = 512x512 whole UperNet, logits at the input '
        'size (default all)')
    parser.add_argument(
        '--ort-level',
        choices=list(ORT_LEVELS),
        default='all',
        help='ONNX Runtime graph optimisation level (default all, ORT\'s '
        'default: extended plus the layout optimisations, NCHWc '
        'convolutions on x86)')
    parser.add_argument(
        '--ort-profile',
        action='store_true',
        help='after the rounds, profile each model in ONNX Runtime (a '
        'session of its own) and print each op type\'s share of the '
        'kernel time')
    parser.add_argument(
        '--node-counts',
        action='store_true',
        help='print each ONNX Runtime model\'s nodes by op type, as '
        'exported and as ORT runs them after its optimisations')
    add_run_arguments(
        parser,
        repeat=20,
        out='work_dirs/runtimes.json',
        amp=False,
        malloc=True)
    args = parser.parse_args(argv)
    for flag in ('ort_profile', 'node_counts'):
        if getattr(args, flag) and 'onnxruntime' not in args.runtimes:
            parser.error(f'--{flag.replace("_", "-")} inspects the '
                         f'onnxruntime models: add onnxruntime to --runtimes')
    if 'compile' in args.runtimes and \
            torch.device(args.device).type == 'cpu' and \
            not any(shutil.which(c) for c in COMPILERS):
        parser.error('--runtimes compile: torch.compile (inductor) on the '
                     'CPU needs a C++ compiler and none (g++, c++, clang++) '
                     'is on PATH; install one (apt-get install g++) or drop '
                     '"compile"')
    return args


def ort_providers(device: str) -> List[str]:
    """ONNX Runtime's execution provider for ``device``: the CUDA one on a
    CUDA device (refused where this onnxruntime has none), else the
    CPU's."""
    import onnxruntime
    if torch.device(device).type != 'cuda':
        return ['CPUExecutionProvider']
    if 'CUDAExecutionProvider' not in onnxruntime.get_available_providers():
        raise SystemExit(
            f'--runtimes onnxruntime --device {device}: this onnxruntime '
            f'has no CUDAExecutionProvider (pip install onnxruntime-gpu),'
            f' or time it with --device cpu.')
    return ['CUDAExecutionProvider']


def optimized_path(onnx_path: str) -> str:
    """Where the graph ORT runs is written for ``onnx_path``."""
    return osp.splitext(onnx_path)[0] + '.ort.onnx'


def onnxruntime_call(model: torch.nn.Module,
                     images: torch.Tensor,
                     output: str,
                     device: str,
                     threads: int,
                     path: str,
                     ort_level: str = 'all',
                     keep_optimized: bool = False) -> Callable[[], object]:
    """Export ``model``'s ``output`` (see :func:`runtime_calls`; deploy
    mode, see :mod:`mmfca.deployment.onnx`) to ``path`` at the size of
    ``images`` and return one ONNX Runtime
    inference on them, as a call (:func:`~mmfca.deployment.onnx.ort_session`
    at ``ort_level`` with ``threads`` intra-op threads that do not spin
    when idle, on the provider of ``device``); with ``keep_optimized``
    the session writes the graph it runs to :func:`optimized_path`."""
    providers = ort_providers(device)
    export_onnx(
        model,
        path,
        tuple(images.shape[-2:]),
        dense=output == 'backbone',
        segmentor=output == 'segmentor')
    session = ort_session(
        path,
        threads,
        ort_level,
        optimized_path=optimized_path(path) if keep_optimized else None,
        providers=providers)
    return functools.partial(session.run, None,
                             {'images': images.cpu().numpy()})


def runtime_calls(path: str,
                  output: str,
                  images: torch.Tensor,
                  runtimes: Sequence[str],
                  device: str,
                  threads: int,
                  onnx_path: str,
                  ort_level: str = 'all',
                  keep_optimized: bool = False) -> Dict[str, Callable]:
    """Runtime -> one inference of the model of ``path``, deployed, on
    ``images``.

    Args:
        path (str): The model's config.
        output (str): What runs, of :data:`OUTPUTS`: ``classifier``
            (images -> logits), ``backbone`` (images -> stage outputs) or
            ``segmentor`` (a whole mmseg segmentor, images -> logits at the
            input size, as :class:`~mmfca.deployment.SegmentorForward`).
        images (Tensor): The input, on ``device``.
        runtimes (sequence): Names of :data:`RUNTIMES`.
        device (str): Where the model runs.
        threads (int): ONNX Runtime's intra-op threads.
        onnx_path (str): Where the ONNX export goes.
        ort_level (str): ONNX Runtime's graph optimisation level.
        keep_optimized (bool): Write the graph ORT runs next to the export
            (:func:`optimized_path`).
    """
    if output not in OUTPUTS:
        raise ValueError(f'output={output!r}: use one of {OUTPUTS}')
    model = build_model(load_config(path))
    module = prepared(
        model, output == 'backbone', device, segmentor=output == 'segmentor')
    calls = {}
    for runtime in runtimes:
        if runtime == 'eager':
            calls[runtime] = functools.partial(module, images)
        elif runtime == 'compile':
            calls[runtime] = functools.partial(torch.compile(module), images)
        else:
            calls[runtime] = onnxruntime_call(model, images, output, device,
                                              threads, onnx_path, ort_level,
                                              keep_optimized)
    return calls


def count_table(exported: Counter, optimized: Counter, level: str) -> dict:
    """Print the nodes of an export and of the graph ORT runs by op type
    (most in ORT's graph first) and return both as dicts."""
    print(f'  {"op":40s} {"exported":>9s} {"after ORT " + level:>16s}')
    ops = sorted(
        set(exported) | set(optimized),
        key=lambda op: (-optimized[op], -exported[op], op))
    for op in ops:
        print(f'  {op:40s} {exported[op]:9d} {optimized[op]:16d}')
    print(f'  {"total":40s} {sum(exported.values()):9d} '
          f'{sum(optimized.values()):16d}')
    return dict(exported=dict(exported), after_ort=dict(optimized))


def share_table(shares: Dict[str, float]) -> None:
    """Print an op type -> share of the kernel time table."""
    for op, share in shares.items():
        print(f'  {op:40s} {share:7.2%}')


def inspect_onnx(model: str, onnx_path: str, images: torch.Tensor,
                 args: argparse.Namespace, title: str) -> dict:
    """``--node-counts`` and ``--ort-profile`` of one exported model.

    Args:
        model (str): The model's name.
        onnx_path (str): Its export (the graph ORT ran lies next to it).
        images (Tensor): The input the rounds ran on.
        args (Namespace): The tool's arguments.
        title (str): The case, for the headings.
    """
    inspected = {}
    if args.node_counts:
        print(f'\nONNX nodes by op type, {title}, {model}')
        inspected['node_counts'] = count_table(
            node_counts(onnx_path), node_counts(optimized_path(onnx_path)),
            args.ort_level)
    if args.ort_profile:
        session = ort_session(
            onnx_path,
            args.threads,
            args.ort_level,
            profile_prefix=osp.splitext(onnx_path)[0] + '.profile',
            providers=ort_providers(args.device))
        shares = profile_shares(session, {'images': images.cpu().numpy()},
                                args.repeat, PROFILE_WARMUP)
        print(f'\nONNX Runtime profile, {title}, {model} (level '
              f'{args.ort_level}, {args.threads} threads, {args.repeat} runs '
              f'after {PROFILE_WARMUP}): share of the kernel time by op type')
        share_table(shares)
        inspected['ort_profile'] = dict(
            runs=args.repeat, warmup=PROFILE_WARMUP, shares=shares)
    return inspected


def best_of_each(times: Dict[str, List[float]], models: Sequence[str]) -> dict:
    """Each model's fastest runtime (lowest median) and the per-round ratio
    of the first model's to the last one's, printed side by side.

    Args:
        times (dict): ``'{model} {runtime}'`` -> ms per round.
        models (sequence): Model names, the first one divided by the last.
    """
    models = list(models)
    best = {}
    for model in models:
        names = [name for name in times if name.startswith(f'{model} ')]
        name = min(names, key=lambda n: statistics.median(times[n]))
        best[model] = dict(
            runtime=name[len(model) + 1:],
            ms=statistics.median(times[name]),
            times=times[name])
    first, last = best[models[0]], best[models[-1]]
    ratio = paired_ratios(first['times'], last['times'])
    print(f'  best of each: {models[0]} {first["runtime"]} '
          f'{first["ms"]:.1f} ms, {models[-1]} {last["runtime"]} '
          f'{last["ms"]:.1f} ms: {format_ratio(ratio)}')
    return dict(
        {
            model: dict(runtime=v['runtime'], ms=v['ms'])
            for model, v in best.items()
        },
        ratio=ratio)


def against_own_first(times: Dict[str, List[float]], models: Sequence[str],
                      runtimes: Sequence[str]) -> dict:
    """Each model in each later runtime against itself in the first one:
    the per-round ratios (ONNX Runtime / PyTorch of the same model),
    printed and returned as model -> runtime -> :func:`paired_ratios`.

    Args:
        times (dict): ``'{model} {runtime}'`` -> ms per round.
        models (sequence): Model names.
        runtimes (sequence): Runtime names, the first one the reference.
    """
    first, *later = runtimes
    gains = {}
    for model in models:
        gains[model] = {}
        for runtime in later:
            ratio = paired_ratios(times[f'{model} {runtime}'],
                                  times[f'{model} {first}'])
            gains[model][runtime] = ratio
            print(f'  {model} {runtime} / {first}: {format_ratio(ratio)}')
    return gains


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    results = start(
        args,
        state=dict(macs='not counted', fast_paths=fast_paths_enabled()),
        mode='deploy',
        ort_level=args.ort_level if 'onnxruntime' in args.runtimes else None)
    results['runtimes'] = {}
    for case in args.cases:
        size, models = CASES[case]['size'], CASES[case]['models']
        title = f'{case}, batch 1, {size[0]}x{size[1]}'
        images = torch.randn(1, 3, *size, device=args.device)
        calls = {}
        with tempfile.TemporaryDirectory() as workdir:
            paths = {
                model: osp.join(workdir, f'{model}.onnx')
                for model in models
            }
            for model, path in models.items():
                calls.update({
                    f'{model} {runtime}': call
                    for runtime, call in runtime_calls(
                        path, CASES[case]['output'], images, args.runtimes,
                        args.device, args.threads, paths[model],
                        args.ort_level, args.node_counts).items()
                })
            times = time_rounds(calls, args.device, 2, args.repeat)
            summary = summarize(times, (f'ConvNeXt-T {args.runtimes[0]}', ))
            report(f'Runtimes, {title} (deploy mode)', summary)
            best = best_of_each(times, models)
            results['runtimes'][case] = dict(
                times=summary,
                best=best,
                against_own_first=against_own_first(times, models,
                                                    args.runtimes))
            if args.node_counts or args.ort_profile:
                results['runtimes'][case]['onnxruntime'] = {
                    model: inspect_onnx(model, paths[model], images, args,
                                        title)
                    for model in models
                }
    save(results, args.out)
    return results


if __name__ == '__main__':
    main()
