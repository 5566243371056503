"""Speed and memory of FcaFormer against ConvNeXt-T, Swin-T and the
official FcaFormer code, measured side by side in one run on one machine.

    python tools/analysis/benchmark.py [--device cpu] [--threads 2]
        [--mode deploy|eval] [--amp fp16|bf16] [--repeat 20] [--quick]
        [--latency-only] [--sgemm-size 1024]
        [--models FcaFormer-L2 ConvNeXt-T ...]
        [--compile] [--official PATH_TO_OFFICIAL_REPO]
        [--dense-windows 16,8 ...] [--dense-only]
        [--out work_dirs/benchmark.json] [--plot work_dirs/benchmark.png]
    python tools/analysis/benchmark.py --train [--with-cp]
        [--train-batch 2] [--train-crop 512] [--repeat 3]
        [--train-parts time stages memory]
    python tools/analysis/benchmark.py --runtime eager compile onnxruntime
        [--latency-only | --dense-only] [--repeat 20]

Method. The models of a table are timed in rounds: each round calls every
model once, one call after the other, in an order that rotates from round
to round. Each model's time is divided by a reference model's time of the
same round, and the table gives the median of these per-round ratios with
their quartiles and range. Load changes on a shared machine hit both calls
of a round alike, so the ratio is far steadier than a ratio of medians
taken one model after the other.

Like with like. ``--mode`` applies to every FcaFormer model, ours and the
official one alike. ``eval``: evaluation mode, nothing fused. ``deploy``
(the default): ours after ``switch_to_deploy()`` (conv-BN folded, attention
bias masks precomputed); the official model with every ``Conv2d_BN``
replaced by what the official ``Conv2d_BN.fuse()`` returns (the official
code has that method but no model-level call, and no bias cache).
ConvNeXt-T and Swin-T have nothing to fold (no BatchNorm).

Tables:

* classification at 224x224: latency at batch 1 and time at batch 64
  (images/s) of FcaFormer-L1/L2, mmpretrain's ConvNeXt-T and Swin-T and,
  with ``--official``, the official FcaFormer-L2 from a local copy of its
  repository (nothing of it is shipped here; it imports timm, einops and
  matplotlib); ratios to ConvNeXt-T and to the official L2;
* backbone latency at 512x512 (segmentation) and 800x1216 (detection);
  ``--dense-windows`` adds FcaFormer-L2 with other attention windows (e.g.
  ``16,8``, whose windows tile a 512x512 input's 32x32 / 16x16 stage-3/4
  maps exactly); ``--dense-only`` runs just this part. For each such
  layout it also reports how far its 512x512 features move from the
  default layout's with the same weights (bias tables resized
  bicubically), a proxy for the accuracy cost only: with
  ``--drift-checkpoint`` the weights are yours, otherwise random (every
  parameter and BN statistic perturbed);
* whole-model inference of UperNet (512x512) and Mask R-CNN (800x1216) with
  FcaFormer-L2 and with ConvNeXt-T;
* peak memory of a batch-1 224x224 forward (CUDA: allocator peak; CPU: the
  peak resident memory of a fresh process running it).

``--latency-only`` runs just the batch-1 classification latency. On the
CPU in float32, that table also gives each model's share of the machine's
sgemm rate: its MACs (mmengine's counter) per second, divided by those of
a square float32 matrix product (``--sgemm-size``) timed in the same
rounds as one more call, as the median of the per-round shares.

``--train`` measures training instead: an iteration (forward in loss mode,
backward, AdamW step; float32 unless ``--amp``) of UperNet with
FcaFormer-L2 against UperNet with ConvNeXt-T (mmseg's config), on random
512x512 crops, batch 2, random weights, both backbones with ``with_cp`` as
``--with-cp`` says. ``time``: iterations in paired rounds as above;
``stages``: one hooked iteration per model, time and saved activations by
backbone stage (:class:`StageProfile`); ``memory``: each model in a fresh
process, its peak resident memory (:func:`train_memory`).

``--runtime`` compares runtimes instead: FcaFormer-L2 and ConvNeXt-T,
deployed (FcaFormer in deploy mode), in eager PyTorch, compiled by
``torch.compile`` (inductor; on the CPU it needs a C++ compiler) and
exported to ONNX Runtime (:mod:`mmfca.deployment.onnx`, fixed size,
``--threads`` intra-op threads), the classifier at 224x224 and the dense
backbone at 512x512, all of a case timed in the same rounds; it prints the
best runtime of each model side by side with their paired ratio.

Devices. Models and inputs are moved to ``--device`` (after deploy-mode
folding), CUDA calls are timed between ``torch.cuda.synchronize()`` calls
(training steps and the stage clock too), ``--amp`` autocasts on the
device's type, and a CUDA device without a GPU is refused. ``--device
meta`` runs every forward without computing anything: a check that no
tensor is left behind on another device, not a timing.

A JSON file and a latency-vs-MACs plot (as the paper's figure) are written.
"""
import argparse
import contextlib
import copy
import functools
import importlib.util
import json
import multiprocessing as mp
import os
import os.path as osp
import resource
import shutil
import statistics
import sys
import tempfile
import time
import weakref
from collections import defaultdict
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from mmfca.apis import build_model, load_config
from mmfca.deployment.onnx import export_onnx, prepared
from mmfca.utils import TensorForward, complexity

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CLASSIFIERS = {
    'FcaFormer-L1': osp.join(REPO, 'configs/fcaformer_l1_in1k.py'),
    'FcaFormer-L2': osp.join(REPO, 'configs/fcaformer_l2_in1k.py'),
    'ConvNeXt-T': 'mmpretrain::convnext/convnext-tiny_32xb128_in1k.py',
    'Swin-T': 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
}
OFFICIAL = 'FcaFormer-L2 (official)'
SGEMM = 'sgemm'
SEGMENTORS = {
    'UperNet FcaFormer-L2':
    osp.join(REPO, 'configs/upernet_fcaformer_l2_160k_ade20k.py'),
    'UperNet ConvNeXt-T':
    'mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py',
}
DETECTORS = {
    'Mask R-CNN FcaFormer-L2':
    osp.join(REPO, 'configs/mask_rcnn_fcaformer_l2_fpn_3x_coco.py'),
    'Mask R-CNN ConvNeXt-T':
    'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
}
AMP_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--device',
        default='cuda' if torch.cuda.is_available() else 'cpu',
        help='torch device the models run on (cpu, cuda, '
        'cuda:1, ...)')
    parser.add_argument(
        '--threads',
        type=int,
        default=2,
        help='CPU threads (torch.set_num_threads)')
    parser.add_argument(
        '--mode',
        choices=('deploy', 'eval'),
        default='deploy',
        help='FcaFormer models, ours and '
        'the official one alike: deploy = conv-BN folded, '
        'eval = evaluation mode, nothing folded')
    parser.add_argument(
        '--amp',
        choices=sorted(AMP_DTYPES),
        help='autocast to this dtype on the device type')
    parser.add_argument(
        '--repeat',
        type=int,
        help='timed rounds of the batch-1 latency (default 20), of '
        '--runtime (default 20) and of --train (default 3)')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='fewer rounds, no whole-model detection run')
    parser.add_argument(
        '--latency-only',
        action='store_true',
        help='only the batch-1 classification latency')
    parser.add_argument(
        '--sgemm-size',
        type=int,
        default=1024,
        help='side of the square float32 matrix product that the latency '
        'table\'s sgemm share compares with (CPU, no --amp)')
    parser.add_argument(
        '--models',
        nargs='+',
        choices=sorted(CLASSIFIERS),
        default=list(CLASSIFIERS),
        metavar='NAME',
        help='classifiers to time (default: all of '
        f'{", ".join(CLASSIFIERS)})')
    parser.add_argument(
        '--compile',
        action='store_true',
        help='torch.compile every model before timing')
    parser.add_argument(
        '--official',
        help='local copy of the official '
        'FcaFormer repository, to time its L2 classifier')
    parser.add_argument(
        '--dense-windows',
        action='append',
        default=[],
        metavar='S3,S4',
        help='also time the FcaFormer-L2 '
        'backbone with these stage-3/4 windows (repeatable)')
    parser.add_argument(
        '--drift-checkpoint',
        help='weights of the '
        'UperNet FcaFormer-L2 config for the window-layout '
        'feature drift (default: random weights)')
    parser.add_argument(
        '--dense-only',
        action='store_true',
        help='only the backbone latencies')
    parser.add_argument(
        '--train',
        action='store_true',
        help='training cost instead: an iteration of UperNet with '
        'FcaFormer-L2 against UperNet with ConvNeXt-T (mmseg\'s config)')
    parser.add_argument(
        '--with-cp',
        action='store_true',
        help='--train with activation checkpointing in both backbones')
    parser.add_argument(
        '--train-batch', type=int, default=2, help='--train images per batch')
    parser.add_argument(
        '--train-crop',
        type=int,
        default=512,
        help='--train side of the square crops')
    parser.add_argument(
        '--train-parts',
        nargs='+',
        choices=TRAIN_PARTS,
        default=list(TRAIN_PARTS),
        help='--train tables: time = paired time per iteration, stages = '
        'time and saved activations per stage (one hooked iteration), '
        'memory = peak memory (a fresh process per model on the CPU)')
    parser.add_argument(
        '--runtime',
        nargs='+',
        choices=RUNTIMES,
        help='runtimes to compare instead: FcaFormer-L2 and ConvNeXt-T, '
        'deployed, in each (classifier at 224x224, backbone at 512x512; '
        '--latency-only / --dense-only pick one)')
    parser.add_argument('--out', default='work_dirs/benchmark.json')
    parser.add_argument('--plot', default='work_dirs/benchmark.png')
    args = parser.parse_args(argv)
    args.device = checked_device(args.device)
    if args.latency_only and args.dense_only:
        parser.error('--latency-only and --dense-only exclude each other')
    if args.repeat is None:
        args.repeat = 3 if args.train else 20
    if args.repeat < 1:
        parser.error(f'--repeat must be at least 1, got {args.repeat}')
    if args.train and args.runtime:
        parser.error('--train and --runtime exclude each other')
    if args.with_cp and not args.train:
        parser.error('--with-cp applies to --train only')
    if args.train_batch < 2:
        parser.error(f'--train-batch must be at least 2 (the 1x1 pooling '
                     f'branch of UperNet\'s PPM has a BatchNorm, which '
                     f'needs two values per channel), got {args.train_batch}')
    if args.train_crop < 64 or args.train_crop % 32:
        parser.error(f'--train-crop must be a multiple of 32, at least 64 '
                     f'(the backbones downsample 32 times), got '
                     f'{args.train_crop}')
    if args.runtime and args.mode != 'deploy':
        parser.error('--runtime times deployed models (ONNX export folds '
                     'the model): leave --mode at deploy')
    if args.runtime and 'compile' in args.runtime and \
            torch.device(args.device).type == 'cpu' and \
            not any(shutil.which(c) for c in ('g++', 'c++', 'clang++')):
        parser.error('--runtime compile: torch.compile (inductor) on the CPU '
                     'needs a C++ compiler and none (g++, c++, clang++) is '
                     'on PATH; install one (apt-get install g++) or drop '
                     '"compile"')
    return args


def checked_device(name: str) -> str:
    """``name`` if torch can run on it, else a clear exit."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise SystemExit(f'--device {name!r} is not a torch device: {error}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise SystemExit(
            f'--device {name!r}: torch.cuda.is_available() is False (a torch '
            f'build without CUDA, or no GPU visible). Use --device cpu.')
    return name


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so a timer sees all of it."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def autocast(device: str, amp: Optional[str]):
    """Autocast on the device's type to ``amp``'s dtype, or nothing."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])


def quartiles(values: List[float]) -> Dict[str, float]:
    """Median, first and third quartile, minimum and maximum."""
    if len(values) == 1:
        q1 = median = q3 = values[0]
    else:
        q1, median, q3 = statistics.quantiles(values, n=4, method='inclusive')
    return dict(median=median, q1=q1, q3=q3, min=min(values), max=max(values))


def time_rounds(fns: Dict[str, Callable[[], object]],
                device: str,
                warmup: int,
                rounds: int,
                amp: Optional[str] = None,
                inference: bool = True) -> Dict[str, List[float]]:
    """Time every function once per round, one call after the other.

    The order rotates from round to round, so no model always runs first
    (or right after the same other model). The device is synchronised
    before each reading of the clock.

    Args:
        fns (dict): Name -> a call to time (one forward).
        device (str): Where the calls run (CUDA calls are awaited).
        warmup (int): Untimed rounds first.
        rounds (int): Timed rounds.
        amp (str, optional): Autocast dtype name, see ``--amp``.
        inference (bool): Run the calls without autograd (and in
            ``amp``); False for training steps, which do their own.

    Returns:
        dict: Name -> milliseconds of its call in each round.
    """
    names = list(fns)
    times = {name: [] for name in names}
    context = contextlib.ExitStack()
    if inference:
        context.enter_context(torch.no_grad())
        context.enter_context(autocast(device, amp))
    with context:
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                synchronize(device)
                start = time.perf_counter()
                fns[name]()
                synchronize(device)
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def summarize(times: Dict[str, List[float]],
              references: Sequence[str]) -> Dict[str, dict]:
    """Each model's milliseconds, and the per-round ratios of its time to
    each reference model's (quartiles of both)."""
    summary = {}
    for name, values in times.items():
        ratios = {
            reference:
            quartiles([a / b for a, b in zip(values, times[reference])])
            for reference in references
            if reference in times and reference != name
        }
        summary[name] = dict(
            ms=quartiles(values), runs=len(values), ratios=ratios)
    return summary


def report(title: str,
           summary: Dict[str, dict],
           images: Optional[int] = None) -> None:
    """Print a table: median ms [quartiles], optionally images/s, and each
    median per-round ratio [quartiles] (range)."""
    print(f'\n{title}')
    print('  (ms: median [quartiles]; ratio: median of the per-round '
          'ratios [quartiles] (min-max))')
    for name, entry in summary.items():
        ms = entry['ms']
        cells = [f'{ms["median"]:8.1f} ms [{ms["q1"]:.1f}-{ms["q3"]:.1f}]']
        if images:
            cells.append(f'{images * 1000 / ms["median"]:6.1f} images/s')
        for reference, ratio in entry['ratios'].items():
            cells.append(
                f'{ratio["median"]:.3f}x {reference} [{ratio["q1"]:.3f}-'
                f'{ratio["q3"]:.3f}] ({ratio["min"]:.2f}-{ratio["max"]:.2f})')
        print(f'  {name:32s} ' + '   '.join(cells))


def prepare(model: torch.nn.Module, device: str, compile_model: bool):
    """The model on ``device`` in eval mode (optionally compiled)."""
    model = model.to(device)
    model.eval()  # some backbones' train() returns None, so not chained
    if compile_model:
        model = torch.compile(model)
    return model


def classifier(path: str, mode: str) -> torch.nn.Module:
    """A classifier from its config; FcaFormer backbones in ``mode``."""
    model = build_model(load_config(path))
    backbone = getattr(model, 'backbone', None)
    if mode == 'deploy' and hasattr(backbone, 'switch_to_deploy'):
        backbone.switch_to_deploy()
    return model


def official_l2(repo: str, mode: str) -> torch.nn.Module:
    """The official FcaFormer-L2 classifier from a local copy of its
    repository (the user's; nothing of it is shipped with mmfca).

    In ``deploy`` mode every official ``Conv2d_BN`` is replaced by what its
    own ``fuse()`` returns: the official code's folding, applied to every
    pair, as LeViT-style code does before inference.
    """
    path = osp.join(repo, 'image_classification', 'models', 'fcaformer.py')
    if not osp.isfile(path):
        raise SystemExit(
            f'--official {repo!r}: no {path}. Give the root of a copy of the '
            f'official FcaFormer repository (it holds '
            f'image_classification/models/fcaformer.py).')
    spec = importlib.util.spec_from_file_location('official_fcaformer', path)
    module = importlib.util.module_from_spec(spec)
    # timm's register_model looks the module up; the official file also
    # registers 'fcaformer_l*' names in timm, for this process only.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        raise SystemExit(
            f'The official code ({path}) could not be imported: {error}. It '
            f'needs timm, einops and matplotlib (pip install einops '
            f'matplotlib).')
    model = module.fcaformer_l2()
    model.eval()
    if mode == 'deploy':
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, module.Conv2d_BN):
                    setattr(parent, name, child.fuse())
    return model


def forward_call(model: torch.nn.Module,
                 inputs: torch.Tensor) -> Callable[[], object]:
    """One inference forward of ``model`` on ``inputs``, with the
    post-processing of detectors and segmentors, as a call."""
    return functools.partial(TensorForward(model, 'predict'), inputs)


def _peak_rss_child(build, amp, queue):
    torch.set_num_threads(1)
    model = build()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad(), autocast('cpu', amp):
        forward_call(model, torch.randn(1, 3, 224, 224))()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((peak - base) / 1024)


def peak_memory_mb(build, device: str, amp: Optional[str]) -> float:
    """Extra memory of one batch-1 224x224 forward, in MB."""
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


def dense_backbones(mode: str, windows=()) -> Dict[str, torch.nn.Module]:
    """FcaFormer-L2 (default windows, then each of ``windows``; in
    ``mode``), ConvNeXt-T and Swin-T backbones of the UperNet configs."""

    def fca(overrides=None):
        backbone = build_model(
            load_config(SEGMENTORS['UperNet FcaFormer-L2'],
                        overrides)).backbone
        return backbone.switch_to_deploy() if mode == 'deploy' else backbone

    others = {}
    for window in windows:
        others[f'FcaFormer-L2 windows {window}'] = fca({
            'model.backbone.window_size':
            tuple(window),
            'model.backbone.resize_bias_tables':
            True
        })
    convnext = build_model(load_config(
        SEGMENTORS['UperNet ConvNeXt-T'])).backbone
    swin = build_model(
        load_config(
            'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_'
            'ade20k-512x512.py')).backbone
    return {
        'FcaFormer-L2': fca(),
        **others, 'ConvNeXt-T': convnext,
        'Swin-T': swin
    }


def parse_windows(values):
    windows = []
    for value in values:
        try:
            windows.append(tuple(int(v) for v in value.split(',')))
        except ValueError:
            raise SystemExit(f'--dense-windows takes comma-separated ints, '
                             f'e.g. 16,8; got {value!r}')
    return windows


def classification(args, repeat, results):
    device = args.device
    builders = {
        name: (lambda p=CLASSIFIERS[name]: classifier(p, args.mode))
        for name in args.models
    }
    if args.official:
        builders[OFFICIAL] = lambda: official_l2(args.official, args.mode)
    references = ('ConvNeXt-T', OFFICIAL)

    models, macs = {}, {}
    for name, build in builders.items():
        model = build()
        macs[name] = complexity(
            copy.deepcopy(model), torch.randn(1, 3, 224, 224))['macs'] / 1e9
        models[name] = prepare(model, device, args.compile)

    one = torch.randn(1, 3, 224, 224, device=device)
    calls = {n: forward_call(m, one) for n, m in models.items()}
    with_sgemm = torch.device(device).type == 'cpu' and args.amp is None
    if with_sgemm:
        calls[SGEMM] = sgemm_call(args.sgemm_size, device)
    times = time_rounds(calls, device, 5, repeat, args.amp)
    sgemm_times = times.pop(SGEMM, None)
    latency = summarize(times, references)
    report('Classification latency, batch 1, 224x224', latency)
    results.update(classification_latency=latency)
    if with_sgemm:
        shares = sgemm_shares(times, sgemm_times, macs, args.sgemm_size)
        report_sgemm_shares(shares, args.sgemm_size, args.threads)
        results.update(sgemm_share=shares)
    if args.latency_only:
        return latency, macs

    batch = torch.randn(64, 3, 224, 224, device=device)
    throughput = summarize(
        time_rounds({
            n: forward_call(m, batch)
            for n, m in models.items()
        }, device, 1, 2 if args.quick else 5, args.amp), references)
    report('Classification, batch 64, 224x224', throughput, images=64)
    del batch, models
    memory = {
        name: dict(peak_mb=peak_memory_mb(build, device, args.amp))
        for name, build in builders.items()
    }
    print('\nPeak memory of a batch-1 forward (MB)')
    for name, value in memory.items():
        print(f'  {name:32s} {value["peak_mb"]:8.1f}')
    results.update(
        classification_throughput=throughput,
        peak_memory=memory,
        gmacs_224=macs)
    return latency, macs


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


def backbones(args, repeat, results):
    device = args.device
    dense = {}
    models = {
        name: prepare(backbone, device, args.compile)
        for name, backbone in dense_backbones(
            args.mode, parse_windows(args.dense_windows)).items()
    }
    for size in ((512, 512), (800, 1216)):
        x = torch.randn(1, 3, *size, device=device)
        fns = {name: (lambda m=m, x=x: m(x)) for name, m in models.items()}
        timings = summarize(
            time_rounds(fns, device, 1, max(3, repeat // 4), args.amp),
            ('ConvNeXt-T', ))
        report(f'Backbone latency, {size[0]}x{size[1]}', timings)
        dense[f'{size[0]}x{size[1]}'] = timings
    results['backbone_latency'] = dense


# FcaFormer's bias tables and cross-token scales (LSFs), by name ending.
TABLES = ('position_bias', 'depth_bias', 'cross_scale')


def randomize(model, seed=0):
    """Every parameter and BN statistic drawn at random, large enough that
    bias tables, LSFs and layer scales all change the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            noise = torch.randn(value.shape, generator=gen)
            if name.endswith('running_var'):
                value.copy_(noise.abs() * 0.5 + 0.5)
            elif value.dim() == 1 or name.endswith(TABLES):
                base = 1. if name.endswith(
                    ('weight', 'gamma', 'cross_scale')) else 0.
                value.copy_(base + noise * 0.2)
            else:
                fan_in = value[0].numel()
                value.copy_(noise / fan_in**0.5)
    return model


def window_drift(windows, checkpoint=None, samples=4):
    """Relative L2 distance and cosine similarity between the 512x512
    stage outputs of FcaFormer-L2 with the default windows and with each of
    ``windows``, the same weights loaded into both (tables resized). The
    first row is a yardstick: the default layout's features of the image
    moved by 32 pixels (so its content falls into other windows), compared
    on the part both views share."""
    config = SEGMENTORS['UperNet FcaFormer-L2']
    default = build_model(load_config(config)).backbone
    if checkpoint:
        from mmengine.runner import load_checkpoint

        from mmfca.utils.serialization import checkpoint_globals
        with checkpoint_globals():
            load_checkpoint(
                default,
                checkpoint,
                map_location='cpu',
                revise_keys=[(r'^backbone\.', '')])
    else:
        randomize(default)
    default.eval()
    gen = torch.Generator().manual_seed(1)
    # Smooth random images (upsampled noise), standardised like inputs.
    larger = torch.nn.functional.interpolate(
        torch.randn(samples, 3, 68, 68, generator=gen),
        size=(544, 544),
        mode='bilinear',
        align_corners=False)
    images = larger[..., :512, :512]

    def distances(outs, refs):
        rel, cos = [], []
        for out, ref in zip(outs, refs):
            rel.append(float((out - ref).norm() / ref.norm()))
            cos.append(
                float(
                    torch.nn.functional.cosine_similarity(
                        out.flatten(1), ref.flatten(1)).mean()))
        return dict(relative_l2=rel, cosine=cos)

    results = {}
    with torch.no_grad():
        refs = default(images)
        shifted = default(larger[..., 32:, 32:].contiguous())
        cut = [32 // (4 * 2**i) for i in range(len(refs))]
        results['default, image moved 32 px'] = distances(
            [o[..., :-c, :-c] for o, c in zip(shifted, cut)],
            [r[..., c:, c:] for r, c in zip(refs, cut)])
        for window in windows:
            overrides = {
                'model.backbone.window_size': tuple(window),
                'model.backbone.resize_bias_tables': True
            }
            other = build_model(load_config(config, overrides)).backbone
            other.load_state_dict(default.state_dict())
            other.eval()
            results[f'windows {window}'] = distances(other(images), refs)
    print(f'\nFeature drift from the default windows at 512x512 ('
          f'{"checkpoint" if checkpoint else "random weights"}; relative '
          f'L2 / cosine per output)')
    for name, value in results.items():
        cells = '  '.join(
            f'{r:.3f}/{c:.3f}'
            for r, c in zip(value['relative_l2'], value['cosine']))
        print(f'  {name:28s} {cells}')
    return results


def whole_models(args, results):
    device = args.device
    groups = [(SEGMENTORS, (512, 512))]
    if not args.quick:
        groups.append((DETECTORS, (800, 1216)))
    whole = {}
    for configs, size in groups:
        fns = {}
        for name, path in configs.items():
            model = build_model(load_config(path))
            if args.mode == 'deploy' and hasattr(model.backbone,
                                                 'switch_to_deploy'):
                model.backbone.switch_to_deploy()
            model = prepare(model, device, compile_model=False)
            fns[name] = forward_call(model,
                                     torch.randn(1, 3, *size, device=device))
        reference = next(name for name in configs if 'ConvNeXt-T' in name)
        timings = summarize(
            time_rounds(fns, device, 1, 3, args.amp), (reference, ))
        report(f'Whole-model inference, batch 1, {size[0]}x{size[1]}', timings)
        whole.update(timings)
    results['whole_model_latency'] = whole


# Training cost (--train): UperNet with FcaFormer-L2 against UperNet with
# ConvNeXt-T, mmseg's own config.
TRAIN_PARTS = ('time', 'stages', 'memory')
TRAIN_LR = dict(lr=1e-4, weight_decay=0.01)


def train_segmentor(path: str, with_cp: bool, device: str) -> nn.Module:
    """A segmentor of ``path`` in training mode on ``device``, its
    backbone's ``with_cp`` set; random weights (the modules' own
    initialisation; no download)."""
    cfg = load_config(path)
    cfg.model.backbone.with_cp = with_cp
    cfg.model.backbone.init_cfg = None
    model = build_model(cfg)
    model.to(device)
    model.train()
    return model


def segmentation_batch(batch: int, size: int, num_classes: int, device: str):
    """Random images and label maps of one training batch (square crops)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen)
    samples = []
    for _ in range(batch):
        sample = SegDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size)))
        labels = torch.randint(0, num_classes, (1, size, size), generator=gen)
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample.to(device))
    return images.to(device), samples


class TrainStep:
    """One training iteration of a segmentor, as a call: forward in loss
    mode, backward, an AdamW step. Both models get the same plain AdamW (no
    layer decay: it changes learning rates, not cost), in float32 unless
    ``amp`` autocasts the forward.

    Args:
        model (nn.Module): An mmseg segmentor in training mode.
        batch (int): Images per iteration.
        size (int): Side of the square crops.
        device (str): Where the model is.
        amp (str, optional): Autocast dtype name, see ``--amp``.
    """

    def __init__(self,
                 model: nn.Module,
                 batch: int,
                 size: int,
                 device: str,
                 amp: Optional[str] = None):
        self.model = model
        self.device = device
        self.amp = amp
        self.inputs, self.samples = segmentation_batch(
            batch, size, model.decode_head.num_classes, device)
        self.optimizer = torch.optim.AdamW(model.parameters(), **TRAIN_LR)

    def forward(self) -> torch.Tensor:
        """The summed loss of one forward."""
        with autocast(self.device, self.amp):
            losses = self.model(self.inputs, self.samples, mode='loss')
        return self.model.parse_losses(losses)[0]

    def update(self) -> None:
        """Apply and clear the gradients."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> None:
        self.forward().backward()
        self.update()


def resident_mb(peak: bool) -> float:
    """Resident memory of this process, now or its peak, in MB.

    Linux: ``VmRSS`` / ``VmHWM`` of ``/proc/self/status``. The peak is not
    ``getrusage``'s ``ru_maxrss``: that one carries the peak of the process
    image an ``exec`` replaced, so a process spawned by a large parent
    starts at the parent's size. Elsewhere ``ru_maxrss`` for both.
    """
    try:
        with open('/proc/self/status') as file:
            fields = dict(line.split(':', 1) for line in file if ':' in line)
        return int(fields['VmHWM' if peak else 'VmRSS'].split()[0]) / 1024
    except (OSError, KeyError):
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return value / 2**20 if sys.platform == 'darwin' else value / 1024


def _train_memory_child(path, with_cp, batch, size, amp, threads, queue):
    torch.set_num_threads(threads)
    step = TrainStep(
        train_segmentor(path, with_cp, 'cpu'), batch, size, 'cpu', amp)
    built = resident_mb(peak=False)
    for _ in range(2):
        step()
    queue.put(dict(built_mb=built, peak_mb=resident_mb(peak=True)))


def train_memory(path: str, with_cp: bool, batch: int, size: int, device: str,
                 amp: Optional[str], threads: int) -> Dict[str, float]:
    """Memory of two training iterations of the segmentor of ``path``.

    CPU: a fresh process (spawned, so nothing of this one is in it) builds
    the model and the data, reads its resident memory, runs two iterations
    (the second one holds activations, gradients and AdamW's state at once)
    and reads its peak resident memory (see :func:`resident_mb`).
    CUDA: the allocator's figures in this process.

    Returns:
        dict: ``built_mb`` (after building), ``peak_mb`` (after the
        iterations) and ``train_mb``, their difference: what training
        adds.
    """
    if torch.device(device).type == 'cuda':
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        step = TrainStep(
            train_segmentor(path, with_cp, device), batch, size, device, amp)
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        built = torch.cuda.memory_allocated(device)
        for _ in range(2):
            step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del step
        result = dict(
            built_mb=(built - before) / 2**20, peak_mb=(peak - before) / 2**20)
    else:
        context = mp.get_context('spawn')
        queue = context.Queue()
        process = context.Process(
            target=_train_memory_child,
            args=(path, with_cp, batch, size, amp, threads, queue))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(
                f'The memory measurement of {path} (with_cp={with_cp}) '
                f'failed in its subprocess (exit code {process.exitcode}); '
                f'its error is printed above.')
        result = queue.get()
    result['train_mb'] = result['peak_mb'] - result['built_mb']
    return result


class StageProfile:
    """Where a segmentor's training iteration spends time and keeps
    activations, by backbone stage.

    ``stage i`` is the backbone's ``downsample_layers[i - 1]`` and
    ``stages[i - 1]`` (FcaFormer and mmpretrain's ConvNeXt are laid out
    alike); ``outside`` is the rest: the output norms or projections, the
    decode and auxiliary heads, the losses.

    * forward: the clock is read by forward hooks at each stage's start
      and end;
    * backward: by gradient hooks on each stage's output (its backward
      starts when that gradient is complete) and input (it ends when that
      one is); the input image is made to require a gradient, so the first
      stage has one too. An output norm's backward is counted in the next
      stage's (it ends when the stage output's gradient is complete);
    * saved: bytes of the tensors autograd holds for the backward at the
      end of the forward (seen by ``torch.autograd.graph.saved_tensors_
      hooks``), each storage counted once, in the part that saved it
      first, parameters not counted.
      Activation checkpointing keeps the inputs of its regions by itself,
      out of sight of these hooks, so with ``with_cp`` the figures miss
      them.

    Args:
        model (nn.Module): An mmseg segmentor.
        device (str): Where it runs (CUDA is awaited at each reading).
    """

    OUTSIDE = 'outside'

    def __init__(self, model: nn.Module, device: str):
        self.model = model
        self.device = device
        backbone = model.backbone
        self.stages = list(zip(backbone.downsample_layers, backbone.stages))
        self.names = [f'stage {i + 1}' for i in range(len(self.stages))]

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def run(self, step: TrainStep) -> Dict[str, Dict[str, float]]:
        """One hooked iteration of ``step``.

        Returns:
            dict: Part -> ``forward_ms``, ``backward_ms``, ``saved_mb``.
        """
        marks: Dict[tuple, float] = {}
        packed: List[tuple] = []  # (weak reference to a saved tensor, part)
        current = [self.OUTSIDE]
        handles = []

        def grad_mark(key):

            def hook(grad):
                marks[key] = self._now()

            return hook

        for name, (down, stage) in zip(self.names, self.stages):

            def start(module, args, name=name):
                current[0] = name
                marks[name, 'forward start'] = self._now()
                if args[0].requires_grad:
                    args[0].register_hook(grad_mark((name, 'backward end')))

            def stop(module, args, output, name=name):
                marks[name, 'forward end'] = self._now()
                current[0] = self.OUTSIDE
                if output.requires_grad:
                    output.register_hook(grad_mark((name, 'backward start')))

            handles += [
                down.register_forward_pre_hook(start),
                stage.register_forward_hook(stop)
            ]

        def pack(tensor):
            packed.append((weakref.ref(tensor), current[0]))
            return tensor

        step.inputs.requires_grad_(True)
        try:
            begin = self._now()
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = step.forward()
            forward_end = self._now()
            saved = self._saved_bytes(packed, step.model)
            loss.backward()
            backward_end = self._now()
            step.update()
        finally:
            step.inputs.requires_grad_(False)
            for handle in handles:
                handle.remove()
        parts = {}
        for name in self.names:
            parts[name] = dict(
                forward_ms=(marks[name, 'forward end'] -
                            marks[name, 'forward start']) * 1000,
                backward_ms=(marks[name, 'backward end'] -
                             marks[name, 'backward start']) * 1000)
        parts[self.OUTSIDE] = dict(
            forward_ms=(forward_end - begin) * 1000 -
            sum(p['forward_ms'] for p in parts.values()),
            backward_ms=(backward_end - forward_end) * 1000 -
            sum(p['backward_ms'] for p in parts.values()))
        for name, value in parts.items():
            value['saved_mb'] = saved.get(name, 0) / 2**20
        return parts

    @staticmethod
    def _saved_bytes(packed: List[tuple], model: nn.Module) -> Dict[str, int]:
        """Part -> bytes of the storages of the saved tensors that the
        graph still holds (a branch dropped during the forward freed its
        own), each storage once, parameters left out."""
        seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: Dict[str, int] = defaultdict(int)
        for ref, part in packed:
            tensor = ref()
            if tensor is None:
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                saved[part] += storage.nbytes()
        return saved


def training(args, results) -> None:
    """The ``--train`` tables: time per iteration (paired rounds), time and
    saved activations per stage, peak memory."""
    device, parts = args.device, set(args.train_parts)
    batch, size, cp = args.train_batch, args.train_crop, args.with_cp
    names = list(SEGMENTORS)
    reference = names[-1]
    print(
        f'\nTraining iteration: batch {batch}, {size}x{size} crops, '
        f'with_cp={cp}, AdamW, {"float32" if args.amp is None else args.amp}')
    entry = dict(batch=batch, crop=size, with_cp=cp)
    # Memory first: the processes it spawns start from a small one.
    if 'memory' in parts:
        memory = {
            name:
            train_memory(path, cp, batch, size, device, args.amp, args.threads)
            for name, path in SEGMENTORS.items()
        }
        how = ('allocator peak' if torch.device(device).type == 'cuda' else
               'peak resident memory of a fresh process, VmHWM')
        print(f'\nMemory of training ({how}; MB)')
        print(f'  {"":32s} {"built":>8s} {"peak":>8s} {"training":>9s}')
        for name, value in memory.items():
            print(f'  {name:32s} {value["built_mb"]:8.0f} '
                  f'{value["peak_mb"]:8.0f} {value["train_mb"]:9.0f}  '
                  f'{ratio(value["train_mb"], memory[reference]["train_mb"])}')
        entry['memory'] = memory
    if parts & {'time', 'stages'}:
        steps = {
            name:
            TrainStep(
                train_segmentor(path, cp, device), batch, size, device,
                args.amp)
            for name, path in SEGMENTORS.items()
        }
    # The hooked iteration of each model is the timed rounds' warm-up.
    if 'stages' in parts:
        entry['stages'] = {
            name: StageProfile(step.model, device).run(step)
            for name, step in steps.items()
        }
        report_stages(entry['stages'], reference)
    if 'time' in parts:
        timings = summarize(
            time_rounds(
                steps,
                device,
                0 if 'stages' in parts else 1,
                args.repeat,
                inference=False), (reference, ))
        report(
            f'Training iteration, batch {batch}, {size}x{size}, '
            f'with_cp={cp}', timings)
        entry['time'] = timings
    results['training'] = entry


def ratio(value: float, reference: float) -> str:
    """``value / reference`` as text, or '-' for a zero reference."""
    return f'{value / reference:.3f}x' if reference else '-'


def report_stages(stages: Dict[str, dict], reference: str) -> None:
    """Print each model's per-stage time and saved activations, and the
    difference to ``reference``."""
    print('\nOne hooked training iteration per model, by stage (see '
          'StageProfile): forward ms, backward ms, saved MB; last column: '
          f'forward + backward ms and saved MB minus {reference}\'s')
    for name, parts in stages.items():
        print(f'  {name}')
        for part, value in parts.items():
            other = stages[reference].get(part)
            cells = (f'{value["forward_ms"]:9.0f} {value["backward_ms"]:9.0f}'
                     f' {value["saved_mb"]:8.0f}')
            if other is not None and name != reference:
                total = value['forward_ms'] + value['backward_ms'] - (
                    other['forward_ms'] + other['backward_ms'])
                cells += (f'   {total:+8.0f} ms '
                          f'{value["saved_mb"] - other["saved_mb"]:+7.0f} MB')
            print(f'    {part:10s} {cells}')


# Runtimes (--runtime): the deployed models in eager PyTorch, compiled by
# torch.compile (inductor) and exported to ONNX Runtime.
RUNTIMES = ('eager', 'compile', 'onnxruntime')
RUNTIME_MODELS = {
    'classifier': {
        'FcaFormer-L2': CLASSIFIERS['FcaFormer-L2'],
        'ConvNeXt-T': CLASSIFIERS['ConvNeXt-T']
    },
    'backbone': {
        'FcaFormer-L2': SEGMENTORS['UperNet FcaFormer-L2'],
        'ConvNeXt-T': SEGMENTORS['UperNet ConvNeXt-T']
    },
}


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
                f'--runtime onnxruntime --device {device}: this onnxruntime '
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


def runtime_calls(path: str, dense: bool, images: torch.Tensor, args,
                  workdir: str, name: str) -> Dict[str, Callable]:
    """Runtime -> one inference of the model of ``path`` (the classifier,
    or the backbone with ``dense``), deployed, on ``images``."""
    model = build_model(load_config(path))
    module = prepared(model, dense, args.device)
    calls = {}
    for runtime in args.runtime:
        if runtime == 'eager':
            calls[runtime] = functools.partial(module, images)
        elif runtime == 'compile':
            calls[runtime] = functools.partial(torch.compile(module), images)
        else:
            calls[runtime] = onnxruntime_call(
                model, images, dense, args.device, args.threads,
                osp.join(workdir, f'{name}.onnx'))
    return calls


def runtimes(args, results) -> None:
    """The ``--runtime`` tables: each model in each runtime, timed in
    rounds together, and the best runtime of each model side by side."""
    cases = []
    if not args.dense_only:
        cases.append(('classifier', (224, 224)))
    if not args.latency_only:
        cases.append(('backbone', (512, 512)))
    results['runtimes'] = {}
    for case, size in cases:
        images = torch.randn(1, 3, *size, device=args.device)
        fns = {}
        with tempfile.TemporaryDirectory() as workdir:
            for model, path in RUNTIME_MODELS[case].items():
                calls = runtime_calls(path, case == 'backbone', images, args,
                                      workdir, model)
                fns.update({f'{model} {r}': fn for r, fn in calls.items()})
            times = time_rounds(fns, args.device, 2, args.repeat)
        reference = f'ConvNeXt-T {args.runtime[0]}'
        title = f'{case}, batch 1, {size[0]}x{size[1]}'
        summary = summarize(times, (reference, ))
        report(f'Runtimes, {title} (deploy mode)', summary)
        best = best_of_each(times, RUNTIME_MODELS[case])
        results['runtimes'][case] = dict(times=summary, best=best)


def best_of_each(times: Dict[str, List[float]], models: Sequence[str]) -> dict:
    """Each model's fastest runtime (lowest median) and the per-round ratio
    of the first model's to the last one's, printed side by side."""
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
    ratio = quartiles([a / b for a, b in zip(first['times'], last['times'])])
    print(f'  best of each: {models[0]} {first["runtime"]} '
          f'{first["ms"]:.1f} ms, {models[-1]} {last["runtime"]} '
          f'{last["ms"]:.1f} ms: {ratio["median"]:.3f}x '
          f'[{ratio["q1"]:.3f}-{ratio["q3"]:.3f}] '
          f'({ratio["min"]:.2f}-{ratio["max"]:.2f})')
    return dict(
        {
            model: dict(runtime=v['runtime'], ms=v['ms'])
            for model, v in best.items()
        },
        ratio=ratio)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    repeat = max(3, args.repeat // 4) if args.quick else args.repeat
    results = dict(
        device=args.device,
        threads=args.threads,
        mode=args.mode,
        amp=args.amp,
        torch=torch.__version__,
        compile=args.compile,
        method='rounds, median of per-round '
        'ratios')
    print(f'device {args.device}, {args.threads} threads, mode {args.mode}'
          f', amp {args.amp}, torch {torch.__version__}')
    if args.train:
        training(args, results)
    elif args.runtime:
        runtimes(args, results)
    else:
        if not args.dense_only:
            latency, macs = classification(args, repeat, results)
        if not args.latency_only:
            backbones(args, repeat, results)
            if args.dense_windows:
                results['window_drift'] = window_drift(
                    parse_windows(args.dense_windows), args.drift_checkpoint)
        if not (args.dense_only or args.latency_only):
            whole_models(args, results)

    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as file:
        json.dump(results, file, indent=2)
    print(f'\nresults saved to {args.out}')
    if not (args.train or args.runtime or args.dense_only
            or args.latency_only):
        plot(latency, macs, args.plot, args.device, args.threads)
    return results


def plot(latency: Dict[str, dict], macs: Dict[str, float], path: str,
         device: str, threads: int) -> None:
    """Latency against MACs at 224x224, one point per classifier (the
    four models, and the official L2 when timed), as the paper's figure:
    the median with its quartiles as an error bar."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, value in latency.items():
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


if __name__ == '__main__':
    main()
