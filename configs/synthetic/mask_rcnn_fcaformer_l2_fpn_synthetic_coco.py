# The Mask R-CNN + FcaFormer-L2 COCO config on a small synthetic COCO, for
# the whole train -> test cycle on a CPU in minutes: the real detector,
# optimiser (layer-wise decay), hooks and COCO metrics (pycocotools), at
# small sizes and with fewer proposals, for 2 epochs from scratch.
#
#   python tools/dataset_converters/make_synthetic_data.py coco \
#       data/synthetic_coco
#   python tools/train.py \
#       configs/synthetic/mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py
#   python tools/test.py \
#       configs/synthetic/mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py \
#       work_dirs/mask_rcnn_fcaformer_l2_fpn_synthetic_coco/epoch_2.pth
#
# The pipelines are the real config's steps (multi-scale training with the
# DETR-style crop branch), restated at the size of the synthetic images
# (128 x 170).
_base_ = ['../mask_rcnn_fcaformer_l2_fpn_3x_coco.py']

data_root = 'data/synthetic_coco/'
scale = (213, 128)
train_pipeline = [
    dict(type='LoadImageFromFileOrSkip', backend_args=None),
    dict(type='CheckAnnotationSize'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=[scale], keep_ratio=True)],
            [
                dict(
                    type='RandomChoiceResize',
                    scales=[(213, 112)],
                    keep_ratio=True),
                dict(
                    type='RandomCrop',
                    crop_type='absolute_range',
                    crop_size=(96, 128),
                    allow_negative_crop=True),
                dict(
                    type='RandomChoiceResize', scales=[scale],
                    keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='CheckAnnotationSize'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                   'scale_factor')),
]
train_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# From scratch (no ImageNet checkpoint); fewer proposals for small images,
# and every detection kept for scoring.
model = dict(
    backbone=dict(init_cfg=None),
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100)),
    test_cfg=dict(
        rpn=dict(nms_pre=200, max_per_img=100),
        rcnn=dict(max_per_img=20, score_thr=0.0)))

# 2 epochs: lr 2e-4, 2 iterations of linear warm-up; the 3x schedule's
# steps (at 3/4 and 11/12 of the run) fall after the end of so short a run.
max_epochs = 2
optim_wrapper = dict(optimizer=dict(lr=2e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=2),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[],
        gamma=0.1)
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
