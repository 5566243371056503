# The official FcaFormer detection recipe's optimiser and schedule, shared
# by the Mask R-CNN and Cascade Mask R-CNN configs (variables, as mmdet's
# bases set optim_wrapper and param_scheduler too; the configs take them
# with `_delete_=True`).
#
# AdamW lr 1e-4, weight decay 0.05, layer-wise decay 0.95 over 6 groups
# (the official 'layer_wise_cab' grouping), AMP. Cascade Mask R-CNN
# changes lr and decay rate.
coco_3x_optim_wrapper = dict(
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
coco_3x_param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=501),
    dict(
        type='MultiStepLR',
        begin=0,
        end=36,
        by_epoch=True,
        milestones=[27, 33],
        gamma=0.1)
]
