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

from mmfca.testing import coco_cpu_overrides, make_synthetic_coco
from mmfca.apis import test, train

CONFIG = osp.join(
    osp.dirname(osp.dirname(osp.abspath(__file__))),
    'configs/mask_rcnn_fcaformer_l2_fpn_3x_coco.py')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--epochs', type=int, default=12)
    parser.add_argument('--lr', type=float, default=4e-4)
    parser.add_argument('--work-dir', default='work_dirs/synthetic_det')
    args = parser.parse_args()
    root = osp.join(args.work_dir, 'data')
    make_synthetic_coco(root, num_train=60, num_val=15, size=128)
    options = coco_cpu_overrides(
        root, args.epochs, args.lr, warmup=20, log_interval=10)
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
