"""Write a small synthetic dataset in the ADE20K (ADEChallengeData2016) layout.

    python tools/dataset_converters/make_synthetic_ade20k.py data/synthetic_ade

Shapes of four classes on textured backgrounds; train and test on it with
``--cfg-options`` overrides shown in the README.
"""
import argparse

from mmfca.datasets import make_synthetic_ade20k


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='output dataset root')
    parser.add_argument('--num-train', type=int, default=40)
    parser.add_argument('--num-val', type=int, default=10)
    parser.add_argument('--size', type=int, default=128,
                        help='image height (width is 4/3 of it)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    counts = make_synthetic_ade20k(args.root, args.num_train, args.num_val,
                                   args.size, args.seed)
    print(f'wrote {counts["training"]} training and {counts["validation"]} '
          f'validation images to {args.root}')


if __name__ == '__main__':
    main()
