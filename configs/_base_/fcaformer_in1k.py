# ImageNet-1k classification with FcaFormer, on mmpretrain's own bases: the
# official recipe. 300 epochs (20 warm-up), AdamW lr 2e-3 for batch 1024
# (8 x 128), weight decay 0.05, cosine to 1e-6, RandAugment
# rand-m9-mstd0.5-inc1, random erasing 0.25, bicubic, Mixup 0.8 / CutMix
# 1.0, label smoothing 0.1, model EMA 0.9999, full precision (--amp to
# change); test at 224 after resizing the short side to 256 (crop 0.875).
# The arch configs (fcaformer_l{1..4}_in1k.py) set the arch, the head width
# and the drop path rate of the official scripts.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
    './mmfca_runtime.py',
]
custom_imports = dict(imports=['mmfca'], allow_failed_imports=False)
default_hooks = _base_.mmfca_hooks

model = dict(
    type='ImageClassifier',
    # Global average pooling, LayerNorm (in the backbone) and a linear head,
    # as the official classifier.
    backbone=dict(
        type='FcaFormer',
        arch='l2',
        out_indices=(3, ),
        gap_before_final_norm=True,
        drop_path_rate=0.1),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=480,
        loss=dict(
            type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        init_cfg=dict(type='TruncNormal', layer='Linear', std=.02, bias=0.)),
    train_cfg=dict(augments=[
        dict(type='Mixup', alpha=0.8),
        dict(type='CutMix', alpha=1.0),
    ]),
)

# 8 GPUs x 128 images, lr 2e-3 for the total batch of 1024 (official).
# Training skips an image that cannot be read or decoded, with a counted
# warning naming it (100 failures in a row stop the run).
train_pipeline = [
    dict(step, type='LoadImageFromFileOrSkip')
    if step.type == 'LoadImageFromFile' else step
    for step in _base_.train_pipeline
]
train_dataloader = dict(batch_size=128, dataset=dict(pipeline=train_pipeline))
optim_wrapper = dict(optimizer=dict(lr=2e-3), clip_grad=None)
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=20,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=20),
]
# Model EMA with decay 0.9999, evaluated beside the plain weights (the
# official scripts evaluate both).
custom_hooks = [
    dict(
        type='EMAHook',
        momentum=1e-4,
        evaluate_on_ema=True,
        evaluate_on_origin=True,
        priority='ABOVE_NORMAL')
]
auto_scale_lr = dict(base_batch_size=1024)
