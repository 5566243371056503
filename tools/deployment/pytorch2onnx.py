"""Export an FcaFormer classifier, dense backbone or whole segmentor to
ONNX and check it against PyTorch in onnxruntime.

    python tools/deployment/pytorch2onnx.py CONFIG [--checkpoint CKPT]
        [--out model.onnx] [--shape H W] [--dense | --segmentor [--argmax]]
        [--dynamic] [--check-shape H W ...] [--device cpu|cuda]
        [--time ROUNDS [--threads N]]

A classifier config exports the whole model (images -> logits).
``--dense`` exports the backbone of a segmentation or detection config
(images -> stage outputs). ``--segmentor`` exports a whole mmseg segmentor
(normalised images -> logits at the input size, mmseg's whole-image
inference; ``--argmax`` -> labels), checked against mmseg's own
``predict``. Without ``--dynamic`` the file is for the ``--shape`` size
only; with it, batch, height and width are dynamic (the TorchScript-based
exporter; see mmfca/deployment/onnx.py) and ``--check-shape`` sizes are
compared as well, e.g.

    python tools/deployment/pytorch2onnx.py \
        configs/upernet_fcaformer_l2_160k_ade20k.py --segmentor --dynamic \
        --shape 512 512 --check-shape 480 641 --time 30

The backbone is switched to deploy mode first (conv-BN folded, attention
bias masks precomputed); the export is checked against PyTorch in
onnxruntime. ``--device`` is where PyTorch traces the export and computes
the reference outputs (the model is folded, then moved there with its
inputs); onnxruntime runs the file on the CPU. ``--time`` then times
onnxruntime against PyTorch on the CPU at ``--shape``, batch 1, in pairs
of calls in alternating order, and prints the median of the per-pair
ratios with their quartiles and range.
"""
import argparse

import torch

from mmfca.apis import build_model, load_config
from mmfca.deployment import check_onnx, export_onnx, time_onnx


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument('--checkpoint', help='checkpoint to load')
    parser.add_argument('--out', default='fcaformer.onnx')
    parser.add_argument(
        '--shape',
        type=int,
        nargs=2,
        default=[224, 224],
        help='export input height and width')
    parser.add_argument(
        '--dense',
        action='store_true',
        help='export the backbone (stage outputs)')
    parser.add_argument(
        '--segmentor',
        action='store_true',
        help='export the whole segmentor (logits at the input size)')
    parser.add_argument(
        '--argmax',
        action='store_true',
        help='with --segmentor, output labels instead of logits')
    parser.add_argument(
        '--dynamic',
        action='store_true',
        help='dynamic batch, height and width')
    parser.add_argument(
        '--check-shape',
        type=int,
        nargs=2,
        action='append',
        default=[],
        metavar=('H', 'W'),
        help='with --dynamic, also compare at this size '
        '(repeatable)')
    parser.add_argument(
        '--device',
        default='cpu',
        help='torch device to trace on (cpu, cuda, ...)')
    parser.add_argument(
        '--time',
        type=int,
        default=0,
        metavar='ROUNDS',
        help='time onnxruntime against PyTorch (CPU) in this many pairs')
    parser.add_argument(
        '--threads',
        type=int,
        default=2,
        help='threads of onnxruntime and PyTorch for --time')
    args = parser.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        parser.error(f'--device {args.device!r} is not a torch device: '
                     f'{error}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error(f'--device {args.device!r}: torch.cuda.is_available() '
                     f'is False (a torch build without CUDA, or no GPU '
                     f'visible). Use --device cpu.')
    if args.check_shape and not args.dynamic:
        parser.error('--check-shape needs --dynamic (a static export '
                     'accepts only --shape)')
    if args.dense and args.segmentor:
        parser.error('--dense (the backbone) and --segmentor (the whole '
                     'segmentor) exclude each other')
    if args.argmax and not args.segmentor:
        parser.error('--argmax (labels) needs --segmentor')
    model = build_model(load_config(args.config))
    if args.checkpoint:
        from mmengine.runner import load_checkpoint

        from mmfca.utils.serialization import checkpoint_globals
        with checkpoint_globals():
            load_checkpoint(model, args.checkpoint, map_location='cpu')
    export_onnx(
        model,
        args.out,
        tuple(args.shape),
        dense=args.dense,
        dynamic=args.dynamic,
        device=device,
        segmentor=args.segmentor,
        argmax=args.argmax)
    kinds = dict(
        dense=args.dense, segmentor=args.segmentor, argmax=args.argmax)
    if args.segmentor and model.test_cfg.get('mode') == 'slide':
        print('The file holds whole-image inference (test_cfg.mode '
              "'whole'), compared with mmseg's predict in that mode; the "
              "config tests with mode 'slide' (crop_size "
              f'{tuple(model.test_cfg.crop_size)}), the same computation '
              'on each crop: crop, run the file per crop and average.')
    shapes = [tuple(args.shape)]
    shapes += [tuple(shape) for shape in args.check_shape]
    for shape in shapes:
        error = check_onnx(model, args.out, shape, device=device, **kinds)
        if args.argmax:
            measure = f'share of pixels labelled unlike torch ({device})'
        else:
            measure = f'max |onnxruntime (CPU) - torch ({device})|'
        print(f'{shape[0]}x{shape[1]}: {measure} = {error:.2e}')
    print(f'saved {args.out}')
    if args.time:
        result = time_onnx(
            model,
            args.out,
            tuple(args.shape),
            rounds=args.time,
            threads=args.threads,
            **kinds)
        print(f'{args.shape[0]}x{args.shape[1]}, batch 1, CPU, '
              f'{args.threads} threads, {result["rounds"]} pairs: '
              f'onnxruntime {result["onnxruntime_ms"]:.1f} ms, torch '
              f'{result["torch_ms"]:.1f} ms (medians); onnxruntime / torch '
              f'per pair: median {result["ratio"]:.3f} '
              f'[{result["ratio_q1"]:.3f}-{result["ratio_q3"]:.3f}] '
              f'({result["ratio_min"]:.2f}-{result["ratio_max"]:.2f})')


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    main()
