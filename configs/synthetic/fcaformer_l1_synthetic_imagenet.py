# The FcaFormer-L1 ImageNet config on a small synthetic ImageNet (four
# classes), for the whole train -> test cycle on a CPU in minutes: the real
# model, augmentation, optimiser, EMA, hooks and metrics, for 2 epochs.
#
#   python tools/dataset_converters/make_synthetic_data.py imagenet \
#       data/synthetic_imagenet --size 96
#   python tools/train.py configs/synthetic/fcaformer_l1_synthetic_imagenet.py
#   python tools/test.py configs/synthetic/fcaformer_l1_synthetic_imagenet.py \
#       work_dirs/fcaformer_l1_synthetic_imagenet/epoch_2.pth
_base_ = ['../fcaformer_l1_in1k.py']

data_root = 'data/synthetic_imagenet'
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root))
test_dataloader = val_dataloader

# 2 epochs: 1 of linear warm-up, then cosine.
max_epochs = 2
param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-3,
        by_epoch=True,
        end=1,
        convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=1),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(logger=dict(interval=1))
randomness = dict(seed=0)
