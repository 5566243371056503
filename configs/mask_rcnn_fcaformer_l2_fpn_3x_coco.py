# Mask R-CNN + FPN with FcaFormer-L2 on COCO, the paper's 3x multi-scale
# recipe (36 epochs, steps at 27 and 33, batch 16 = 8 GPUs x 2, 480-800
# multi-scale training with the DETR-style crop branch). It inherits
# mmdet's Mask R-CNN ConvNeXt-T 3x config, which has that augmentation and
# schedule, and swaps in the backbone, the optimiser and the official
# warm-up (500 iterations, not mmdet 3's 1000).
_base_ = ['mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py']
custom_imports = dict(imports=['mmfca'], allow_failed_imports=False)
# mmengine's Runner plus atomic checkpoints with RNG states (exact resume),
# CPU distributed training and early errors for bad data.
runner_type = 'ReliableRunner'

# ImageNet-pretrained FcaFormer-L2 (an official checkpoint as it is, its
# conversion, or one of ours). Override with
# --cfg-options model.backbone.init_cfg.checkpoint=PATH.
pretrained = 'checkpoints/fcaformer_l2_in1k.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='FcaFormer',
        arch='l2',
        out_indices=(0, 1, 2, 3),
        out_channels=(96, 192, 384, 768),
        drop_path_rate=0.2,
        layer_scale_init_value=1.0,
        init_cfg=dict(
            type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[96, 192, 384, 768]))

# AdamW lr 1e-4, weight decay 0.05, layer-wise decay 0.95 over 6 groups
# (the official 'layer_wise_cab' grouping), AMP (bfloat16 on CPU).
optim_wrapper = dict(
    _delete_=True,
    type='AnyDeviceAmpOptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='FcaFormerLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(
        decay_rate=0.95, decay_type='layer_wise_cab', num_layers=6),
    loss_scale='dynamic',
    # mmcv's CPU kernels (NMS, RoIAlign) have no bfloat16 versions, so on a
    # machine without a GPU this config trains in float32; on GPUs it is AMP.
    cpu_autocast=False)

# Linear warm-up as the official configs: they inherit mmdet 2.x's
# schedule_1x.py (warmup='linear', warmup_iters=500, warmup_ratio=0.001)
# and only move its steps, so iteration i < 500 trains at
# lr * (1 - 0.999 * (1 - i / 500)) and iteration 500 at the full lr.
# mmengine's LinearLR reaches end_factor at iteration end - 1, so end=501
# is that ramp exactly (mmdet 3's ConvNeXt base warms up over 1000).
# Then x0.1 after epochs 27 and 33 of 36, as the official lr_config.
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=501),
    dict(
        type='MultiStepLR',
        begin=0,
        end=36,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1)
]
