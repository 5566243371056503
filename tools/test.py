"""Test a checkpoint with an mmpretrain, mmseg or mmdet config.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out FILE]
                         [--show] [--show-dir DIR] [--tta]
                         [--cfg-options k=v ...] [--launcher ...]

Prints the metrics and saves them as test_metrics.json in the run's log dir.
"""
from mmfca.apis import test

if __name__ == '__main__':
    test()
