"""Resuming without loading the data already trained on, exactly, with
data-loader workers, epoch-based runs and several processes
(``seeded_data_stream`` of configs/_base_/mmfca_runtime.py)."""
import glob
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmcv.transforms import BaseTransform
from mmengine.registry import TRANSFORMS

from mmfca import apis
from mmfca.testing import synthetic_data_overrides
from mmfca.testing.runs import (ITERS, SMALL_L1, SYNTHETIC_SEG,
                                assert_identical, small_run)
from mmfca.utils.serialization import load_checkpoint_file

#: Trains, exports or starts processes: not in `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC_MASK_RCNN = os.path.join(
    REPO, 'configs/synthetic/mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py')
SAMPLE_LOG = 'MMFCA_TEST_SAMPLE_LOG'
WORKERS = [
    'train_dataloader.num_workers=2',
    'train_dataloader.persistent_workers=True'
]


@TRANSFORMS.register_module()
class RecordSample(BaseTransform):
    """Appends one line per sample the pipeline loads to the file named by
    $MMFCA_TEST_SAMPLE_LOG (from every worker): the rank, the image, and the
    next numbers the Python, numpy and torch generators would give, read
    without drawing them (the pipeline's own draws are unchanged)."""

    def transform(self, results: dict) -> dict:
        python, numpy_state, torch_state = (random.getstate(),
                                            np.random.get_state(),
                                            torch.get_rng_state())
        peek = (random.random(), float(np.random.random()),
                float(torch.rand(1)))
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        record = dict(
            rank=int(os.environ.get('RANK', 0)),
            image=os.path.basename(results['img_path']),
            peek=peek)
        with open(os.environ[SAMPLE_LOG], 'a') as log:
            log.write(json.dumps(record) + '\n')
        return results


def recorded(path):
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path)]


def recording_config(tmp_path, base):
    """``base`` with :class:`RecordSample` first in the training
    pipeline."""
    path = tmp_path / 'recording.py'
    path.write_text(f"""
_base_ = {base!r}
train_dataloader = dict(dataset=dict(
    pipeline=[dict(type='RecordSample')] + _base_.train_pipeline))
""")
    return str(path)


def test_iteration_based_resume_loads_only_the_samples_left(
        seg_reference, synthetic_ade, tmp_path, monkeypatch):
    # The uninterrupted run (num_workers=0) resumed from iteration 4 in a
    # fresh work dir, with 2 persistent workers.
    log = str(tmp_path / 'samples.jsonl')
    monkeypatch.setenv(SAMPLE_LOG, log)
    work_dir = str(tmp_path / 'resumed')
    apis.train([
        recording_config(tmp_path, SYNTHETIC_SEG), '--work-dir', work_dir,
        '--resume',
        os.path.join(seg_reference, 'iter_4.pth'), '--cfg-options'
    ] + small_run(synthetic_ade) + WORKERS)
    expected = load_checkpoint_file(
        os.path.join(seg_reference, f'iter_{ITERS}.pth'))
    resumed = load_checkpoint_file(os.path.join(work_dir, f'iter_{ITERS}.pth'))
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        assert_identical(resumed[key], expected[key], key)
    # 2 iterations x batch 2 left, plus at most what the loader prefetches
    # (2 workers x prefetch_factor 2 x batch 2). The stock loop loads the 4
    # iterations done again first.
    loaded = len(recorded(log))
    assert 4 <= loaded <= 4 + 8, loaded
    text = open(glob.glob(os.path.join(work_dir, '*', '*.log'))[0]).read()
    assert 'IterBasedTrainLoop -> ResumableIterBasedTrainLoop' in text
    assert 'the sampler starts at sample 8 of the stream' in text


def test_epoch_based_resume_with_persistent_workers(mask_rcnn_run, tmp_path):
    # The 2-epoch Mask R-CNN run (num_workers=0) resumed after epoch 1 in a
    # fresh work dir, with 2 persistent workers: the flips and the RoI
    # samplers' draws continue as in the uninterrupted run.
    work_dir = str(tmp_path)
    apis.train([
        SYNTHETIC_MASK_RCNN, '--work-dir', work_dir, '--resume',
        os.path.join(mask_rcnn_run['work_dir'], 'epoch_1.pth'), '--cfg-options'
    ] + synthetic_data_overrides('coco', mask_rcnn_run['root']) +
               ['randomness.deterministic=True'] + WORKERS)
    expected = load_checkpoint_file(mask_rcnn_run['checkpoint'])
    resumed = load_checkpoint_file(os.path.join(work_dir, 'epoch_2.pth'))
    assert resumed['meta']['epoch'] == expected['meta']['epoch'] == 2
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        assert_identical(resumed[key], expected[key], key)
    text = open(glob.glob(os.path.join(work_dir, '*', '*.log'))[0]).read()
    assert 'DefaultSampler -> SeededDefaultSampler' in text


DDP_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import test_resume  # noqa: F401  registers RecordSample
from mmfca import apis
apis.train([{config!r}, '--launcher', 'pytorch'] + sys.argv[1:] +
           ['--cfg-options'] + {options!r})
"""


def torchrun(script, args, log, port):
    """``script args`` in 2 CPU processes (torchrun), recording the samples
    to ``log``."""
    env = dict(
        os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO, **{SAMPLE_LOG: log})
    env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env['PATH']
    result = subprocess.run(
        ['torchrun', '--nproc_per_node=2', f'--master_port={port}', script] +
        args,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True)
    assert result.returncode == 0, \
        result.stdout[-3000:] + result.stderr[-3000:]


def test_two_process_resume_is_exact_and_ranks_draw_differently(
        synthetic_ade, tmp_path):
    full, resumed = str(tmp_path / 'full'), str(tmp_path / 'resumed')
    options = synthetic_data_overrides('ade20k', synthetic_ade) + SMALL_L1 + [
        'train_cfg.max_iters=4', 'train_cfg.val_interval=100',
        'default_hooks.checkpoint.interval=2', 'randomness.deterministic=True'
    ]
    script = tmp_path / 'ddp_train.py'
    script.write_text(
        DDP_SCRIPT.format(
            tests=os.path.dirname(os.path.abspath(__file__)),
            config=recording_config(tmp_path, SYNTHETIC_SEG),
            options=options))
    torchrun(
        str(script), ['--work-dir', full], str(tmp_path / 'full.jsonl'), 29547)
    torchrun(
        str(script),
        ['--work-dir', resumed, '--resume',
         os.path.join(full, 'iter_2.pth')], str(tmp_path / 'resumed.jsonl'),
        29548)

    expected = load_checkpoint_file(os.path.join(full, 'iter_4.pth'))
    again = load_checkpoint_file(os.path.join(resumed, 'iter_4.pth'))
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        assert_identical(again[key], expected[key], key)
    states = expected['rng_states']
    assert states['world_size'] == 2 and len(states['ranks']) == 2

    samples = recorded(str(tmp_path / 'full.jsonl'))
    # 4 iterations x batch 2 on each rank.
    assert len(samples) == 16
    peeks = {
        rank: {tuple(s['peek'])
               for s in samples if s['rank'] == rank}
        for rank in (0, 1)
    }
    assert len(peeks[0]) == len(peeks[1]) == 8
    assert not peeks[0] & peeks[1]
    # The resumed run drew the same per-sample streams for iterations 3-4.
    again_samples = recorded(str(tmp_path / 'resumed.jsonl'))
    assert len(again_samples) == 8
    assert {(s['rank'], s['image'], tuple(s['peek']))
            for s in again_samples} <= {(s['rank'], s['image'],
                                         tuple(s['peek']))
                                        for s in samples}
