# Cascade Mask R-CNN + FPN (4conv1fc GIoU box heads with SyncBN) with
# FcaFormer-L2 on COCO: the same 3x schedule, 500-iteration warm-up and
# augmentation as Mask R-CNN, and, as in the official config, AdamW lr 2e-4
# with layer-wise decay 0.7.
# It inherits mmdet's Cascade Mask R-CNN ConvNeXt-T 3x config.
_base_ = [
    'mmdet::convnext/'
    'cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'
]
custom_imports = dict(imports=['mmfca'], allow_failed_imports=False)
# mmengine's Runner plus atomic checkpoints with RNG states (exact resume),
# CPU distributed training and early errors for bad data.
runner_type = 'ReliableRunner'

# ImageNet-pretrained FcaFormer-L2; override with
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

optim_wrapper = dict(
    _delete_=True,
    type='AnyDeviceAmpOptimWrapper',
    optimizer=dict(
        type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='FcaFormerLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(
        decay_rate=0.7, decay_type='layer_wise_cab', num_layers=6),
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
