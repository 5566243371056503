"""Train with an mmpretrain, mmseg or mmdet config.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                          [--auto-scale-lr] [--cfg-options k=v ...]
                          [--launcher none|pytorch|slurm|mpi]
"""
from mmfca.apis import train

if __name__ == '__main__':
    train()
