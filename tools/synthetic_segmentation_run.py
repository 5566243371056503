"""A longer training run of the real UperNet-FcaFormer-L2 config on
synthetic ADE20K-format data, on CPU: evidence that the model learns.

    python tools/synthetic_segmentation_run.py [--iters 400] [--work-dir DIR]

Writes the synthetic dataset, trains from scratch with the config's
optimiser (AdamW, stage-wise learning-rate decay, AMP as bfloat16 on CPU)
at 96x96 crops, then runs tools/test.py's logic and prints mIoU over the
five classes present. Not part of the test suite (minutes on 2 cores).
"""
import argparse
import os
import os.path as osp

from mmfca.datasets import make_synthetic_ade20k
from mmfca.launch import test, train

CONFIG = osp.join(
    osp.dirname(osp.dirname(osp.abspath(__file__))),
    'configs/upernet_fcaformer_l2_160k_ade20k.py')


def overrides(root: str, iters: int, lr: float):
    options = []
    for split in ('train', 'val', 'test'):
        options += [
            f'{split}_dataloader.dataset.data_root={root}',
            f'{split}_dataloader.num_workers=0',
            f'{split}_dataloader.persistent_workers=False',
        ]
    return options + [
        'train_dataloader.dataset.pipeline.2.scale=(170,128)',
        'train_dataloader.dataset.pipeline.3.crop_size=(96,96)',
        'model.data_preprocessor.size=(96,96)',
        'val_dataloader.dataset.pipeline.1.scale=(170,128)',
        'test_dataloader.dataset.pipeline.1.scale=(170,128)',
        'model.test_cfg.mode=whole',
        'model.backbone.init_cfg=None',
        f'optim_wrapper.optimizer.lr={lr}',
        f'param_scheduler.0.end={iters // 10}',
        f'param_scheduler.1.begin={iters // 10}',
        f'param_scheduler.1.end={iters}',
        f'train_cfg.max_iters={iters}',
        f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}',
        'default_hooks.logger.interval=20',
        'randomness.seed=0',
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=400)
    parser.add_argument('--lr', type=float, default=5e-4)
    parser.add_argument('--work-dir', default='work_dirs/synthetic_seg')
    args = parser.parse_args()
    root = osp.join(args.work_dir, 'data')
    make_synthetic_ade20k(root, num_train=80, num_val=20, size=128)
    options = overrides(root, args.iters, args.lr)
    train([CONFIG, '--work-dir', args.work_dir, '--cfg-options'] + options)
    checkpoint = osp.join(args.work_dir, f'iter_{args.iters}.pth')
    metrics = test([CONFIG, checkpoint, '--work-dir',
                    os.path.join(args.work_dir, 'test'), '--cfg-options'] +
                   options)
    print(f'synthetic ADE20K, {args.iters} iterations: '
          f'mIoU {metrics["mIoU"]:.2f} (aAcc {metrics["aAcc"]:.2f})')


if __name__ == '__main__':
    main()
