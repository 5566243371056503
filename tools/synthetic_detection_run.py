"""A longer training run of the real Mask R-CNN FcaFormer-L2 config on
synthetic COCO-format data, on CPU: evidence that the detector learns.

    python tools/synthetic_detection_run.py [--epochs 12] [--work-dir DIR]

Writes the synthetic dataset, trains from scratch with the config's
optimiser (AdamW, layer-wise learning-rate decay) on small images, then
runs tools/test.py's logic and prints COCO box and mask AP from
pycocotools. Not part of the test suite (minutes on 2 cores).
"""
import argparse
import os.path as osp

from mmfca.datasets import make_synthetic_coco
from mmfca.launch import test, train

CONFIG = osp.join(
    osp.dirname(osp.dirname(osp.abspath(__file__))),
    'configs/mask_rcnn_fcaformer_l2_fpn_3x_coco.py')


def overrides(root: str, epochs: int, lr: float):
    ann = osp.join(root, 'annotations', 'instances_val2017.json')
    crop = 'train_dataloader.dataset.pipeline.3.transforms'
    options = [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']
    for split in ('train', 'val', 'test'):
        options += [
            f'{split}_dataloader.dataset.data_root={root}/',
            f'{split}_dataloader.num_workers=0',
            f'{split}_dataloader.persistent_workers=False',
        ]
    steps = [int(epochs * 0.75), int(epochs * 0.92)]
    return options + [
        f'{crop}.0.0.scales=[(213,128)]',
        f'{crop}.1.0.scales=[(213,112)]',
        f'{crop}.1.1.crop_size=(96,128)',
        f'{crop}.1.2.scales=[(213,128)]',
        'val_dataloader.dataset.pipeline.1.scale=(213,128)',
        'test_dataloader.dataset.pipeline.1.scale=(213,128)',
        'model.backbone.init_cfg=None',
        f'optim_wrapper.optimizer.lr={lr}',
        'param_scheduler.0.end=20',
        f'param_scheduler.1.end={epochs}',
        f'param_scheduler.1.milestones=[{steps[0]},{steps[1]}]',
        f'train_cfg.max_epochs={epochs}',
        f'train_cfg.val_interval={epochs}',
        'model.train_cfg.rpn_proposal.nms_pre=200',
        'model.train_cfg.rpn_proposal.max_per_img=100',
        'model.test_cfg.rpn.nms_pre=200',
        'model.test_cfg.rpn.max_per_img=100',
        'model.test_cfg.rcnn.max_per_img=20',
        'default_hooks.logger.interval=10',
        'randomness.seed=0',
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=12)
    parser.add_argument('--lr', type=float, default=4e-4)
    parser.add_argument('--work-dir', default='work_dirs/synthetic_det')
    args = parser.parse_args()
    root = osp.join(args.work_dir, 'data')
    make_synthetic_coco(root, num_train=60, num_val=15, size=128)
    options = overrides(root, args.epochs, args.lr)
    train([CONFIG, '--work-dir', args.work_dir, '--cfg-options'] + options)
    checkpoint = osp.join(args.work_dir, f'epoch_{args.epochs}.pth')
    metrics = test([CONFIG, checkpoint, '--work-dir',
                    osp.join(args.work_dir, 'test'), '--cfg-options'] +
                   options)
    print(f'synthetic COCO, {args.epochs} epochs: box AP '
          f'{metrics["coco/bbox_mAP"]:.3f} (AP50 '
          f'{metrics["coco/bbox_mAP_50"]:.3f}), mask AP '
          f'{metrics["coco/segm_mAP"]:.3f} (AP50 '
          f'{metrics["coco/segm_mAP_50"]:.3f})')


if __name__ == '__main__':
    main()
