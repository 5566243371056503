"""A longer training run of the real Mask R-CNN FcaFormer-L2 config on
synthetic COCO-format data, on CPU: evidence that the detector learns.

    python tools/synthetic_detection_run.py [--epochs 12] [--work-dir DIR]

Writes the synthetic dataset and a config that lengthens
configs/synthetic/mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py (the real
config on small images), trains from scratch with the real optimiser
(AdamW, layer-wise learning-rate decay), then runs tools/test.py's logic
and prints COCO box and mask AP from pycocotools. Not part of the test
suite (minutes on 2 cores).
"""
import argparse
import os
import os.path as osp

from mmfca.apis import test, train
from mmfca.testing import make_synthetic_coco, synthetic_data_overrides

CONFIG = osp.join(
    osp.dirname(osp.dirname(osp.abspath(__file__))),
    'configs/synthetic/mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py')


def write_config(path: str, epochs: int, lr: float) -> str:
    """A config of ``epochs`` epochs at ``lr``: 20 iterations of linear
    warm-up, then x0.1 at 3/4 and 11/12 of the run, as the 3x schedule's
    steps at epochs 27 and 33 of 36."""
    milestones = [epochs * 3 // 4, epochs * 11 // 12]
    with open(path, 'w') as file:
        file.write(f"""_base_ = [{CONFIG!r}]
max_epochs = {epochs}
optim_wrapper = dict(optimizer=dict(lr={lr}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
         end=20),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True,
         milestones={milestones}, gamma=0.1),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(logger=dict(interval=10))
""")
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=12)
    parser.add_argument('--lr', type=float, default=4e-4)
    parser.add_argument('--work-dir', default='work_dirs/synthetic_det')
    args = parser.parse_args()
    root = osp.join(args.work_dir, 'data')
    make_synthetic_coco(root, num_train=60, num_val=15, size=128)
    os.makedirs(args.work_dir, exist_ok=True)
    config = write_config(
        osp.join(args.work_dir, 'synthetic_detection_run.py'), args.epochs,
        args.lr)
    options = synthetic_data_overrides('coco', root)
    train([config, '--work-dir', args.work_dir, '--cfg-options'] + options)
    checkpoint = osp.join(args.work_dir, f'epoch_{args.epochs}.pth')
    metrics = test([
        config, checkpoint, '--work-dir',
        osp.join(args.work_dir, 'test'), '--cfg-options'
    ] + options)
    print(f'synthetic COCO, {args.epochs} epochs: box AP '
          f'{metrics["coco/bbox_mAP"]:.3f} (AP50 '
          f'{metrics["coco/bbox_mAP_50"]:.3f}), mask AP '
          f'{metrics["coco/segm_mAP"]:.3f} (AP50 '
          f'{metrics["coco/segm_mAP_50"]:.3f})')


if __name__ == '__main__':
    main()
