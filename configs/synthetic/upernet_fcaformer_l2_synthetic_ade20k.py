# The UperNet + FcaFormer-L2 ADE20K config on a small synthetic ADE20K, for
# the whole train -> test cycle on a CPU in minutes: the real model, loss,
# optimiser (stage-wise decay, AMP as bfloat16 where the CPU computes it),
# hooks and metrics, at small sizes, for 12 iterations from scratch.
#
#   python tools/dataset_converters/make_synthetic_data.py ade20k \
#       data/synthetic_ade
#   python tools/train.py \
#       configs/synthetic/upernet_fcaformer_l2_synthetic_ade20k.py
#   python tools/test.py \
#       configs/synthetic/upernet_fcaformer_l2_synthetic_ade20k.py \
#       work_dirs/upernet_fcaformer_l2_synthetic_ade20k/iter_12.pth
#
# The pipelines are the real config's steps, restated at the size of the
# synthetic images (128 x 170).
_base_ = ['../upernet_fcaformer_l2_160k_ade20k.py']

data_root = 'data/synthetic_ade'
scale = (170, 128)
crop_size = (96, 96)
train_pipeline = [
    dict(type='LoadImageFromFileOrSkip'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='CheckAnnotationSize'),
    dict(
        type='RandomResize',
        scale=scale,
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=scale, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='CheckAnnotationSize'),
    dict(type='PackSegInputs'),
]
# --tta: the real config's multi-scale + flip test, with `scale` in place
# of (2048, 512).
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [
                dict(
                    type='Resize',
                    scale=(int(scale[0] * r), int(scale[1] * r)),
                    keep_ratio=True) for r in _base_.img_ratios
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
train_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

# From scratch (no ImageNet checkpoint), whole-image testing.
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),
    test_cfg=dict(mode='whole'))

# 12 iterations: lr 1e-3, 2 of linear warm-up, then poly to 0.
iters = 12
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=2),
    dict(
        type='PolyLR',
        power=1.0,
        begin=2,
        end=iters,
        eta_min=0.0,
        by_epoch=False),
]
train_cfg = dict(max_iters=iters, val_interval=iters)
default_hooks = dict(checkpoint=dict(interval=iters), logger=dict(interval=1))
randomness = dict(seed=0)
