"""The heavy reliability checks, on synthetic data (the test suite runs
small versions of them).

    # Kill a training run at random moments (between checkpoints and while
    # one is written), resume each time, compare with an uninterrupted run.
    python tools/reliability_check.py resume --task seg --kills 3
    python tools/reliability_check.py resume --task det --kills 2
    # The same with 2 persistent data-loader workers (--fresh-workers: new
    # ones every epoch); with seeded_data_stream (our configs) the final
    # checkpoints are expected bit-identical.
    python tools/reliability_check.py resume --task seg --workers 2
    python tools/reliability_check.py resume --task det --workers 2

    # tools/dist_train.sh with 2 CPU processes x batch 2 against 1 process x
    # batch 4.
    python tools/reliability_check.py ddp --task seg
    python tools/reliability_check.py ddp --task det

Results are printed and written to WORK_DIR/reliability.json.
"""
import argparse
import glob
import json
import os
import os.path as osp
import random
import signal
import subprocess
import sys
import time

import torch

from mmfca.engine.runner import find_resumable_checkpoint
from mmfca.testing import (make_synthetic_ade20k, make_synthetic_coco,
                           synthetic_data_overrides)
from mmfca.utils.serialization import load_checkpoint_file

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SYNTHETIC = osp.join(REPO, 'configs', 'synthetic')
CONFIGS = dict(
    seg=osp.join(SYNTHETIC, 'upernet_fcaformer_l2_synthetic_ade20k.py'),
    det=osp.join(SYNTHETIC, 'mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py'))


def task_options(task: str,
                 root: str,
                 length: int,
                 workers: int,
                 persistent: bool = True) -> list:
    """--cfg-options of a short CPU run: ``length`` iterations (seg, a
    checkpoint every 2) or epochs (det, one per epoch)."""
    if task == 'seg':
        options = synthetic_data_overrides('ade20k', root) + [
            f'train_cfg.max_iters={length}',
            f'train_cfg.val_interval={length}',
            'default_hooks.checkpoint.interval=2'
        ]
    else:
        options = synthetic_data_overrides('coco', root) + [
            f'train_cfg.max_epochs={length}',
            f'train_cfg.val_interval={length}'
        ]
    options.append('randomness.deterministic=True')
    if workers:
        options += [
            f'train_dataloader.num_workers={workers}',
            f'train_dataloader.persistent_workers={persistent}'
        ]
    return options


def make_data(task: str, root: str) -> None:
    if task == 'seg':
        make_synthetic_ade20k(root, num_train=16, num_val=2, size=128)
    else:
        make_synthetic_coco(root, num_train=8, num_val=2, size=128)


def train_command(config: str, work_dir: str, options: list,
                  resume: bool) -> list:
    command = [
        sys.executable,
        osp.join(REPO, 'tools/train.py'), config, '--work-dir', work_dir
    ]
    if resume:
        command.append('--resume')
    return command + ['--cfg-options'] + options


def run(command: list, log: str, env=None) -> None:
    with open(log, 'a') as out:
        result = subprocess.run(command, stdout=out, stderr=out, env=env)
    if result.returncode != 0:
        raise RuntimeError(f'{command[1]} failed, see {log}')


def final_checkpoint(work_dir: str) -> str:
    return find_resumable_checkpoint(work_dir)


def differences(a_path: str, b_path: str) -> dict:
    """Largest absolute differences of weights and optimizer state."""
    a = load_checkpoint_file(a_path, map_location='cpu')
    b = load_checkpoint_file(b_path, map_location='cpu')

    def gap(x, y):
        if isinstance(x, torch.Tensor):
            return (x.double() - y.double()).abs().max().item() \
                if x.numel() else 0.0
        if isinstance(x, dict):
            return max([gap(x[k], y[k]) for k in x] or [0.0])
        if isinstance(x, (list, tuple)):
            return max([gap(i, j) for i, j in zip(x, y)] or [0.0])
        return 0.0 if x == y else float('inf')

    return dict(
        weights=gap(a['state_dict'], b['state_dict']),
        optimizer=gap(a['optimizer'], b['optimizer']),
        schedulers=gap(a['param_schedulers'], b['param_schedulers']),
        same_step=(a['meta']['iter'],
                   a['meta']['epoch']) == (b['meta']['iter'],
                                           b['meta']['epoch']))


def kill_at_random(command: list, work_dir: str, log: str,
                   rng: random.Random) -> dict:
    """Start a run and SIGKILL it, once it has a checkpoint to resume
    from, either while it writes the next one or at a random moment after
    a new one; returns what happened and where a resume would start."""
    mode = rng.choice(['while saving', 'between checkpoints'])
    before = set(glob.glob(osp.join(work_dir, '*.pth')))
    with open(log, 'a') as out:
        process = subprocess.Popen(command, stdout=out, stderr=out)
    while process.poll() is None:
        saving = glob.glob(osp.join(work_dir, '*.tmp-*'))
        saved = set(glob.glob(osp.join(work_dir, '*.pth'))) - before
        if mode == 'while saving' and saving and (saved or before):
            break
        if mode == 'between checkpoints' and saved:
            time.sleep(rng.uniform(0.1, 1.5))
            break
        time.sleep(0.002)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()
    else:
        mode = 'finished before the kill'
    resume_from = find_resumable_checkpoint(work_dir)
    return dict(
        kill=mode,
        resume_from=osp.basename(resume_from) if resume_from else None)


def check_resume(args) -> dict:
    config = CONFIGS[args.task]
    root = osp.join(args.work_dir, 'data')
    if not osp.isdir(root):
        make_data(args.task, root)
    length = args.length or (8 if args.task == 'seg' else 3)
    options = task_options(args.task, root, length, args.workers,
                           not args.fresh_workers)
    log = osp.join(args.work_dir, 'runs.log')
    reference = osp.join(args.work_dir, 'uninterrupted')
    run(train_command(config, reference, options, False), log)
    interrupted = osp.join(args.work_dir, 'interrupted')
    rng = random.Random(args.seed)
    kills = []
    for index in range(args.kills):
        command = train_command(config, interrupted, options, index > 0)
        kills.append(kill_at_random(command, interrupted, log, rng))
    run(train_command(config, interrupted, options, True), log)
    return dict(
        task=args.task,
        workers=args.workers,
        persistent_workers=bool(args.workers) and not args.fresh_workers,
        kills=kills,
        differences=differences(
            final_checkpoint(reference), final_checkpoint(interrupted)))


def check_ddp(args) -> dict:
    config = CONFIGS[args.task]
    root = osp.join(args.work_dir, 'data')
    if not osp.isdir(root):
        make_data(args.task, root)
    options = task_options(args.task, root, 4 if args.task == 'seg' else 1, 0)
    log = osp.join(args.work_dir, 'runs.log')
    env = dict(os.environ, PORT=str(args.port))
    env['PATH'] = osp.dirname(sys.executable) + os.pathsep + env['PATH']
    two = osp.join(args.work_dir, 'two_processes')
    start = time.time()
    run([
        'bash',
        osp.join(REPO, 'tools/dist_train.sh'), config, '2', '--work-dir', two,
        '--cfg-options', 'train_dataloader.batch_size=2'
    ] + options, log, env)
    two_seconds = time.time() - start
    one = osp.join(args.work_dir, 'one_process')
    start = time.time()
    run(
        train_command(config, one, options + ['train_dataloader.batch_size=4'],
                      False), log)
    return dict(
        task=args.task,
        seconds=dict(
            two_processes=two_seconds, one_process=time.time() - start),
        differences=differences(final_checkpoint(two), final_checkpoint(one)),
        note='With SyncBN turned into per-process BN, random augmentation '
        'and drop path, the two runs follow the same recipe but not the '
        'same arithmetic; tests/test_reliability.py checks the setting '
        'where they must agree.')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('check', choices=['resume', 'ddp'])
    parser.add_argument('--task', choices=['seg', 'det'], default='seg')
    parser.add_argument('--work-dir', default='work_dirs/reliability')
    parser.add_argument(
        '--kills', type=int, default=3, help='kills before the last resume')
    parser.add_argument(
        '--length',
        type=int,
        help='iterations (seg, default 8) or epochs (det, default 3)')
    parser.add_argument(
        '--workers', type=int, default=0, help='training data workers')
    parser.add_argument(
        '--fresh-workers',
        action='store_true',
        help='persistent_workers=False (new workers every epoch)')
    parser.add_argument('--seed', type=int, default=0, help='kill timing')
    parser.add_argument('--port', type=int, default=29541)
    args = parser.parse_args()
    args.work_dir = osp.abspath(osp.join(args.work_dir, args.check, args.task))
    os.makedirs(args.work_dir, exist_ok=True)
    result = check_resume(args) if args.check == 'resume' else check_ddp(args)
    print(json.dumps(result, indent=2))
    with open(osp.join(args.work_dir, 'reliability.json'), 'w') as file:
        json.dump(result, file, indent=2)


if __name__ == '__main__':
    main()
