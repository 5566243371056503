"""Segment an image with an mmfca segmentation config and checkpoint.

    python demo/seg_demo.py IMAGE CONFIG CHECKPOINT [--out-file OUT.png]

Saves the image with the predicted classes drawn over it.
"""
import argparse

import mmcv
from mmseg.apis import MMSegInferencer

import mmfca  # noqa: F401  registers FcaFormer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out-file',
        default='seg_result.png',
        help='where to save the overlay')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument(
        '--opacity',
        type=float,
        default=0.5,
        help='opacity of the drawn classes, 0 to 1')
    args = parser.parse_args()
    inferencer = MMSegInferencer(
        model=args.config, weights=args.checkpoint, device=args.device)
    result = inferencer(args.image, return_vis=True, opacity=args.opacity)
    # One image in: the inferencer returns one RGB drawing, not a list.
    mmcv.imwrite(result['visualization'][..., ::-1], args.out_file)
    classes = sorted(set(result['predictions'].flatten().tolist()))
    names = inferencer.model.dataset_meta['classes']
    print(f'predicted classes: {[names[c] for c in classes]}')
    print(f'overlay saved to {args.out_file}')


if __name__ == '__main__':
    main()
