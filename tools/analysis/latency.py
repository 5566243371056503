"""Classifier latency at 224x224: FcaFormer-L1/L2 against mmpretrain's
ConvNeXt-T and Swin-T (and the official FcaFormer-L2), random weights.

    python tools/analysis/latency.py [--models NAME ...] [--official PATH]
        [--mode deploy|eval] [--compile] [--device cpu] [--threads 2]
        [--amp fp16|bf16] [--repeat 20] [--sgemm-size 1024]
        [--throughput] [--throughput-repeat 5] [--memory]
        [--malloc pinned|default] [--macs subprocess|in-process]
        [--plot work_dirs/latency.png] [--out work_dirs/latency.json]

Batch-1 latency in paired rounds (see bench_lib): the table gives each
model's median ms [quartiles] and the median of its per-round ratios to
ConvNeXt-T and to the official L2 [quartiles] (range). Each model's MACs
(mmengine's counter, attention included) are counted in a fresh
interpreter, so that what the count allocates and frees leaves the
allocator of the timing process as it was; ``--macs in-process`` counts
them in this process before timing instead (the tool's earlier order), to
compare process states. The process state (``--malloc``, see bench_lib;
where the MACs were counted, the thread counts, the fast-paths switch) is
printed and saved with the results.

On the CPU in float32 the rounds also time a square float32 matrix
product (``--sgemm-size``) as one more call, and the tool reports each
model's share of the machine's sgemm rate: its MACs per second over the
product's, as the median of the per-round shares [quartiles].

``--throughput`` adds batch 64 in paired rounds (images/s and ratios);
``--memory`` the peak memory of a batch-1 forward (CUDA: the allocator's
peak; CPU: the peak resident memory of a forked process running it);
``--plot`` a latency-vs-MACs figure, one point per classifier, the median
with its quartiles as an error bar. ``--official`` points to a local copy
of the official repository (its code imports timm, einops and matplotlib).
See bench_models for ``--mode``.
"""
import argparse
import copy
import functools
import json
import multiprocessing as mp
import os
import os.path as osp
import resource
import subprocess
import sys
from typing import Callable, Dict, List, Optional, Sequence

import torch
from bench_lib import (add_run_arguments, autocast, positive_int, quartiles,
                       report, save, start, summarize, synchronize,
                       time_rounds)
from bench_models import (CLASSIFIERS, OFFICIAL, add_mode_argument,
                          forward_call, model_from_config, official_l2,
                          prepare)

from mmfca.models.layers import fast_paths_enabled
from mmfca.utils import complexity

SGEMM = 'sgemm'
REFERENCES = ('ConvNeXt-T', OFFICIAL)
#: ``--macs`` -> what the process state records.
MAC_PLACES = {
    'subprocess': 'counted in a subprocess',
    'in-process': 'counted in this process, before timing',
}
#: What the MAC subprocess runs: this tool's :func:`count_macs` on the
#: models of the argv it is given, GMACs as JSON on the last line.
MAC_CHILD = ('import json, sys; sys.path.insert(0, sys.argv[1]); '
             'import latency; args = latency.parse_args(sys.argv[2:]); '
             'print(json.dumps(latency.count_macs(latency.builders(args))))')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--models',
        nargs='+',
        choices=sorted(CLASSIFIERS),
        default=list(CLASSIFIERS),
        metavar='NAME',
        help=f'classifiers to time (default: all of '
        f'{", ".join(CLASSIFIERS)})')
    parser.add_argument(
        '--official',
        metavar='PATH',
        help='local copy of the official FcaFormer repository, to time its '
        'L2 classifier too')
    add_mode_argument(parser)
    parser.add_argument(
        '--compile',
        action='store_true',
        help='torch.compile every model before timing')
    add_run_arguments(
        parser,
        repeat=20,
        out='work_dirs/latency.json',
        repeat_help='timed rounds of the batch-1 latency',
        malloc=True)
    parser.add_argument(
        '--macs',
        choices=list(MAC_PLACES),
        default='subprocess',
        help='where the MACs are counted: subprocess = a fresh interpreter '
        '(default; the timing process never runs the count); in-process = '
        'this process, before timing (the earlier order: under --malloc '
        'default, the count moves glibc\'s thresholds and the timings '
        'with them), to compare process states')
    parser.add_argument(
        '--sgemm-size',
        type=positive_int,
        default=1024,
        metavar='N',
        help='side of the square float32 matrix product that the sgemm '
        'share compares with (CPU, no --amp)')
    parser.add_argument(
        '--throughput',
        action='store_true',
        help='also time batch 64 (images/s)')
    parser.add_argument(
        '--throughput-repeat',
        type=positive_int,
        default=5,
        metavar='N',
        help='timed rounds of --throughput (default 5)')
    parser.add_argument(
        '--memory',
        action='store_true',
        help='also measure the peak memory of a batch-1 forward')
    parser.add_argument(
        '--plot',
        metavar='PATH',
        help='write a latency-vs-MACs figure to this image file')
    return parser.parse_args(argv)


def sgemm_call(size: int, device: str) -> Callable[[], object]:
    """One float32 ``size x size`` matrix product, as a call."""
    left = torch.randn(size, size, device=device)
    right = torch.randn(size, size, device=device)
    return functools.partial(torch.mm, left, right)


def sgemm_shares(times: Dict[str, List[float]], sgemm_times: List[float],
                 macs: Dict[str, float], size: int) -> Dict[str, dict]:
    """Each model's MACs per second as a share of the matrix product's in
    the same round (quartiles over the rounds), with the product's rate.

    Args:
        times (dict): Model name -> ms per round.
        sgemm_times (list): ms of the ``size``-cubed product per round.
        macs (dict): Model name -> GMACs of one forward.
        size (int): Side of the product.

    Returns:
        dict: Model name -> quartiles of its share, and :data:`SGEMM` ->
        ``gflops``, quartiles of the product's GFLOP/s.
    """
    gmacs = size**3 / 1e9
    shares = {
        name:
        quartiles([(macs[name] / model_ms) / (gmacs / sgemm_ms)
                   for model_ms, sgemm_ms in zip(values, sgemm_times)])
        for name, values in times.items()
    }
    shares[SGEMM] = dict(
        gflops=quartiles([2 * gmacs / ms * 1000 for ms in sgemm_times]))
    return shares


def report_sgemm_shares(shares: Dict[str, dict], size: int,
                        threads: int) -> None:
    """Print :func:`sgemm_shares`."""
    rate = shares[SGEMM]['gflops']
    print(f'\nShare of the sgemm rate ({size}x{size}x{size} float32, '
          f'{threads} threads: {rate["median"]:.1f} GFLOP/s '
          f'[{rate["q1"]:.1f}-{rate["q3"]:.1f}]), batch 1, 224x224')
    print('  (median of the per-round shares [quartiles] (min-max))')
    for name, share in shares.items():
        if name != SGEMM:
            print(f'  {name:32s} {share["median"]:.1%} [{share["q1"]:.1%}-'
                  f'{share["q3"]:.1%}] ({share["min"]:.1%}-'
                  f'{share["max"]:.1%})')


def _peak_rss_child(build, amp, queue):
    torch.set_num_threads(1)
    model = build()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad(), autocast('cpu', amp):
        forward_call(model, torch.randn(1, 3, 224, 224))()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((peak - base) / 1024)


def peak_memory_mb(build: Callable[[], torch.nn.Module], device: str,
                   amp: Optional[str]) -> float:
    """Extra memory of one batch-1 224x224 forward of the model ``build``
    makes, in MB: the CUDA allocator's peak over what was allocated
    before, or on the CPU the growth of the peak resident memory of a
    forked process (one thread) that builds the model and runs it."""
    if torch.device(device).type == 'cuda':
        model = build().to(device)
        model.eval()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        with torch.no_grad(), autocast(device, amp):
            forward_call(model, torch.randn(1, 3, 224, 224, device=device))()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    context = mp.get_context('fork')
    queue = context.Queue()
    process = context.Process(target=_peak_rss_child, args=(build, amp, queue))
    process.start()
    value = queue.get()
    process.join()
    return value


def gmacs(model: torch.nn.Module) -> float:
    """GMACs of one 224x224 forward of ``model`` (a copy is traced, so the
    model itself keeps no hooks)."""
    images = torch.randn(1, 3, 224, 224)
    return complexity(copy.deepcopy(model), images)['macs'] / 1e9


def count_macs(build: Dict[str, Callable]) -> Dict[str, float]:
    """:func:`gmacs` of each model ``build`` makes (name -> builder)."""
    return {name: gmacs(call()) for name, call in build.items()}


def macs_in_subprocess(args: argparse.Namespace) -> Dict[str, float]:
    """:func:`count_macs` of the models of ``args``, run in a fresh
    interpreter (on the CPU), so that none of what the count allocates and
    frees passes through this process's allocator."""
    argv = ['--device', 'cpu', '--mode', args.mode, '--models', *args.models]
    if args.official:
        argv += ['--official', args.official]
    tools = osp.dirname(osp.abspath(__file__))
    command = [sys.executable, '-c', MAC_CHILD, tools, *argv]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f'Counting the MACs in a subprocess failed '
                         f'(exit {result.returncode}):\n'
                         f'{result.stderr[-3000:]}')
    return json.loads(result.stdout.strip().splitlines()[-1])


def builders(args: argparse.Namespace) -> Dict[str, Callable]:
    """Name -> a call that builds the classifier, in ``--mode``."""
    calls = {
        name: functools.partial(model_from_config, CLASSIFIERS[name],
                                args.mode)
        for name in args.models
    }
    if args.official:
        calls[OFFICIAL] = functools.partial(official_l2, args.official,
                                            args.mode)
    return calls


def latency_table(models: Dict[str, torch.nn.Module], macs: Dict[str, float],
                  args: argparse.Namespace, results: dict) -> dict:
    """The batch-1 table (and the sgemm shares on the CPU in float32)."""
    device = args.device
    one = torch.randn(1, 3, 224, 224, device=device)
    calls = {name: forward_call(model, one) for name, model in models.items()}
    with_sgemm = torch.device(device).type == 'cpu' and args.amp is None
    if with_sgemm:
        calls[SGEMM] = sgemm_call(args.sgemm_size, device)
    times = time_rounds(calls, device, 5, args.repeat, args.amp)
    sgemm_times = times.pop(SGEMM, None)
    summary = summarize(times, REFERENCES)
    report('Classification latency, batch 1, 224x224', summary)
    results['classification_latency'] = summary
    if with_sgemm:
        shares = sgemm_shares(times, sgemm_times, macs, args.sgemm_size)
        report_sgemm_shares(shares, args.sgemm_size, args.threads)
        results['sgemm_share'] = shares
    return summary


def throughput_table(models: Dict[str, torch.nn.Module],
                     args: argparse.Namespace, results: dict) -> None:
    """The batch-64 table."""
    batch = torch.randn(64, 3, 224, 224, device=args.device)
    calls = {
        name: forward_call(model, batch)
        for name, model in models.items()
    }
    summary = summarize(
        time_rounds(calls, args.device, 1, args.throughput_repeat, args.amp),
        REFERENCES)
    report('Classification, batch 64, 224x224', summary, images=64)
    results['classification_throughput'] = summary


def memory_table(build: Dict[str, Callable], args: argparse.Namespace,
                 results: dict) -> None:
    """The peak memory of a batch-1 forward of each model."""
    peaks = {
        name: dict(peak_mb=peak_memory_mb(call, args.device, args.amp))
        for name, call in build.items()
    }
    print('\nPeak memory of a batch-1 forward (MB)')
    for name, value in peaks.items():
        print(f'  {name:32s} {value["peak_mb"]:8.1f}')
    results['peak_memory'] = peaks


def plot(summary: Dict[str, dict], macs: Dict[str, float], path: str,
         device: str, threads: int) -> None:
    """Latency against MACs at 224x224, one point per classifier (the
    official L2 as an open square): the median with its quartiles as an
    error bar."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, value in summary.items():
        ms = value['ms']
        official = name == OFFICIAL
        ax.errorbar(
            macs[name],
            ms['median'],
            yerr=[[ms['median'] - ms['q1']], [ms['q3'] - ms['median']]],
            fmt='s' if official else 'o',
            mfc='none' if official else None,
            capsize=3)
        ax.annotate(
            name, (macs[name], ms['median']),
            fontsize=8,
            textcoords='offset points',
            xytext=(5, 4))
    ax.set_xlabel('GMACs (224x224)')
    ax.set_ylabel('latency, batch 1 (ms; median, quartiles)')
    ax.set_title(f'{device}, {threads} threads, torch {torch.__version__}')
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f'plot saved to {path}')


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    results = start(
        args,
        state=dict(
            macs=MAC_PLACES[args.macs], fast_paths=fast_paths_enabled()),
        mode=args.mode,
        compile=args.compile)
    build = builders(args)
    macs = macs_in_subprocess(args) if args.macs == 'subprocess' else {}
    models = {}
    for name, call in build.items():
        model = call()
        if args.macs == 'in-process':
            macs[name] = gmacs(model)
        models[name] = prepare(model, args.device, args.compile)
    results['gmacs_224'] = macs
    summary = latency_table(models, macs, args, results)
    if args.throughput:
        throughput_table(models, args, results)
    del models
    if args.memory:
        memory_table(build, args, results)
    save(results, args.out)
    if args.plot:
        plot(summary, macs, args.plot, args.device, args.threads)
    return results


if __name__ == '__main__':
    main()
