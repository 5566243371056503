"""Speed and memory of FcaFormer against ConvNeXt-T, Swin-T and the
official FcaFormer code, measured side by side in one run on one machine.

    python tools/analysis/benchmark.py [--device cpu] [--threads 2]
        [--mode deploy|eval] [--amp fp16|bf16] [--repeat 20] [--quick]
        [--latency-only] [--models FcaFormer-L2 ConvNeXt-T ...]
        [--compile] [--official PATH_TO_OFFICIAL_REPO]
        [--dense-windows 16,8 ...] [--dense-only]
        [--out work_dirs/benchmark.json] [--plot work_dirs/benchmark.png]

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

``--latency-only`` runs just the batch-1 classification latency.

Devices. Models and inputs are moved to ``--device`` (after deploy-mode
folding), CUDA calls are timed between ``torch.cuda.synchronize()`` calls,
and ``--amp`` autocasts on the device's type. ``--device meta`` runs every
forward without computing anything: a check that no tensor is left behind
on another device, not a timing.

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
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from mmfca.apis import build_model, load_config
from mmfca.utils import TensorForward, complexity

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CLASSIFIERS = {
    'FcaFormer-L1': osp.join(REPO, 'configs/fcaformer_l1_in1k.py'),
    'FcaFormer-L2': osp.join(REPO, 'configs/fcaformer_l2_in1k.py'),
    'ConvNeXt-T': 'mmpretrain::convnext/convnext-tiny_32xb128_in1k.py',
    'Swin-T': 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
}
OFFICIAL = 'FcaFormer-L2 (official)'
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
        default=20,
        help='timed rounds of the batch-1 latency')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='fewer rounds, no whole-model detection run')
    parser.add_argument(
        '--latency-only',
        action='store_true',
        help='only the batch-1 classification latency')
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
    parser.add_argument('--out', default='work_dirs/benchmark.json')
    parser.add_argument('--plot', default='work_dirs/benchmark.png')
    args = parser.parse_args(argv)
    args.device = checked_device(args.device)
    if args.latency_only and args.dense_only:
        parser.error('--latency-only and --dense-only exclude each other')
    if args.repeat < 1:
        parser.error(f'--repeat must be at least 1, got {args.repeat}')
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
                amp: Optional[str] = None) -> Dict[str, List[float]]:
    """Time every function once per round, one call after the other.

    The order rotates from round to round, so no model always runs first
    (or right after the same other model).

    Args:
        fns (dict): Name -> a call to time (one forward).
        device (str): Where the calls run (CUDA calls are awaited).
        warmup (int): Untimed rounds first.
        rounds (int): Timed rounds.
        amp (str, optional): Autocast dtype name, see ``--amp``.

    Returns:
        dict: Name -> milliseconds of its call in each round.
    """
    names = list(fns)
    times = {name: [] for name in names}
    with torch.no_grad(), autocast(device, amp):
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
        if not args.latency_only:
            macs[name] = complexity(
                copy.deepcopy(model), torch.randn(1, 3, 224,
                                                  224))['macs'] / 1e9
        models[name] = prepare(model, device, args.compile)

    one = torch.randn(1, 3, 224, 224, device=device)
    latency = summarize(
        time_rounds({
            n: forward_call(m, one)
            for n, m in models.items()
        }, device, 5, repeat, args.amp), references)
    report('Classification latency, batch 1, 224x224', latency)
    results.update(classification_latency=latency)
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
    if not (args.dense_only or args.latency_only):
        plot(latency, macs, args.plot, args.device, args.threads)
    return results


def plot(latency, macs, path, device, threads):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, value in latency.items():
        ms = value['ms']['median']
        ax.scatter(macs[name], ms)
        ax.annotate(
            name, (macs[name], ms),
            fontsize=8,
            textcoords='offset points',
            xytext=(4, 4))
    ax.set_xlabel('GMACs (224x224)')
    ax.set_ylabel('latency, batch 1 (ms)')
    ax.set_title(f'{device}, {threads} threads')
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f'plot saved to {path}')


if __name__ == '__main__':
    main()
