"""Time from ``--resume`` to the first new iteration, early and late in a
run, with mmengine's loop (which loads every batch already trained on
again) and with mmfca's seeded data stream (which starts the sampler at the
saved position).

    python tools/analysis/resume_benchmark.py
    python tools/analysis/resume_benchmark.py --workers 2 --repeats 3

It trains the synthetic UperNet config (configs/synthetic/) for 10
iterations on synthetic ADE20K, keeps that checkpoint, and writes a copy
whose ``meta.iter`` says 2000: what a resume reads to decide where to go
on (the weights are those of iteration 10). Each resume then runs in a
fresh process, as ``tools/train.py --resume CKPT`` does, and stops after
its first new iteration; the time is measured from the start of
:func:`mmfca.apis.train` (imports excluded) to the start of that iteration
(its batch loaded). The modes alternate resume by resume.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import time

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs', 'synthetic',
                  'upernet_fcaformer_l2_synthetic_ade20k.py')
MODES = dict(
    stock='seeded_data_stream=False', seeded='seeded_data_stream=True')


@HOOKS.register_module()
class FirstNewIterationTimer(Hook):
    """Writes the seconds from ``start`` to the first iteration of the
    resumed run (its batch loaded) to ``out``, and stops training after
    it.

    Args:
        out (str): JSON file to write.
        start (float): :func:`time.perf_counter` when the run began.
    """

    priority = 'VERY_HIGH'

    def __init__(self, out: str, start: float):
        self.out = out
        self.start = start

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        seconds = time.perf_counter() - self.start
        with open(self.out, 'w') as file:
            json.dump(dict(iteration=runner.iter, seconds=seconds), file)

    def after_train_iter(self,
                         runner,
                         batch_idx,
                         data_batch=None,
                         outputs=None) -> None:
        runner.train_loop.stop_training = True


def common_options(root: str, workers: int) -> list:
    from mmfca.testing import synthetic_data_overrides
    options = synthetic_data_overrides('ade20k', root) + [
        f'train_dataloader.num_workers={workers}',
        f'train_dataloader.persistent_workers={workers > 0}'
    ]
    return options


def child(args) -> None:
    """One resume, in this process."""
    start = time.perf_counter()
    from mmfca import apis
    config = osp.join(args.work_dir, 'timed.py')
    with open(config, 'w') as file:
        file.write(f'_base_ = {CONFIG!r}\n'
                   f'custom_hooks = [dict(type="FirstNewIterationTimer", '
                   f'out={args.out!r}, start={start!r})]\n')
    apis.train([
        config, '--work-dir', args.run_dir, '--resume', args.checkpoint,
        '--cfg-options'
    ] + common_options(args.data, args.workers) + [
        MODES[args.mode], f'train_cfg.max_iters={args.max_iters}',
        f'train_cfg.val_interval={args.max_iters}'
    ])


def prepare(args) -> dict:
    """The data, a 10-iteration run and its checkpoint relabelled as
    iteration 2000."""
    from mmfca import apis
    from mmfca.testing import make_synthetic_ade20k
    data = osp.join(args.work_dir, 'data')
    if not osp.isdir(data):
        make_synthetic_ade20k(data, num_train=16, num_val=2, size=128)
    trained = osp.join(args.work_dir, 'trained')
    early = osp.join(trained, 'iter_10.pth')
    if not osp.isfile(early):
        apis.train([CONFIG, '--work-dir', trained, '--cfg-options'] +
                   common_options(data, 0) + [
                       'train_cfg.max_iters=10', 'train_cfg.val_interval=10',
                       'default_hooks.checkpoint.interval=10'
                   ])
    late = osp.join(trained, 'iter_2000.pth')
    if not osp.isfile(late):
        checkpoint = torch.load(early, map_location='cpu', weights_only=True)
        checkpoint['meta']['iter'] = 2000
        torch.save(checkpoint, late)
    return dict(data=data, checkpoints={10: early, 2000: late})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work-dir', default='work_dirs/resume_benchmark')
    parser.add_argument(
        '--workers', type=int, default=2, help='training data workers')
    parser.add_argument(
        '--repeats', type=int, default=1, help='resumes per mode and step')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument(
        '--mode', choices=sorted(MODES), help=argparse.SUPPRESS)
    for name in ('--data', '--checkpoint', '--run-dir', '--out'):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument('--max-iters', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work_dir = osp.abspath(args.work_dir)
    os.makedirs(args.work_dir, exist_ok=True)
    if args.child:
        return child(args)
    prepared = prepare(args)
    seconds = {(mode, step): [] for mode in MODES for step in (10, 2000)}
    for repeat in range(args.repeats):
        for step, checkpoint in prepared['checkpoints'].items():
            for mode in MODES:
                name = f'{mode}_{step}_{repeat}'
                out = osp.join(args.work_dir, f'{name}.json')
                subprocess.run([
                    sys.executable,
                    osp.abspath(__file__), '--child', '--mode', mode,
                    '--work-dir', args.work_dir, '--data', prepared['data'],
                    '--checkpoint', checkpoint, '--run-dir',
                    osp.join(args.work_dir, 'runs',
                             name), '--out', out, '--max-iters',
                    str(step + 2), '--workers',
                    str(args.workers)
                ],
                               check=True,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                result = json.load(open(out))
                if result['iteration'] != step:
                    raise RuntimeError(f'{name}: resumed at iteration '
                                       f'{result["iteration"]}, not {step}')
                seconds[(mode, step)].append(result['seconds'])
    print(f'Seconds from --resume to the first new iteration (synthetic '
          f'UperNet, batch 2, {args.workers} workers, median of '
          f'{args.repeats}):')
    print(f'{"":22}{"iteration 10":>14}{"iteration 2000":>16}')
    labels = dict(stock='mmengine loop', seeded='seeded_data_stream')
    for mode in MODES:
        row = [statistics.median(seconds[(mode, step)]) for step in (10, 2000)]
        print(f'{labels[mode]:22}{row[0]:14.1f}{row[1]:16.1f}')


if __name__ == '__main__':
    main()
