"""Short training runs for the tests: the synthetic UperNet config made
small, and a bitwise comparison of the checkpoints two runs write."""
import os.path as osp
from typing import List, Optional

import torch

from .synthetic import synthetic_data_overrides

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
#: The real UperNet config on synthetic ADE20K (the CPU cycle of
#: docs/segmentation.md).
SYNTHETIC_SEG = osp.join(
    REPO, 'configs/synthetic/upernet_fcaformer_l2_synthetic_ade20k.py')
#: Iterations of :func:`small_run`.
ITERS = 6
#: ``--cfg-options`` that swap the synthetic config's L2 for an L1.
SMALL_L1 = [
    'model.backbone.arch=l1', 'model.backbone.out_channels=None',
    'model.decode_head.in_channels=[64,128,192,320]',
    'model.auxiliary_head.in_channels=192'
]


def small_run(root: str,
              iters: int = ITERS,
              lr: Optional[float] = None) -> List[str]:
    """``--cfg-options`` of the synthetic config: UperNet + L1 on the
    synthetic data in ``root``, ``iters`` iterations, a checkpoint every 2,
    deterministic algorithms.

    Args:
        root (str): A data root written by
            :func:`~mmfca.testing.make_synthetic_ade20k`.
        iters (int): Training iterations (validation runs after the last).
        lr (float, optional): Another learning rate, e.g. to provoke a NaN.
    """
    options = synthetic_data_overrides('ade20k', root) + SMALL_L1 + [
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        'default_hooks.checkpoint.interval=2', 'randomness.deterministic=True'
    ]
    if lr is not None:
        options.append(f'optim_wrapper.optimizer.lr={lr}')
    return options


def assert_identical(a, b, where: str = 'checkpoint') -> None:
    """Bitwise equality of two nested checkpoint structures; the assertion
    names the first key path that differs."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f'{where}[{i}]')
    else:
        assert a == b, where
