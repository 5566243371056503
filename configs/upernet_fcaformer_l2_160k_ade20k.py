# UperNet + FcaFormer-L2 on ADE20K: the paper's recipe (160k iterations,
# batch 16 = 8 GPUs x 2, 512x512 crops). Paper: 47.6 mIoU with multi-scale
# + flip testing (--tta), which is how the official scripts test.
_base_ = [
    'mmseg::_base_/models/upernet_convnext.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
    './_base_/mmfca_runtime.py',
    './_base_/models/fcaformer_l2_dense.py',
]
custom_imports = dict(imports=['mmfca'], allow_failed_imports=False)
default_hooks = _base_.mmfca_hooks

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _base_.fcaformer_l2_dense, _delete_=True, drop_path_rate=0.1),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)),
)

# AdamW with stage-wise learning-rate decay 0.9 over 6 layer groups, AMP.
# AnyDeviceAmpOptimWrapper is mmengine's AmpOptimWrapper on GPUs and
# bfloat16 autocast on CPU-only machines.
optim_wrapper = dict(
    _delete_=True,
    type='AnyDeviceAmpOptimWrapper',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.01),
    constructor='FcaFormerLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6),
    loss_scale='dynamic')

# The official schedule (mmseg 0.x: poly, power 1, over 160k iterations from
# iteration 0, times a linear warm-up from 1e-6 over the first 1500). Both
# schedulers run from 0 and mmengine multiplies their factors; its `end` is
# exclusive and a factor reaches its last value at iteration end - 1, hence
# 1501 and 160001.
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1501),
    dict(
        type='PolyLR',
        power=1.0,
        begin=0,
        end=160001,
        eta_min=0.0,
        by_epoch=False),
]


# Training skips an image that cannot be read or decoded, with a counted
# warning naming it (100 failures in a row stop the run). Every pipeline
# refuses a label map whose size differs from its image's as soon as it is
# loaded: the resizes would scale each to the target size on its own,
# stretching labels over pixels they were not made for.
def with_size_check(pipeline):
    """``pipeline`` with CheckAnnotationSize after LoadAnnotations."""
    checked = []
    for step in pipeline:
        checked.append(step)
        if step['type'] == 'LoadAnnotations':
            checked.append(dict(type='CheckAnnotationSize'))
    return checked


train_pipeline = with_size_check([
    dict(step, type='LoadImageFromFileOrSkip')
    if step.type == 'LoadImageFromFile' else step
    for step in _base_.train_pipeline
])
test_pipeline = with_size_check(_base_.test_pipeline)
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=1, dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# Multi-scale + flip test (--tta), as the official aug-test (mmseg 0.x
# MultiScaleFlipAug with img_scale=(2048, 512) and these img_ratios): each
# image is resized to fit (int(2048 * r), int(512 * r)), keeping its aspect
# ratio (mmseg 1.x's base scales it by r from its own size instead), then
# tested as it is and flipped. That base also omits reduce_zero_label in
# its TTA pipeline, which would shift every ADE20K label by one.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(
                    type='Resize',
                    scale=(int(2048 * r), int(512 * r)),
                    keep_ratio=True) for r in img_ratios
            ],
            [
                dict(type='RandomFlip', prob=0., direction='horizontal'),
                dict(type='RandomFlip', prob=1., direction='horizontal')
            ],
            [dict(type='LoadAnnotations', reduce_zero_label=True)],
            [dict(type='CheckAnnotationSize')],
            [dict(type='PackSegInputs')],
        ])
]

# --auto-scale-lr scales lr by (GPUs x batch per GPU) / 16.
auto_scale_lr = dict(enable=False, base_batch_size=16)
