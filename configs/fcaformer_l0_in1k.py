# FcaFormer-L0, the paper's plain model (Table 1: 5.9M params, 74.3% vs
# DeiT-Tiny's 72.2%): DeiT-Tiny with FcaFormer blocks, keeping DeiT's task
# head (class token, learned position embedding, linear head on the class
# token). It trains on DeiT's ImageNet recipe without distillation: 300
# epochs, AdamW lr 5e-4 x batch / 512 (1e-3 for 1024), weight decay 0.05
# (none on the class token, position embedding, norms and biases), 5
# warm-up epochs, cosine to 1e-5, repeated augmentation (3 repeats),
# RandAugment m9-mstd0.5, random erasing 0.25, Mixup 0.8 / CutMix 1.0, label
# smoothing 0.1, drop path 0.1. The official repository has no code for L0;
# docs/classification.md lists the choices made where the paper is silent.
_base_ = ['./_base_/fcaformer_in1k.py']

model = dict(
    backbone=dict(
        arch='l0',
        out_indices=(0, ),
        gap_before_final_norm=False,
        drop_path_rate=0.1),
    head=dict(in_channels=192))

# DeiT's repeated augmentation: each image appears 3 times per epoch, with
# different augmentations, spread over the processes.
train_dataloader = dict(sampler=dict(type='RepeatAugSampler', shuffle=True))

optim_wrapper = dict(
    optimizer=dict(lr=1e-3),
    paramwise_cfg=dict(custom_keys={
        '.cls_token': dict(decay_mult=0.0),
        '.pos_embed': dict(decay_mult=0.0),
    }))
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=5,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=5),
]
# DeiT without distillation trains without a model EMA.
custom_hooks = []
