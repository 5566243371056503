"""Write a small synthetic classification dataset in the ImageNet layout.

    python tools/dataset_converters/make_synthetic_imagenet.py data/synthetic_imagenet

``train/<class>/*.JPEG``, ``val/<class>/*.JPEG`` and ``meta/{train,val}.txt``
as mmpretrain's ImageNet dataset reads them; four classes (ImageNet indices
0-3), one shape kind each.
"""
import argparse

from mmfca.datasets import make_synthetic_imagenet


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='output dataset root')
    parser.add_argument('--num-train', type=int, default=32)
    parser.add_argument('--num-val', type=int, default=8)
    parser.add_argument('--size', type=int, default=96, help='image side')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    counts = make_synthetic_imagenet(args.root, args.num_train, args.num_val,
                                     args.size, args.seed)
    print(f'wrote {counts["train"]} training and {counts["val"]} validation '
          f'images to {args.root}')


if __name__ == '__main__':
    main()
