"""Export an FcaFormer classifier or dense backbone to ONNX and check it
against PyTorch in onnxruntime.

    python tools/deployment/pytorch2onnx.py CONFIG [--checkpoint CKPT]
        [--out model.onnx] [--shape H W] [--dense [--dynamic]]
        [--device cpu|cuda]

A classifier config exports the whole model (images -> logits).
``--dense`` exports the backbone of a segmentation or detection config
(images -> stage outputs). Without ``--dynamic`` the file is for the
``--shape`` size only; with it, batch, height and width are dynamic (the
TorchScript-based exporter; see mmfca/deployment/onnx.py) and ``--check-shape``
sizes are compared as well, e.g.

    python tools/deployment/pytorch2onnx.py \
        configs/upernet_fcaformer_l2_160k_ade20k.py --dense --dynamic \
        --shape 512 512 --check-shape 150 110 --check-shape 224 320

The backbone is switched to deploy mode first (conv-BN folded, attention
bias masks precomputed); the export is checked against PyTorch in
onnxruntime. ``--device`` is where PyTorch traces the export and computes
the reference outputs (the model is folded, then moved there with its
inputs); onnxruntime runs the file on the CPU.
"""
import argparse

import torch

from mmfca.apis import build_model, load_config
from mmfca.deployment import check_onnx, export_onnx


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
        device=device)
    shapes = [tuple(args.shape)]
    shapes += [tuple(shape) for shape in args.check_shape]
    for shape in shapes:
        error = check_onnx(
            model, args.out, shape, dense=args.dense, device=device)
        print(f'{shape[0]}x{shape[1]}: max |onnxruntime (CPU) - torch '
              f'({device})| = {error:.2e}')
    print(f'saved {args.out}')


if __name__ == '__main__':
    torch.set_grad_enabled(False)
    main()
