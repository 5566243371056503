"""Count the parameters and MACs of a config's model.

    python tools/analysis/get_flops.py CONFIG [--shape H [W]]

Uses mmengine's complexity counter, with the attention matmuls of
``scaled_dot_product_attention`` counted (see mmfca/utils/mac_counting.py).
Works for mmpretrain, mmseg and mmdet configs (the config's default_scope
decides), including the codebases' own configs as
``mmseg::path/to/config.py``.

Two-stage detectors are counted with the RPN keeping all its proposals
(1000 in the 3x configs) and every RoI stage seeing all of them; published
figures assume fewer, so compare like with like.
"""
import argparse

import torch
from mmengine.config import DictAction

from mmfca.apis import build_model, load_config
from mmfca.utils.mac_counting import complexity, keep_all_proposals


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--shape',
        type=int,
        nargs='+',
        default=[224],
        help='input height and width (one value: square); default 224')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, key=value')
    return parser.parse_args()


def main():
    args = parse_args()
    if len(args.shape) not in (1, 2):
        raise SystemExit('--shape takes H or H W')
    height, width = args.shape if len(args.shape) == 2 else args.shape * 2
    cfg = load_config(args.config, args.cfg_options)
    if cfg.default_scope == 'mmdet':
        keep_all_proposals(cfg)
        print('Convention: the RPN keeps all its proposals and every RoI '
              'stage sees them.')
    model = build_model(cfg)
    result = complexity(model, torch.randn(1, 3, height, width))
    print(f'Input shape: (1, 3, {height}, {width})')
    print(f'Params: {result["params"] / 1e6:.3f}M')
    print(f'MACs: {result["macs"] / 1e9:.3f}G')


if __name__ == '__main__':
    main()
