"""Layer-wise learning-rate decay for FcaFormer, as in the official recipes.

mmseg's and mmdet's ``LearningRateDecayOptimizerConstructor`` know ConvNeXt
and BEiT only. This constructor (mmengine's default one with its own
``add_params``) assigns FcaFormer parameters to layer groups exactly as the
official downstream code does, quirks included, by the name contract of
:mod:`mmfca.models.names` (:func:`~mmfca.models.names.layer_group` has the
table; :func:`~mmfca.models.names.no_weight_decay` the weight-decay rule).

A group's learning rate is ``lr * decay_rate ** (num_layers + 1 - id)``: the
last group trains at the full rate.
"""
import json

from mmengine.dist import get_dist_info
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from ...models.names import DECAY_TYPES, layer_group, no_weight_decay


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
                f'{DECAY_TYPES}, got {decay_type!r} (paramwise_cfg).')
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
            no_decay = no_weight_decay(name, param, decay_type)
            layer_id = layer_group(name, decay_type, num_layers)
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
