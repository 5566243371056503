"""Speed and memory of FcaFormer against ConvNeXt-T and Swin-T, measured
side by side in one run on one machine.

    python tools/analysis/benchmark.py [--threads 2] [--device cpu]
        [--quick] [--compile] [--official PATH_TO_OFFICIAL_REPO]
        [--dense-windows 16,8 ...] [--dense-only]
        [--out work_dirs/benchmark.json] [--plot work_dirs/benchmark.png]

Measures (median and spread over repeats, after warm-up):

* classification at 224x224: latency at batch 1 and throughput at batch 64
  for FcaFormer-L1/L2 (in deploy mode: conv-BN folded, bias masks
  precomputed), mmpretrain's ConvNeXt-T and Swin-T, and, with --official,
  the official FcaFormer-L2 implementation from a local copy of its
  repository (nothing of it is shipped here);
* backbone latency at 512x512 (segmentation) and 800x1216 (detection),
  with the backbones timed interleaved (one forward of each in turn, so
  load changes on a shared machine hit them alike); ``--dense-windows``
  adds FcaFormer-L2 with other attention windows (e.g. ``16,8``, whose
  windows tile a 512x512 input's 32x32 / 16x16 stage-3/4 maps exactly);
  ``--dense-only`` runs just this part. For each such layout it also
  reports how far its 512x512 features move from the default layout's
  with the same weights (bias tables resized bicubically), a proxy for
  the accuracy cost only: with ``--drift-checkpoint`` the weights are
  yours, otherwise random (every parameter and BN statistic perturbed);
* whole-model inference of UperNet (512x512) and Mask R-CNN (800x1216) with
  FcaFormer-L2 and with ConvNeXt-T;
* peak memory of a batch-1 224x224 forward (CUDA: allocator peak; CPU: the
  peak resident memory of a fresh process running it).

Ratios are printed against ConvNeXt-T; a JSON file and a latency-vs-MACs
plot (as the paper's figure) are written.
"""
import argparse
import copy
import importlib.util
import json
import multiprocessing as mp
import os
import os.path as osp
import resource
import statistics
import sys
import time

import torch

from mmfca.analysis import complexity, detection_samples, is_detector
from mmfca.runtime import build_model, load_config

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CLASSIFIERS = {
    'FcaFormer-L1': osp.join(REPO, 'configs/fcaformer_l1_in1k.py'),
    'FcaFormer-L2': osp.join(REPO, 'configs/fcaformer_l2_in1k.py'),
    'ConvNeXt-T': 'mmpretrain::convnext/convnext-tiny_32xb128_in1k.py',
    'Swin-T': 'mmpretrain::swin_transformer/swin-tiny_16xb64_in1k.py',
}
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


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if
                        torch.cuda.is_available() else 'cpu')
    parser.add_argument('--threads', type=int, default=2,
                        help='CPU threads (torch.set_num_threads)')
    parser.add_argument('--repeat', type=int, default=20,
                        help='timed runs of the batch-1 latency')
    parser.add_argument('--quick', action='store_true',
                        help='fewer repeats, no whole-model detection run')
    parser.add_argument('--compile', action='store_true',
                        help='torch.compile every model before timing')
    parser.add_argument('--official', help='local copy of the official '
                        'FcaFormer repository, to time its L2 classifier')
    parser.add_argument('--dense-windows', action='append', default=[],
                        metavar='S3,S4', help='also time the FcaFormer-L2 '
                        'backbone with these stage-3/4 windows (repeatable)')
    parser.add_argument('--drift-checkpoint', help='weights of the '
                        'UperNet FcaFormer-L2 config for the window-layout '
                        'feature drift (default: random weights)')
    parser.add_argument('--dense-only', action='store_true',
                        help='only the backbone latencies')
    parser.add_argument('--out', default='work_dirs/benchmark.json')
    parser.add_argument('--plot', default='work_dirs/benchmark.png')
    return parser.parse_args()


def synchronize(device):
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def time_call(fn, device, warmup, repeat):
    """Median and spread (min, max) of ``fn()`` in milliseconds."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeat):
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append((time.perf_counter() - start) * 1000)
    return dict(median_ms=statistics.median(times), min_ms=min(times),
                max_ms=max(times), runs=repeat)


def time_interleaved(fns, device, warmup, repeat):
    """:func:`time_call` for several callables, run in turn each round."""
    times = {name: [] for name in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(repeat):
            for name, fn in fns.items():
                synchronize(device)
                start = time.perf_counter()
                fn()
                synchronize(device)
                times[name].append((time.perf_counter() - start) * 1000)
    return {
        name: dict(median_ms=statistics.median(values), min_ms=min(values),
                   max_ms=max(values), runs=repeat)
        for name, values in times.items()
    }


def prepare(model, device, compile_model):
    model = model.to(device)
    model.eval()  # some backbones' train() returns None, so not chained
    if compile_model:
        model = torch.compile(model)
    return model


def classifier(name, path):
    model = build_model(load_config(path))
    if isinstance(getattr(model, 'backbone', None), torch.nn.Module) and \
            hasattr(model.backbone, 'switch_to_deploy'):
        model.backbone.switch_to_deploy()
    return model


def official_l2(repo):
    """The official FcaFormer-L2 classifier from a local copy of its
    repository (the user's; nothing of it is shipped with mmfca)."""
    path = osp.join(repo, 'image_classification', 'models', 'fcaformer.py')
    spec = importlib.util.spec_from_file_location('official_fcaformer', path)
    module = importlib.util.module_from_spec(spec)
    # timm's register_model looks the module up; the official file also
    # registers 'fcaformer_l*' names in timm, for this process only.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.fcaformer_l2()


def forward_fn(model, inputs):
    if is_detector(model):
        samples = detection_samples(inputs)
        return lambda: model.predict(inputs, samples)
    if hasattr(model, 'data_preprocessor'):
        if hasattr(model, 'inference'):  # mmseg segmentor
            meta = [dict(img_shape=inputs.shape[-2:],
                         ori_shape=inputs.shape[-2:],
                         pad_shape=inputs.shape[-2:],
                         padding_size=[0, 0, 0, 0])] * inputs.shape[0]
            return lambda: model.inference(inputs, meta)
        return lambda: model(inputs, mode='tensor')
    return lambda: model(inputs)


def _peak_rss_child(build, queue):
    torch.set_num_threads(1)
    model = build()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        forward_fn(model, torch.randn(1, 3, 224, 224))()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put((peak - base) / 1024)


def peak_memory_mb(build, device):
    """Extra memory of one batch-1 224x224 forward, in MB."""
    if device.startswith('cuda'):
        model = build().to(device)
        model.eval()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.no_grad():
            forward_fn(model, torch.randn(1, 3, 224, 224, device=device))()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    context = mp.get_context('fork')
    queue = context.Queue()
    process = context.Process(target=_peak_rss_child, args=(build, queue))
    process.start()
    value = queue.get()
    process.join()
    return value


def dense_backbones(windows=()):
    """FcaFormer-L2 (default windows, then each of ``windows``), ConvNeXt-T
    and Swin-T backbones of the UperNet configs."""
    fca = build_model(load_config(SEGMENTORS['UperNet FcaFormer-L2'])).backbone
    fca.switch_to_deploy()
    others = {}
    for window in windows:
        overrides = {'model.backbone.window_size': tuple(window),
                     'model.backbone.resize_bias_tables': True}
        other = build_model(
            load_config(SEGMENTORS['UperNet FcaFormer-L2'],
                        overrides)).backbone
        others[f'FcaFormer-L2 windows {window}'] = other.switch_to_deploy()
    convnext = build_model(load_config(
        SEGMENTORS['UperNet ConvNeXt-T'])).backbone
    swin = build_model(load_config(
        'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_'
        'ade20k-512x512.py')).backbone
    return {'FcaFormer-L2': fca, **others, 'ConvNeXt-T': convnext,
            'Swin-T': swin}


def report(section, results, key='median_ms'):
    base = results.get('ConvNeXt-T') or next(
        (v for k, v in results.items() if 'ConvNeXt-T' in k), None)
    print(f'\n{section}')
    for name, value in results.items():
        ratio = f'{value[key] / base[key]:.2f}x ConvNeXt-T' if base else ''
        spread = (f' (min {value["min_ms"]:.1f}, max {value["max_ms"]:.1f})'
                  if key == 'median_ms' else '')
        print(f'  {name:28s} {value[key]:9.1f}{spread}  {ratio}')


def parse_windows(values):
    windows = []
    for value in values:
        try:
            windows.append(tuple(int(v) for v in value.split(',')))
        except ValueError:
            raise SystemExit(f'--dense-windows takes comma-separated ints, '
                             f'e.g. 16,8; got {value!r}')
    return windows


def classification(args, device, repeat, results):
    builders = {n: (lambda n=n, p=p: classifier(n, p))
                for n, p in CLASSIFIERS.items()}
    if args.official:
        builders['FcaFormer-L2 (official)'] = lambda: official_l2(
            args.official)

    latency, throughput, memory, macs = {}, {}, {}, {}
    for name, build in builders.items():
        model = build()
        macs[name] = complexity(copy.deepcopy(model),
                                torch.randn(1, 3, 224, 224))['macs'] / 1e9
        model = prepare(model, device, args.compile)
        one = torch.randn(1, 3, 224, 224, device=device)
        latency[name] = time_call(forward_fn(model, one), device, 5, repeat)
        batch = torch.randn(64, 3, 224, 224, device=device)
        timed = time_call(forward_fn(model, batch), device, 1,
                          2 if args.quick else 5)
        timed['images_per_s'] = 64000 / timed['median_ms']
        throughput[name] = timed
        memory[name] = dict(peak_mb=peak_memory_mb(build, device))
    report('Classification latency, batch 1, 224x224 (ms)', latency)
    report('Classification, batch 64, 224x224 (images/s)', throughput,
           key='images_per_s')
    report('Peak memory of a batch-1 forward (MB)', memory, key='peak_mb')
    results.update(classification_latency=latency,
                   classification_throughput=throughput,
                   peak_memory=memory, gmacs_224=macs)
    return latency, macs


def backbones(args, device, repeat, results):
    dense = {}
    models = {
        name: prepare(backbone, device, args.compile)
        for name, backbone in dense_backbones(
            parse_windows(args.dense_windows)).items()
    }
    for size in ((512, 512), (800, 1216)):
        x = torch.randn(1, 3, *size, device=device)
        fns = {name: (lambda m=m, x=x: m(x)) for name, m in models.items()}
        timings = time_interleaved(fns, device, 1, max(3, repeat // 4))
        report(f'Backbone latency, {size[0]}x{size[1]} (ms)', timings)
        dense[f'{size[0]}x{size[1]}'] = timings
    results['backbone_latency'] = dense


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
            elif value.dim() == 1 or name.endswith(
                    ('position_bias', 'depth_bias', 'cross_scale')):
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
        load_checkpoint(default, checkpoint, map_location='cpu',
                        revise_keys=[(r'^backbone\.', '')])
    else:
        randomize(default)
    default.eval()
    gen = torch.Generator().manual_seed(1)
    # Smooth random images (upsampled noise), standardised like inputs.
    larger = torch.nn.functional.interpolate(
        torch.randn(samples, 3, 68, 68, generator=gen), size=(544, 544),
        mode='bilinear', align_corners=False)
    images = larger[..., :512, :512]

    def distances(outs, refs):
        rel, cos = [], []
        for out, ref in zip(outs, refs):
            rel.append(float((out - ref).norm() / ref.norm()))
            cos.append(float(torch.nn.functional.cosine_similarity(
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
            overrides = {'model.backbone.window_size': tuple(window),
                         'model.backbone.resize_bias_tables': True}
            other = build_model(load_config(config, overrides)).backbone
            other.load_state_dict(default.state_dict())
            other.eval()
            results[f'windows {window}'] = distances(other(images), refs)
    print(f'\nFeature drift from the default windows at 512x512 ('
          f'{"checkpoint" if checkpoint else "random weights"}; relative '
          f'L2 / cosine per output)')
    for name, value in results.items():
        cells = '  '.join(f'{r:.3f}/{c:.3f}' for r, c in zip(
            value['relative_l2'], value['cosine']))
        print(f'  {name:28s} {cells}')
    return results


def whole_models(args, device, results):
    whole = {}
    models = dict(SEGMENTORS)
    if not args.quick:
        models.update(DETECTORS)
    for name, path in models.items():
        model = build_model(load_config(path))
        if hasattr(model.backbone, 'switch_to_deploy'):
            model.backbone.switch_to_deploy()
        model = model.to(device)
        model.eval()
        size = (800, 1216) if name in DETECTORS else (512, 512)
        x = torch.randn(1, 3, *size, device=device)
        whole[name] = time_call(forward_fn(model, x), device, 1, 3)
    report('Whole-model inference, batch 1 (ms)', whole)
    results['whole_model_latency'] = whole


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = args.device
    repeat = max(3, args.repeat // 4) if args.quick else args.repeat
    results = dict(device=device, threads=args.threads,
                   torch=torch.__version__, compile=args.compile)
    if not args.dense_only:
        latency, macs = classification(args, device, repeat, results)
    backbones(args, device, repeat, results)
    if args.dense_windows:
        results['window_drift'] = window_drift(
            parse_windows(args.dense_windows), args.drift_checkpoint)
    if not args.dense_only:
        whole_models(args, device, results)

    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as file:
        json.dump(results, file, indent=2)
    print(f'\nresults saved to {args.out}')
    if not args.dense_only:
        plot(latency, macs, args.plot, device, args.threads)


def plot(latency, macs, path, device, threads):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, value in latency.items():
        ax.scatter(macs[name], value['median_ms'])
        ax.annotate(name, (macs[name], value['median_ms']), fontsize=8,
                    textcoords='offset points', xytext=(4, 4))
    ax.set_xlabel('GMACs (224x224)')
    ax.set_ylabel('latency, batch 1 (ms)')
    ax.set_title(f'{device}, {threads} threads')
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f'plot saved to {path}')


if __name__ == '__main__':
    main()
