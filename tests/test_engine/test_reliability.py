"""Interrupted runs, several processes, determinism, NaN stops and bad
input, on the UperNet config with a small FcaFormer-L1 and synthetic
ADE20K."""
import datetime
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import pytest
import torch

from mmfca import apis
from mmfca.apis import build_model, load_config
from mmfca.datasets import LoadImageFromFileOrSkip
from mmfca.datasets.checks import check_dataset_paths
from mmfca.engine.runner import find_resumable_checkpoint
from mmfca.testing import synthetic_data_overrides
from mmfca.testing.runs import (ITERS, REPO, SMALL_L1, SYNTHETIC_SEG,
                                assert_identical, small_run)
from mmfca.utils.serialization import load_checkpoint_file

#: Trains, exports or starts processes: not in `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

SEG_CONFIG = os.path.join(REPO, 'configs/upernet_fcaformer_l2_160k_ade20k.py')


def losses_by_iter(work_dir):
    """{iteration: loss} from every run logged in ``work_dir``."""
    losses = {}
    for path in glob.glob(
            os.path.join(work_dir, '*', 'vis_data', 'scalars.json')):
        for line in open(path):
            record = json.loads(line)
            if 'loss' in record:
                losses[record['iter']] = record['loss']
    return losses


def load(path):
    return load_checkpoint_file(path, map_location='cpu')


@pytest.fixture(scope='module')
def reference(seg_reference):
    """An uninterrupted run: 6 iterations, checkpoints at 2, 4 and 6
    (tests/conftest.py; test_resume.py resumes it too)."""
    return seg_reference


@pytest.fixture(scope='module')
def killed_and_resumed(synthetic_ade, tmp_path_factory):
    """The same run in a subprocess, SIGKILLed while it writes iter_4.pth,
    then resumed in-process with ``--resume``."""
    work_dir = str(tmp_path_factory.mktemp('killed'))
    process = subprocess.Popen(
        [
            sys.executable, 'tools/train.py', SYNTHETIC_SEG, '--work-dir',
            work_dir, '--cfg-options'
        ] + small_run(synthetic_ade),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    pattern = os.path.join(work_dir, 'iter_4.pth.tmp-*')
    deadline = time.time() + 600
    while process.poll() is None and time.time() < deadline:
        if glob.glob(pattern):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    process.wait()
    after_kill = dict(
        returncode=process.returncode,
        partial=glob.glob(pattern),
        files=sorted(os.listdir(work_dir)),
        last=open(os.path.join(work_dir, 'last_checkpoint')).read())
    apis.train(
        [SYNTHETIC_SEG, '--work-dir', work_dir, '--resume', '--cfg-options'] +
        small_run(synthetic_ade))
    return dict(work_dir=work_dir, after_kill=after_kill)


def test_a_kill_while_saving_leaves_the_previous_checkpoint_as_latest(
        killed_and_resumed):
    after_kill = killed_and_resumed['after_kill']
    assert after_kill['returncode'] == -signal.SIGKILL
    # Killed mid-write: only the temporary file exists, and the recorded
    # latest checkpoint is the previous, complete one.
    assert after_kill['partial'], 'the kill came after the write finished'
    assert 'iter_4.pth' not in after_kill['files']
    assert after_kill['last'].endswith('iter_2.pth')
    # The resumed run removed the partial file.
    assert not glob.glob(
        os.path.join(killed_and_resumed['work_dir'], '*.tmp-*'))


def test_resumed_run_ends_bit_identical_to_the_uninterrupted_one(
        reference, killed_and_resumed):
    expected = load(os.path.join(reference, f'iter_{ITERS}.pth'))
    resumed = load(
        os.path.join(killed_and_resumed['work_dir'], f'iter_{ITERS}.pth'))
    assert resumed['meta']['iter'] == expected['meta']['iter'] == ITERS
    for key in ('state_dict', 'optimizer', 'param_schedulers'):
        assert_identical(resumed[key], expected[key], key)
    assert resumed['optimizer']['param_groups'][0]['lr'] == \
        expected['optimizer']['param_groups'][0]['lr']
    assert 'rng_states' in resumed


def test_two_deterministic_runs_log_identical_losses(reference,
                                                     killed_and_resumed):
    # Two processes (the second killed and resumed) with the same seed and
    # randomness.deterministic=True.
    expected = losses_by_iter(reference)
    assert sorted(expected) == list(range(1, ITERS + 1))
    assert losses_by_iter(killed_and_resumed['work_dir']) == expected


def test_auto_resume_skips_a_truncated_latest_checkpoint(
        reference, synthetic_ade, tmp_path):
    for step in (2, 4):
        shutil.copy(os.path.join(reference, f'iter_{step}.pth'), tmp_path)
    broken = str(tmp_path / 'iter_4.pth')
    data = open(broken, 'rb').read()
    open(broken, 'wb').write(data[:len(data) // 2])
    (tmp_path / 'last_checkpoint').write_text(broken)
    assert find_resumable_checkpoint(str(tmp_path)) == str(tmp_path /
                                                           'iter_2.pth')
    with pytest.raises(RuntimeError, match='truncated or damaged'):
        apis.test([
            SYNTHETIC_SEG, broken, '--work-dir',
            str(tmp_path / 'test'), '--cfg-options'
        ] + small_run(synthetic_ade))


def test_checkpoint_with_foreign_objects_needs_trust(reference, synthetic_ade,
                                                     tmp_path):
    checkpoint = load(os.path.join(reference, f'iter_{ITERS}.pth'))
    checkpoint['meta']['saved_on'] = datetime.date(2026, 11, 23)
    path = str(tmp_path / 'foreign.pth')
    torch.save(checkpoint, path)
    args = [
        SYNTHETIC_SEG, path, '--work-dir',
        str(tmp_path / 'test'), '--cfg-options'
    ] + small_run(synthetic_ade)
    with pytest.raises(RuntimeError, match='--trust-checkpoint'):
        apis.test(args)
    metrics = apis.test(args + ['--trust-checkpoint'])
    assert 'mIoU' in metrics


def test_missing_checkpoint_is_named(synthetic_ade, tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere.pth'):
        apis.test(
            [SYNTHETIC_SEG,
             str(tmp_path / 'nowhere.pth'), '--cfg-options'] +
            small_run(synthetic_ade))


def test_nan_loss_stops_before_a_checkpoint_is_written(synthetic_ade,
                                                       tmp_path):
    work_dir = str(tmp_path)
    # A learning rate of 1e30 turns the weights to inf after one step.
    options = small_run(
        synthetic_ade, iters=4,
        lr=1e30) + ['default_hooks.checkpoint.interval=1']
    with pytest.raises(
            FloatingPointError, match=r'iteration 2 \(epoch 1\): loss=nan'):
        apis.train([SYNTHETIC_SEG, '--work-dir', work_dir, '--cfg-options'] +
                   options)
    assert sorted(os.path.basename(p)
                  for p in glob.glob(f'{work_dir}/*.pth')) == ['iter_1.pth']
    weights = load(os.path.join(work_dir, 'iter_1.pth'))['state_dict']
    assert all(
        torch.isfinite(w).all() for w in weights.values()
        if w.is_floating_point())


def ddp_config(tmp_path):
    """The UperNet config where 2 processes x batch 1 and 1 process x batch
    2 compute the same gradient: a fixed-size pipeline, no dropout or drop
    path, BN only in the backbone and frozen there (SyncBN becomes
    per-process BN on CPU), plain SGD in float32."""
    path = tmp_path / 'ddp_check.py'
    path.write_text(f"""
_base_ = {SYNTHETIC_SEG!r}
train_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='Resize', scale=(96, 96), keep_ratio=False),
    dict(type='PackSegInputs'),
]))
model = dict(
    backbone=dict(drop_path_rate=0.0, norm_eval=True,
                  layer_scale_init_value=1e-6),
    decode_head=dict(norm_cfg=None, dropout_ratio=0.0),
    auxiliary_head=dict(norm_cfg=None, dropout_ratio=0.0))
optim_wrapper = dict(
    cpu_autocast=False,
    optimizer=dict(_delete_=True, type='SGD', lr=1e-3, weight_decay=0.0))
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False,
                        begin=0, end=10)]
""")
    return str(path)


def test_two_cpu_processes_match_one_process_with_twice_the_batch(
        synthetic_ade, tmp_path):
    config = ddp_config(tmp_path)
    options = synthetic_data_overrides('ade20k', synthetic_ade) + SMALL_L1 + [
        'train_cfg.max_iters=1', 'train_cfg.val_interval=100',
        'default_hooks.checkpoint.interval=1'
    ]
    # Both runs start from the same weights.
    cfg = load_config(
        config, {
            'model.backbone.arch': 'l1',
            'model.backbone.out_channels': None,
            'model.backbone.init_cfg': None,
            'model.decode_head.in_channels': [64, 128, 192, 320],
            'model.auxiliary_head.in_channels': 192
        })
    torch.manual_seed(0)
    model = build_model(cfg)
    model.init_weights()
    start = str(tmp_path / 'start.pth')
    torch.save({'state_dict': model.state_dict()}, start)
    options.append(f'load_from={start}')

    env = dict(os.environ, PORT='29533')
    env['PATH'] = os.path.dirname(sys.executable) + os.pathsep + env['PATH']
    two = str(tmp_path / 'two')
    result = subprocess.run(
        [
            'bash', 'tools/dist_train.sh', config, '2', '--work-dir', two,
            '--cfg-options', 'train_dataloader.batch_size=1'
        ] + options,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True)
    output = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, output
    assert 'gloo backend on CPU' in result.stdout + result.stderr
    log = open(glob.glob(os.path.join(two, '*', '*.log'))[0]).read()
    assert 'DDP wraps the CPU model' in log
    one = str(tmp_path / 'one')
    apis.train([
        config, '--work-dir', one, '--cfg-options',
        'train_dataloader.batch_size=2'
    ] + options)

    initial = load(start)['state_dict']
    a = load(os.path.join(two, 'iter_1.pth'))['state_dict']
    b = load(os.path.join(one, 'iter_1.pth'))['state_dict']
    update = max((b[k] - initial[k]).abs().max().item() for k in initial)
    gap = max((a[k] - b[k]).abs().max().item() for k in initial)
    assert update > 1e-4
    # Measured: the gap is about 1.4e-4 of the largest update (summation
    # order); a missing gradient all-reduce makes it of order 1.
    assert gap < 1e-2 * update, (gap, update)


def test_missing_dataset_directory_is_refused_before_anything_is_written(
        tmp_path):
    work_dir = tmp_path / 'work'
    with pytest.raises(FileNotFoundError, match='data_root .*nowhere'):
        apis.train(
            [SYNTHETIC_SEG, '--work-dir',
             str(work_dir), '--cfg-options'] +
            small_run(str(tmp_path / 'nowhere')))
    assert not work_dir.exists()


def test_empty_dataset_directory_is_refused(synthetic_ade, tmp_path):
    root = tmp_path / 'empty'
    shutil.copytree(synthetic_ade, root)
    for path in glob.glob(str(root / 'images' / 'training' / '*')):
        os.remove(path)
    with pytest.raises(ValueError, match='found no samples'):
        apis.train([
            SYNTHETIC_SEG, '--work-dir',
            str(tmp_path / 'work'), '--cfg-options'
        ] + small_run(str(root)))


def test_labels_beyond_num_classes_are_refused(synthetic_ade, tmp_path):
    root = tmp_path / 'labels'
    shutil.copytree(synthetic_ade, root)
    for path in glob.glob(str(root / 'annotations' / 'training' / '*')):
        label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        # Class 199 after reduce_zero_label, everywhere: whatever the
        # random crop, the batch holds it.
        label[:] = 200
        cv2.imwrite(path, label)
    with pytest.raises(
            ValueError, match=r'holds class\(es\) \[199\].*'
            r'num_classes=150'):
        apis.train([
            SYNTHETIC_SEG, '--work-dir',
            str(tmp_path / 'work'), '--cfg-options'
        ] + small_run(str(root)))
    assert not glob.glob(str(tmp_path / 'work' / '*.pth'))


def test_undecodable_images_are_skipped_and_counted(synthetic_ade, tmp_path):
    root = tmp_path / 'broken'
    shutil.copytree(synthetic_ade, root)
    images = sorted(glob.glob(str(root / 'images' / 'training' / '*')))
    for path in images[2:]:
        open(path, 'wb').write(b'not an image')
    before = LoadImageFromFileOrSkip.skipped
    apis.train(
        [SYNTHETIC_SEG, '--work-dir',
         str(tmp_path / 'work'), '--cfg-options'] +
        small_run(str(root), iters=3))
    assert LoadImageFromFileOrSkip.skipped > before
    log = open(glob.glob(str(tmp_path / 'work' / '*' / '*.log'))[0]).read()
    assert 'it cannot be read as an image' in log
    assert os.path.isfile(tmp_path / 'work' / 'iter_3.pth')


def test_amp_on_cpu_is_refused_for_detection():
    det = os.path.join(REPO, 'configs/mask_rcnn_fcaformer_l2_fpn_3x_coco.py')
    with pytest.raises(ValueError, match='no bfloat16 kernels'):
        apis.train([det, '--amp'])


def test_typo_in_a_backbone_key_is_named():
    cfg = load_config(SEG_CONFIG, {'model.backbone.archh': 'l1'})
    with pytest.raises(TypeError, match="'archh'.*did you mean 'arch'"):
        build_model(cfg)


def test_dataset_path_checks_name_the_missing_piece(tmp_path):
    (tmp_path / 'train').mkdir()
    check_dataset_paths(
        dict(
            type='CustomDataset', data_root=str(tmp_path),
            data_prefix='train'))
    with pytest.raises(FileNotFoundError, match=r"data_prefix.* '[^']*/val'"):
        check_dataset_paths(
            dict(
                type='CustomDataset',
                data_root=str(tmp_path),
                data_prefix='val'))
    wrapped = dict(
        type='RepeatDataset',
        times=2,
        dataset=dict(
            type='CocoDataset',
            data_root=str(tmp_path),
            ann_file='annotations/train.json',
            data_prefix=dict(img='train')))
    with pytest.raises(
            FileNotFoundError,
            match=r'annotation file .*annotations/train\.json'):
        check_dataset_paths(wrapped)


def seg_test_options(root, train_root, test_root):
    """``small_run`` options for tools/test.py, with the training and
    validation data at ``train_root`` and the test data at ``test_root``."""
    roots = {
        'train_dataloader.dataset.data_root': train_root,
        'val_dataloader.dataset.data_root': train_root,
        'test_dataloader.dataset.data_root': test_root,
    }
    options = []
    for option in small_run(root):
        key = option.split('=')[0]
        options.append(f'{key}={roots[key]}' if key in roots else option)
    return options


def test_testing_needs_only_the_test_data(reference, synthetic_ade, tmp_path):
    # What a user does with downloaded weights: the training data (here a
    # directory that does not exist) is never read.
    nowhere = str(tmp_path / 'no_training_data')
    checkpoint = os.path.join(reference, f'iter_{ITERS}.pth')
    metrics = apis.test([
        SYNTHETIC_SEG, checkpoint, '--work-dir',
        str(tmp_path / 'work'), '--cfg-options'
    ] + seg_test_options(synthetic_ade, nowhere, synthetic_ade))
    assert 0 <= metrics['mIoU'] <= 100


def test_missing_test_data_names_the_test_loader_key(synthetic_ade, tmp_path):
    nowhere = str(tmp_path / 'no_test_data')
    # The check comes before the checkpoint is read.
    checkpoint = tmp_path / 'never_read.pth'
    checkpoint.write_bytes(b'')
    work_dir = tmp_path / 'work'
    with pytest.raises(
            FileNotFoundError,
            match=r"data_root '.*no_test_data' does not exist.*"
            r'--cfg-options test_dataloader\.dataset\.data_root=PATH'):
        apis.test([
            SYNTHETIC_SEG,
            str(checkpoint), '--work-dir',
            str(work_dir), '--cfg-options'
        ] + seg_test_options(synthetic_ade, synthetic_ade, nowhere))
    assert not work_dir.exists()


def test_path_checks_follow_the_run_and_name_nested_keys(tmp_path):
    from mmfca.datasets.checks import check_dataloader_paths
    nowhere = str(tmp_path / 'nowhere')
    wrapped = dict(
        dataset=dict(
            type='RepeatDataset',
            times=2,
            dataset=dict(type='ADE20KDataset', data_root=nowhere)))
    cfg = dict(
        train_dataloader=wrapped,
        val_dataloader=wrapped,
        test_dataloader=dict(dataset=dict(data_root=str(tmp_path))))
    check_dataloader_paths(cfg, 'test')
    with pytest.raises(
            FileNotFoundError,
            match=r'train_dataloader\.dataset\.dataset\.data_root=PATH'):
        check_dataloader_paths(cfg, 'train')
    # Validation is on only with a val_cfg.
    cfg['train_dataloader'] = cfg['test_dataloader']
    check_dataloader_paths(cfg, 'train')
    cfg['val_cfg'] = dict(type='ValLoop')
    with pytest.raises(
            FileNotFoundError,
            match=r'val_dataloader\.dataset\.dataset\.data_root=PATH'):
        check_dataloader_paths(cfg, 'train')


def test_only_read_and_decode_failures_are_skipped(synthetic_ade, tmp_path):
    image = sorted(
        glob.glob(os.path.join(synthetic_ade, 'images', 'training', '*')))[0]
    empty = tmp_path / 'empty.jpg'
    empty.write_bytes(b'')
    before = LoadImageFromFileOrSkip.skipped
    loader = LoadImageFromFileOrSkip()
    assert loader.transform(dict(img_path=image))['img'].shape[2] == 3
    for broken in (str(tmp_path / 'missing.jpg'), str(empty)):
        assert loader.transform(dict(img_path=broken)) is None
    assert LoadImageFromFileOrSkip.skipped == before + 2
    # A wrong argument is not a broken image.
    with pytest.raises(KeyError, match='nonsense'):
        LoadImageFromFileOrSkip(
            color_type='nonsense').transform(dict(img_path=image))
    with pytest.raises(ValueError, match='nonsense'):
        LoadImageFromFileOrSkip(
            imdecode_backend='nonsense').transform(dict(img_path=image))
    assert LoadImageFromFileOrSkip.skipped == before + 2


def test_a_dataset_of_undecodable_images_stops_the_run(synthetic_ade,
                                                       tmp_path):
    root = tmp_path / 'all_broken'
    shutil.copytree(synthetic_ade, root)
    images = sorted(glob.glob(str(root / 'images' / 'training' / '*')))
    for index, path in enumerate(images):
        open(path, 'wb').write(b'' if index % 2 else b'not an image')
    with pytest.raises(
            RuntimeError,
            match=r'The last 100 images could not be read or decoded '
            r"\(the latest: '.*synthetic_training_\d+\.jpg'.*data is broken"):
        apis.train([
            SYNTHETIC_SEG, '--work-dir',
            str(tmp_path / 'work'), '--cfg-options'
        ] + small_run(str(root), iters=2))
    assert not glob.glob(str(tmp_path / 'work' / '*.pth'))


@pytest.mark.parametrize('native', [True, False])
@pytest.mark.parametrize('cpu_autocast', ['auto', True, False])
def test_cpu_amp_is_bfloat16_only_where_the_cpu_computes_it(
        native, cpu_autocast, monkeypatch, tmp_path):
    from mmengine.logging import MMLogger
    from mmengine.optim import build_optim_wrapper

    from mmfca.engine.optimizers import amp_optim_wrapper as amp
    monkeypatch.setattr(amp, 'accelerator_available', lambda: False)
    monkeypatch.setattr(amp, 'cpu_computes_bfloat16', lambda: native)
    log_file = str(tmp_path / 'amp.log')
    MMLogger.get_instance(f'amp_{tmp_path.name}', log_file=log_file)
    model = torch.nn.Linear(8, 8)
    wrapper = build_optim_wrapper(
        model,
        dict(
            type='AnyDeviceAmpOptimWrapper',
            cpu_autocast=cpu_autocast,
            optimizer=dict(type='SGD', lr=0.1)))
    with wrapper.optim_context(model):
        output = model(torch.randn(2, 8))
    bfloat16 = cpu_autocast is True or (cpu_autocast == 'auto' and native)
    assert output.dtype == (torch.bfloat16 if bfloat16 else torch.float32)
    log = open(log_file).read()
    assert ('bfloat16 autocast on the CPU' in log) == bfloat16
    fallback = 'training in float32 instead of AMP' in log
    assert fallback == (cpu_autocast == 'auto' and not native)
    if fallback:
        assert 'no bfloat16 arithmetic' in log
        assert 'optim_wrapper.cpu_autocast=True forces bfloat16' in log


def test_native_bfloat16_needs_the_cpu_instructions(monkeypatch):
    from mmfca.engine.optimizers import cpu_computes_bfloat16
    avx512 = {
        'avx2': True,
        'avx512_f': True,
        'avx512_bf16': False,
        'amx_bf16': False
    }
    for onednn, capabilities, expected in [
        (False, dict(avx512, avx512_bf16=True), False),  # no oneDNN kernels
        (True, avx512, False),  # oneDNN converts in software
        (True, dict(avx512, avx512_bf16=True), True),
        (True, dict(avx512, amx_bf16=True), True),
        (True, {
            'neon': True,
            'bf16': True
        }, True),  # Arm: oneDNN decides
    ]:
        monkeypatch.setattr(torch.ops.mkldnn, '_is_mkldnn_bf16_supported',
                            lambda: onednn)
        monkeypatch.setattr(torch.cpu, 'get_capabilities',
                            lambda: capabilities)
        assert cpu_computes_bfloat16() == expected, (onednn, capabilities)


def test_undecodable_bytes_are_skipped_and_ignore_empty_is_refused(tmp_path):
    # OpenCV returns no image for these bytes (no exception): mmcv's
    # "failed to load image" is the one AssertionError that means a skip.
    garbage = tmp_path / 'garbage.jpg'
    garbage.write_bytes(b'not an image')
    before = LoadImageFromFileOrSkip.skipped
    assert LoadImageFromFileOrSkip().transform(dict(
        img_path=str(garbage))) is None
    assert LoadImageFromFileOrSkip.skipped == before + 1
    with pytest.raises(ValueError, match='Remove ignore_empty'):
        LoadImageFromFileOrSkip(ignore_empty=True)
