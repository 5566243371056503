# FcaFormer-L2 as the backbone of the dense-prediction configs (UperNet,
# Mask R-CNN, Cascade Mask R-CNN), as the official segmentation and
# detection backbones: the four stages out, widened to (96, 192, 384, 768)
# channels, layer scale 1.0, ImageNet-pretrained. A variable rather than
# `model`, which the codebases' bases set too; the configs take it as
#
#     backbone=dict(_base_.fcaformer_l2_dense, _delete_=True,
#                   drop_path_rate=...)
#
# The weights: an official ImageNet checkpoint as it is, its conversion
# (tools/model_converters/official_to_mmfca.py), or a checkpoint of
# `tools/train.py configs/fcaformer_l2_in1k.py`. Override with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH.
pretrained = 'checkpoints/fcaformer_l2_in1k.pth'
fcaformer_l2_dense = dict(
    type='FcaFormer',
    arch='l2',
    out_indices=(0, 1, 2, 3),
    out_channels=(96, 192, 384, 768),
    layer_scale_init_value=1.0,
    init_cfg=dict(
        type='Pretrained', checkpoint=pretrained, prefix='backbone.'))
