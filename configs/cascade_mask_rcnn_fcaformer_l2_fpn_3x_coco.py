# Cascade Mask R-CNN + FPN (4conv1fc GIoU box heads with SyncBN) with
# FcaFormer-L2 on COCO: the same 3x schedule and augmentation as Mask R-CNN,
# and, as in the official config, AdamW lr 2e-4 with layer-wise decay 0.7.
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
