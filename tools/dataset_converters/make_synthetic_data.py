"""Write a small synthetic dataset in a standard on-disk layout.

    python tools/dataset_converters/make_synthetic_data.py \
        ade20k data/synthetic_ade
    python tools/dataset_converters/make_synthetic_data.py \
        coco data/synthetic_coco
    python tools/dataset_converters/make_synthetic_data.py \
        imagenet data/synthetic_imagenet

ade20k: the ADEChallengeData2016 layout, shapes of four classes on textured
backgrounds. coco: the COCO 2017 layout, polygon masks of three COCO
categories, some crowd regions and empty images. imagenet: mmpretrain's
ImageNet layout, four classes. The configs in configs/synthetic/ train and
test on them where these commands write them (data/synthetic_*).
"""
import argparse

from mmfca.testing import (make_synthetic_ade20k, make_synthetic_coco,
                           make_synthetic_imagenet)

MAKERS = {
    'ade20k': make_synthetic_ade20k,
    'coco': make_synthetic_coco,
    'imagenet': make_synthetic_imagenet,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('kind', choices=sorted(MAKERS), help='layout')
    parser.add_argument('root', help='output dataset root')
    parser.add_argument('--num-train', type=int, default=40)
    parser.add_argument('--num-val', type=int, default=10)
    parser.add_argument(
        '--size',
        type=int,
        default=128,
        help='image height (width is 4/3 of it, square for '
        'imagenet)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    counts = MAKERS[args.kind](args.root, args.num_train, args.num_val,
                               args.size, args.seed)
    print(f'wrote {args.kind} data to {args.root}: ' +
          ', '.join(f'{n} {split}' for split, n in counts.items()))


if __name__ == '__main__':
    main()
