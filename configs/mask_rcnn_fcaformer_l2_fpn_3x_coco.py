# Mask R-CNN + FPN with FcaFormer-L2 on COCO, the paper's 3x multi-scale
# recipe (36 epochs, steps at 27 and 33, batch 16 = 8 GPUs x 2, 480-800
# multi-scale training with the DETR-style crop branch). It inherits
# mmdet's Mask R-CNN ConvNeXt-T 3x config, which has that augmentation and
# schedule, and swaps in the backbone, the optimiser and the official
# warm-up (500 iterations, not mmdet 3's 1000).
_base_ = [
    'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py',
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

# AdamW lr 1e-4, weight decay 0.05, layer-wise decay 0.95, AMP (float32 on
# a CPU), and the official warm-up and steps.
optim_wrapper = dict(_base_.coco_3x_optim_wrapper, _delete_=True)
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
