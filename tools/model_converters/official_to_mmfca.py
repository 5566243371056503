"""Convert an official FcaFormer checkpoint to mmfca / mmpretrain format.

    python tools/model_converters/official_to_mmfca.py SRC DST [--ema]

SRC is either an official ImageNet checkpoint (``model`` / ``model_ema``, as
the official training script saves it) or an official segmentation or
detection checkpoint (``state_dict`` with the backbone under ``backbone.``).
DST gets ``{'state_dict': ..., 'meta': ...}`` with mmfca names: ImageNet
weights become an mmpretrain ImageClassifier (``backbone.`` and
``head.fc.``), downstream weights keep their non-backbone entries as they
are. The result loads strictly with mmengine's ``load_checkpoint``.

An input that is not an official checkpoint of a hybrid arch of the arch
table (mmfca.models.layers.FCAFORMER_ARCHS), or lacks any
tensor of the official model, is refused with a message saying what it
holds.
"""
import argparse
import os
import re
import sys
from collections import OrderedDict
from typing import Dict, List, Optional

import torch

from mmfca.models import FcaFormer
from mmfca.models.layers import FCAFORMER_ARCHS, is_plain
from mmfca.models.utils.checkpoint import (convert_official_state_dict,
                                           describe_arch, fit_backbone_weights,
                                           infer_arch, is_official_layout,
                                           select_state_dict, strip_prefix,
                                           top_level_names)
from mmfca.utils.serialization import load_checkpoint_file


def hybrid_archs() -> List[str]:
    """The archs official checkpoints exist for: the hybrids of the arch
    table (the official code has no plain model)."""
    return [
        name for name, settings in FCAFORMER_ARCHS.items()
        if not is_plain(settings)
    ]


def expected_backbone(backbone: dict, arch: str) -> Dict[str, torch.Tensor]:
    """The state dict of the official ``arch`` model with these outputs: the
    ImageNet classifier's final norm, or the dense model's projections."""
    widths = {
        int(m.group(1)): int(v.shape[0])
        for m, v in ((re.match(r'proj(\d+)\.conv\.weight$', k), v)
                     for k, v in backbone.items()) if m
    }
    channels = FCAFORMER_ARCHS[arch]['channels']
    if widths:
        model = FcaFormer(
            arch,
            out_indices=sorted(widths),
            out_channels=[widths.get(i, c) for i, c in enumerate(channels)])
    else:
        model = FcaFormer(
            arch, out_indices=len(channels) - 1, gap_before_final_norm=True)
    return model.state_dict()


def convert(checkpoint: dict, use_ema: bool = False) -> OrderedDict:
    """Return the converted state dict of an official checkpoint.

    Raises:
        ValueError: When the checkpoint is not an official hybrid FcaFormer
            checkpoint (a message says what it holds), or lacks tensors of
            the official model.
    """
    state_dict = select_state_dict(checkpoint, use_ema)
    source, _ = strip_prefix(state_dict, None)
    if not is_official_layout(source):
        raise ValueError(
            f'this is not an official FcaFormer checkpoint (no '
            f'patch_embed.seq.* / layer_*.* keys): its top-level names are '
            f'{top_level_names(state_dict)}, and its backbone looks like '
            f'{describe_arch(source, FCAFORMER_ARCHS)}. mmfca checkpoints '
            f'need no conversion; other models cannot be converted.')
    out, unknown = convert_official_state_dict(state_dict)
    if unknown:
        raise ValueError(f'official keys with no mmfca counterpart: '
                         f'{unknown}')
    backbone, _ = strip_prefix(out, 'backbone.')
    arch, _ = infer_arch(backbone, FCAFORMER_ARCHS)
    if arch is None or is_plain(FCAFORMER_ARCHS[arch]):
        raise ValueError(
            f'the weights look like {describe_arch(backbone, FCAFORMER_ARCHS)}'
            f', which is none of the hybrid archs of the arch table '
            f'{sorted(hybrid_archs())}; the file may be incomplete.')
    # The coverage rule every loader shares, against the official model
    # with this file's outputs; the converter allows no absent tensor, not
    # even the outputs a classifier file cannot have.
    fitted = fit_backbone_weights(
        out,
        expected_backbone(backbone, arch),
        num_stages=len(FCAFORMER_ARCHS[arch]['channels']),
        source='the official checkpoint',
        fix='Download or save the file again.',
        opt_out='nothing (the converter writes complete files only)',
        prefix='backbone.',
        strict=False)
    missing = fitted.new_outputs + fitted.missing
    if not any(k.startswith('proj') for k in backbone):
        # An ImageNet classifier: its head becomes mmpretrain's.
        missing += [
            f'head.{k}' for k in ('fc.weight', 'fc.bias')
            if k not in fitted.head
        ]
    if missing:
        raise ValueError(
            f'the official FcaFormer-{arch.upper()} weights are incomplete: '
            f'{len(missing)} of its tensors are missing (in mmfca names), '
            f'e.g. {missing[:5]}. Download or save the file again.')
    return out


def main(argv: Optional[List[str]] = None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official checkpoint')
    parser.add_argument('dst', help='where to write the mmfca checkpoint')
    parser.add_argument(
        '--ema',
        action='store_true',
        help='take the EMA weights (model_ema) of an ImageNet checkpoint')
    args = parser.parse_args(argv)
    try:
        state_dict = convert(
            load_checkpoint_file(args.src, map_location='cpu'),
            use_ema=args.ema)
    except ValueError as err:
        sys.exit(f'official_to_mmfca: refusing {args.src!r}: {err}')
    os.makedirs(os.path.dirname(os.path.abspath(args.dst)), exist_ok=True)
    torch.save(
        dict(
            state_dict=state_dict,
            meta=dict(source=os.path.basename(args.src), ema=args.ema)),
        args.dst)
    print(f'wrote {len(state_dict)} tensors to {args.dst}')


if __name__ == '__main__':
    main()
