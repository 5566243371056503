"""Convert an official FcaFormer checkpoint to mmfca / mmpretrain format.

    python tools/model_converters/official_to_mmfca.py SRC DST [--ema]

SRC is either an official ImageNet checkpoint (``model`` / ``model_ema``, as
the official training script saves it) or an official segmentation or
detection checkpoint (``state_dict`` with the backbone under ``backbone.``).
DST gets ``{'state_dict': ..., 'meta': ...}`` with mmfca names: ImageNet
weights become an mmpretrain ImageClassifier (``backbone.`` and
``head.fc.``), downstream weights keep their non-backbone entries as they
are. The result loads strictly with mmengine's ``load_checkpoint``.
"""
import argparse
import os
from collections import OrderedDict

import torch

from mmfca.models.checkpoint import (convert_official_keys,
                                     is_official_layout, select_state_dict)
from mmfca.serialization import load_weights


def convert(checkpoint: dict, use_ema: bool = False) -> OrderedDict:
    """Return the converted state dict of an official checkpoint."""
    state_dict = select_state_dict(checkpoint, use_ema)
    backbone_keys = OrderedDict(
        (k[len('backbone.'):], v) for k, v in state_dict.items()
        if k.startswith('backbone.'))
    if backbone_keys:
        source, rest = backbone_keys, OrderedDict(
            (k, v) for k, v in state_dict.items()
            if not k.startswith('backbone.'))
    else:
        source, rest = state_dict, OrderedDict()
    if not is_official_layout(source):
        raise ValueError(
            'This checkpoint does not use the official FcaFormer names '
            '(no patch_embed.* / layer_*.* keys); mmfca checkpoints need no '
            'conversion.')
    backbone, head, unknown = convert_official_keys(source)
    if unknown:
        raise ValueError(f'Official keys with no mmfca counterpart: '
                         f'{unknown}')
    out = OrderedDict((f'backbone.{k}', v) for k, v in backbone.items())
    out.update((f'head.{k}', v) for k, v in head.items())
    out.update(rest)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official checkpoint')
    parser.add_argument('dst', help='where to write the mmfca checkpoint')
    parser.add_argument(
        '--ema',
        action='store_true',
        help='take the EMA weights (model_ema) of an ImageNet checkpoint')
    args = parser.parse_args()
    state_dict = convert(load_weights(args.src), use_ema=args.ema)
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save(
        dict(
            state_dict=state_dict,
            meta=dict(source=os.path.basename(args.src), ema=args.ema)),
        args.dst)
    print(f'wrote {len(state_dict)} tensors to {args.dst}')


if __name__ == '__main__':
    main()
