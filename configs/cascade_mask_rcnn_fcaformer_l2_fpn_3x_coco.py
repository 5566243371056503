# Cascade Mask R-CNN + FPN (4conv1fc GIoU box heads with SyncBN) with
# FcaFormer-L2 on COCO: the same 3x schedule, 500-iteration warm-up and
# augmentation as Mask R-CNN, and, as in the official config, AdamW lr 2e-4
# with layer-wise decay 0.7.
# It inherits mmdet's Cascade Mask R-CNN ConvNeXt-T 3x config.
_base_ = [
    'mmdet::convnext/'
    'cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',  # noqa: E501
    './_base_/mmfca_runtime.py',
    './_base_/models/fcaformer_l2_dense.py',
    './_base_/schedules/fcaformer_coco_3x.py',
]
custom_imports = dict(imports=['mmfca'], allow_failed_imports=False)
default_hooks = _base_.mmfca_hooks

model = dict(
    backbone=dict(
        _base_.fcaformer_l2_dense, _delete_=True, drop_path_rate=0.2),
    neck=dict(in_channels=[96, 192, 384, 768]))

# The detection recipe's optimiser with lr 2e-4 and decay rate 0.7.
optim_wrapper = dict(
    _base_.coco_3x_optim_wrapper,
    _delete_=True,
    optimizer=dict(_base_.coco_3x_optim_wrapper.optimizer, lr=2e-4),
    paramwise_cfg=dict(
        _base_.coco_3x_optim_wrapper.paramwise_cfg, decay_rate=0.7))
param_scheduler = _base_.coco_3x_param_scheduler


# Training skips an image that cannot be read or decoded, with a counted
# warning naming it (100 failures in a row stop the run). Every pipeline
# refuses an image whose size differs from the one the annotation file
# records (its boxes and masks are in that size's coordinates) as soon as
# it is loaded: LoadAnnotations would draw the masks misaligned, or fail.
def with_size_check(pipeline):
    """``pipeline`` with CheckAnnotationSize after the image loading."""
    checked = []
    for step in pipeline:
        checked.append(step)
        if step['type'] in ('LoadImageFromFile', 'LoadImageFromFileOrSkip'):
            checked.append(dict(type='CheckAnnotationSize'))
    return checked


train_pipeline = with_size_check([
    dict(step, type='LoadImageFromFileOrSkip')
    if step.type == 'LoadImageFromFile' else step
    for step in _base_.train_pipeline
])
test_pipeline = with_size_check(_base_.test_pipeline)
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
