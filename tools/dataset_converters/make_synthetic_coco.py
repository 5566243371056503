"""Write a small synthetic instance-segmentation dataset in the COCO layout.

    python tools/dataset_converters/make_synthetic_coco.py data/synthetic_coco

Polygon masks of three COCO categories on textured backgrounds, some crowd
regions and some empty images; train and test on it with the
``--cfg-options`` overrides shown in the README.
"""
import argparse

from mmfca.datasets import make_synthetic_coco


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='output dataset root')
    parser.add_argument('--num-train', type=int, default=40)
    parser.add_argument('--num-val', type=int, default=10)
    parser.add_argument('--size', type=int, default=128,
                        help='image height (width is 4/3 of it)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    counts = make_synthetic_coco(args.root, args.num_train, args.num_val,
                                 args.size, args.seed)
    print(f'wrote {counts["train2017"]} training and {counts["val2017"]} '
          f'validation annotations to {args.root}')


if __name__ == '__main__':
    main()
