"""mmengine's ``Pretrained`` initialiser for FcaFormer checkpoints in any
layout (the OpenMMLab side of :mod:`mmfca.models.utils.checkpoint`)."""
import logging
from typing import Optional

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model.weight_init import PretrainedInit, update_init_info

from ...utils.serialization import MapLocation, load_checkpoint_file
from ..utils.checkpoint import (fit_backbone_weights,
                                prepare_backbone_state_dict)


class FcaFormerPretrainedInit(PretrainedInit):
    """mmengine's ``Pretrained`` initialiser for FcaFormer checkpoints in any
    layout.

    :class:`~mmfca.models.FcaFormer` runs its ``init_cfg=dict(
    type='Pretrained', ...)`` with this class, which takes two keys more
    than mmengine's :class:`~mmengine.model.PretrainedInit`. The file is
    read by :func:`~mmfca.utils.serialization.load_checkpoint_file` (local
    paths, URLs and mmengine storage backends, always ``weights_only``);
    :func:`~mmfca.models.utils.checkpoint.fit_backbone_weights` picks the
    weights out of official and mmengine checkpoints (EMA on request),
    fits them to the backbone and checks them; they load through
    ``load_state_dict``. The outcome is kept in the backbone's
    ``load_report``.

    Args:
        checkpoint (str): Checkpoint path or URL.
        prefix (str, optional): Name prefix of the backbone in the
            checkpoint, e.g. 'backbone.'. Defaults to None (strip
            'backbone.' when present; official ImageNet weights are taken
            whole with any prefix).
        map_location: Where the tensors are read to, as in
            :func:`torch.load`. Defaults to 'cpu'.
        use_ema (bool): Load the EMA weights (official ``model_ema``,
            mmengine's ``ema_state_dict``). Defaults to False.
        strict (bool): Refuse a checkpoint that lacks backbone tensors,
            except the output layers of a backbone started from an ImageNet
            classifier (the file cannot have them). With False, the tensors
            that match are loaded and the others are logged as missing; a
            checkpoint that matches no tensor is refused either way.
            Defaults to True.

    Raises:
        ValueError: For keys it does not know, when shapes do not match the
            model (another arch or window size), or when the checkpoint
            lacks backbone tensors; the message names what the checkpoint
            holds.
    """

    def __init__(self,
                 checkpoint: str,
                 prefix: Optional[str] = None,
                 map_location: MapLocation = 'cpu',
                 use_ema: bool = False,
                 strict: bool = True,
                 **unknown):
        if unknown:
            raise ValueError(
                f'Unknown keys {sorted(unknown)} in the FcaFormer Pretrained '
                f'init_cfg; allowed: checkpoint, prefix, use_ema, strict, '
                f'map_location.')
        super().__init__(checkpoint, prefix=prefix, map_location=map_location)
        self.use_ema = use_ema
        self.strict = strict

    def __call__(self, module: nn.Module) -> None:
        filename = self.checkpoint
        print_log(f'FcaFormer: loading {filename}', logger='current')
        own = module.state_dict()
        fitted = fit_backbone_weights(
            load_checkpoint_file(filename, self.map_location),
            own,
            module.num_stages,
            source=filename,
            fix=("Check the file and `prefix` in the Pretrained init_cfg: "
                 "the backbone's name in the checkpoint, e.g. 'backbone.' "
                 "for an OpenMMLab classifier, segmentor or detector (None "
                 "takes 'backbone.' when present)."),
            opt_out='strict=False in the Pretrained init_cfg',
            prefix=self.prefix,
            use_ema=self.use_ema,
            strict=self.strict,
            prepare=lambda weights: prepare_backbone_state_dict(
                module, weights, source=filename))
        usable = {k: v for k, v in fitted.backbone.items() if k in own}
        module.load_state_dict(usable, strict=False)
        print_log(
            f'FcaFormer: loaded {len(usable)} of {len(own)} tensors from '
            f'{filename}',
            logger='current')
        if fitted.new_outputs:
            print_log(
                f'FcaFormer: newly initialised output layers (not in the '
                f'ImageNet checkpoint): {fitted.new_outputs}',
                logger='current')
        if fitted.missing:
            print_log(
                f'FcaFormer: strict=False, missing keys left at their '
                f'initial values: {fitted.missing}',
                logger='current',
                level=logging.WARNING)
        if fitted.unused:
            print_log(
                f'FcaFormer: checkpoint keys not used by the backbone: '
                f'{fitted.unused}',
                logger='current')
        module.load_report = dict(
            loaded=list(usable),
            new_outputs=fitted.new_outputs,
            missing=fitted.missing,
            unused=fitted.unused)
        if hasattr(module, '_params_init_info'):
            update_init_info(module, init_info=self._get_init_info())
