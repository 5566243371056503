"""Layer-wise learning-rate decay for FcaFormer, as in the official recipes.

mmseg's and mmdet's ``LearningRateDecayOptimizerConstructor`` know ConvNeXt
and BEiT only. This constructor (mmengine's default one with its own
``add_params``) assigns FcaFormer parameters to layer groups
exactly as the official downstream code does, quirks included, expressed on
mmfca's parameter names:

==========================  =====================  =====================
parameters                  ``stage_wise`` (seg)   ``layer_wise_cab`` (det)
==========================  =====================  =====================
stem                        0                      0
downsampling into stage 2   0                      0
downsampling into stage 3   0                      2
downsampling into stage 4   0                      3
LSFs (cross_scale), depth   0                      0
bias, anywhere
stage 1 / 2 blocks          1 / 2                  1 / 2
stage 3 block ``b``         3                      3 + b // 3
stage 4 blocks              4                      ``num_layers``
everything else (output     ``num_layers + 1``     ``num_layers + 1``
projections, neck, heads)
==========================  =====================  =====================

A group's learning rate is ``lr * decay_rate ** (num_layers + 1 - id)``: the
last group trains at the full rate. Weight decay is 0 for 1-D parameters and
biases; ``stage_wise`` also exempts the position and depth bias tables and
anything with 'norm' in its name (the official segmentation rule), while
``layer_wise_cab`` decays those tables (the official detection rule). The
LSFs are decayed in both, as officially.
"""
import json

from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from ...models.utils.layer_groups import fcaformer_layer_id

DECAY_TYPES = ('stage_wise', 'layer_wise_cab')


def fcaformer_no_weight_decay(name: str, param, decay_type: str) -> bool:
    """Whether the official recipe exempts a parameter from weight decay."""
    if param.ndim == 1 or name.endswith('.bias') or name in ('pos_embed',
                                                             'cls_token'):
        return True
    if decay_type == 'stage_wise':
        return name.endswith(
            ('attn.depth_bias', 'attn.position_bias')) or ('norm' in name)
    return False


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class FcaFormerLearningRateDecayOptimizerConstructor(
        DefaultOptimWrapperConstructor):
    """Learning-rate decay over FcaFormer's stages or layers.

    ``paramwise_cfg`` takes ``decay_rate``, ``decay_type`` ('stage_wise' as
    the official segmentation recipe, 'layer_wise_cab' as the detection
    one) and ``num_layers`` (6 in both). See the module docstring for the
    grouping.
    """

    def add_params(self, params, module, **kwargs):
        """Add the parameters of ``module`` to ``params`` in layer groups.

        Args:
            params (list[dict]): Parameter groups, extended in place.
            module (nn.Module): The whole model.
        """
        decay_type = self.paramwise_cfg.get('decay_type', 'stage_wise')
        if decay_type not in DECAY_TYPES:
            raise ValueError(
                f'FcaFormer learning-rate decay_type must be one of '
                f'{DECAY_TYPES}, got {decay_type!r}.')
        for key in ('decay_rate', 'num_layers'):
            if key not in self.paramwise_cfg:
                raise KeyError(f'paramwise_cfg needs "{key}" for '
                               f'{type(self).__name__}.')
        decay_rate = self.paramwise_cfg['decay_rate']
        num_layers = self.paramwise_cfg['num_layers']
        groups = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            no_decay = fcaformer_no_weight_decay(name, param, decay_type)
            layer_id = fcaformer_layer_id(name, decay_type, num_layers)
            kind = 'no_decay' if no_decay else 'decay'
            group_name = f'layer_{layer_id}_{kind}'
            if group_name not in groups:
                scale = decay_rate**(num_layers + 1 - layer_id)
                groups[group_name] = dict(
                    weight_decay=0. if no_decay else self.base_wd,
                    params=[],
                    param_names=[],
                    lr_scale=scale,
                    group_name=group_name,
                    lr=scale * self.base_lr)
            groups[group_name]['params'].append(param)
            groups[group_name]['param_names'].append(name)
        if get_dist_info()[0] == 0:
            summary = {
                key:
                dict(
                    lr_scale=group['lr_scale'],
                    lr=group['lr'],
                    weight_decay=group['weight_decay'],
                    params=len(group['params']))
                for key, group in sorted(groups.items())
            }
            print_log(
                f'FcaFormer {decay_type} learning-rate decay groups: '
                f'{json.dumps(summary, indent=1)}',
                logger='current')
        params.extend(groups.values())
