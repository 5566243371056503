"""FcaFormer-L2 and ConvNeXt-T, deployed, in eager PyTorch, compiled by
``torch.compile`` and exported to ONNX Runtime: the classifier at
224x224 and the backbone of the UperNet configs at 512x512, batch 1,
random weights.

    python tools/analysis/runtimes.py [--runtimes eager compile onnxruntime]
        [--cases classifier backbone] [--device cpu] [--threads 2]
        [--repeat 20] [--out work_dirs/runtimes.json]

Every model is deployed (FcaFormer in deploy mode, see
:func:`mmfca.deployment.onnx.prepared`). ``compile`` is inductor (on the
CPU it needs a C++ compiler); ``onnxruntime`` runs the model exported by
:func:`mmfca.deployment.onnx.export_onnx` at the fixed input size, with
``--threads`` intra-op threads that do not spin when idle (spinning ones
would take the cores from the calls that follow them in a round), the
CUDA provider on a CUDA device. All calls of a case (each model in each
runtime) are timed in the same paired rounds (see bench_lib): the table
gives each one's median ms [quartiles] and the median of its per-round
ratios to ConvNeXt-T in the first runtime [quartiles] (range); then each
model's fastest runtime, side by side, with their per-round ratio.
"""
import argparse
import functools
import os.path as osp
import shutil
import statistics
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

import torch
from bench_lib import (add_run_arguments, format_ratio, paired_ratios, report,
                       save, start, summarize, time_rounds)
from bench_models import CLASSIFIERS, SEGMENTORS

from mmfca.apis import build_model, load_config
from mmfca.deployment.onnx import export_onnx, prepared

RUNTIMES = ('eager', 'compile', 'onnxruntime')
CASES = {
    'classifier':
    dict(
        size=(224, 224),
        models={
            'FcaFormer-L2': CLASSIFIERS['FcaFormer-L2'],
            'ConvNeXt-T': CLASSIFIERS['ConvNeXt-T']
        }),
    'backbone':
    dict(
        size=(512, 512),
        models={
            'FcaFormer-L2': SEGMENTORS['UperNet FcaFormer-L2'],
            'ConvNeXt-T': SEGMENTORS['UperNet ConvNeXt-T']
        }),
}
COMPILERS = ('g++', 'c++', 'clang++')


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
        'backbone (default both)')
    add_run_arguments(
        parser, repeat=20, out='work_dirs/runtimes.json', amp=False)
    args = parser.parse_args(argv)
    if 'compile' in args.runtimes and \
            torch.device(args.device).type == 'cpu' and \
            not any(shutil.which(c) for c in COMPILERS):
        parser.error('--runtimes compile: torch.compile (inductor) on the '
                     'CPU needs a C++ compiler and none (g++, c++, clang++) '
                     'is on PATH; install one (apt-get install g++) or drop '
                     '"compile"')
    return args


def onnxruntime_call(model: torch.nn.Module, images: torch.Tensor, dense: bool,
                     device: str, threads: int,
                     path: str) -> Callable[[], object]:
    """Export ``model`` (deploy mode, see :mod:`mmfca.deployment.onnx`) to
    ``path`` at the size of ``images`` and return one ONNX Runtime
    inference on them, as a call (``threads`` intra-op threads that do not
    spin when idle; the CUDA provider on a CUDA ``device``)."""
    import onnxruntime
    providers = ['CPUExecutionProvider']
    if torch.device(device).type == 'cuda':
        if 'CUDAExecutionProvider' not in \
                onnxruntime.get_available_providers():
            raise SystemExit(
                f'--runtimes onnxruntime --device {device}: this onnxruntime '
                f'has no CUDAExecutionProvider (pip install onnxruntime-gpu),'
                f' or time it with --device cpu.')
        providers = ['CUDAExecutionProvider']
    export_onnx(model, path, tuple(images.shape[-2:]), dense=dense)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle threads sleep: spinning ones would take the cores from the calls
    # of the other models that run next in the round.
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    session = onnxruntime.InferenceSession(path, options, providers=providers)
    return functools.partial(session.run, None,
                             {'images': images.cpu().numpy()})


def runtime_calls(path: str, dense: bool, images: torch.Tensor,
                  runtimes: Sequence[str], device: str, threads: int,
                  onnx_path: str) -> Dict[str, Callable]:
    """Runtime -> one inference of the model of ``path`` (the classifier,
    or the backbone with ``dense``), deployed, on ``images``.

    Args:
        path (str): The model's config.
        dense (bool): The backbone instead of the classifier.
        images (Tensor): The input, on ``device``.
        runtimes (sequence): Names of :data:`RUNTIMES`.
        device (str): Where the model runs.
        threads (int): ONNX Runtime's intra-op threads.
        onnx_path (str): Where the ONNX export goes.
    """
    model = build_model(load_config(path))
    module = prepared(model, dense, device)
    calls = {}
    for runtime in runtimes:
        if runtime == 'eager':
            calls[runtime] = functools.partial(module, images)
        elif runtime == 'compile':
            calls[runtime] = functools.partial(torch.compile(module), images)
        else:
            calls[runtime] = onnxruntime_call(model, images, dense, device,
                                              threads, onnx_path)
    return calls


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


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    results = start(args, mode='deploy')
    results['runtimes'] = {}
    for case in args.cases:
        size, models = CASES[case]['size'], CASES[case]['models']
        images = torch.randn(1, 3, *size, device=args.device)
        calls = {}
        with tempfile.TemporaryDirectory() as workdir:
            for model, path in models.items():
                calls.update({
                    f'{model} {runtime}': call
                    for runtime, call in runtime_calls(
                        path, case == 'backbone', images, args.runtimes,
                        args.device, args.threads,
                        osp.join(workdir, f'{model}.onnx')).items()
                })
            times = time_rounds(calls, args.device, 2, args.repeat)
        summary = summarize(times, (f'ConvNeXt-T {args.runtimes[0]}', ))
        report(f'Runtimes, {case}, batch 1, {size[0]}x{size[1]} (deploy mode)',
               summary)
        best = best_of_each(times, models)
        results['runtimes'][case] = dict(times=summary, best=best)
    save(results, args.out)
    return results


if __name__ == '__main__':
    main()
