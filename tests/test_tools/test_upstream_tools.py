"""The codebases' own ``tools/train.py`` and ``tools/test.py`` (shipped in
the installed packages under ``.mim/tools``) on mmfca's configs, as a user
of mmpretrain, mmseg or mmdet runs them: every class a config names
(ReliableRunner, the hooks, the image loader, the optimiser wrapper and
constructor, the backbone) builds from their registries.

mmpretrain's tools and mmdet's ``train.py`` build the runner from mmengine's
root ``RUNNERS``; before mmfca registered there they failed with
``KeyError: 'ReliableRunner is not in the runner registry'``.

The checkpoints mmfca's runner writes load with a plain
``torch.load(weights_only=True)``: mmseg's ``test.py`` builds mmengine's
stock Runner whatever the config's ``runner_type``, and reads them without
mmfca's allow-list (before, it refused the message hub's history buffers).
"""
import glob
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from mmfca.testing import synthetic_data_overrides
from mmfca.utils.serialization import safe_globals
from mmfca.utils.versions import installed

#: Trains, exports or starts processes: not in `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYNTHETIC = os.path.join(REPO, 'configs', 'synthetic')
# Per codebase: the synthetic config (the real one at small sizes), its
# data, a shorter run and what the test tool prints.
CASES = {
    'mmseg':
    dict(
        config='upernet_fcaformer_l2_synthetic_ade20k.py',
        data=('ade20k', 'synthetic_ade'),
        shorter=[
            'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
            'default_hooks.checkpoint.interval=2'
        ],
        checkpoint='iter_2.pth',
        metric='mIoU'),
    'mmdet':
    dict(
        config='mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py',
        data=('coco', 'synthetic_coco'),
        shorter=[
            'train_dataloader.dataset.indices=4', 'train_cfg.max_epochs=1',
            'train_cfg.val_interval=1'
        ],
        checkpoint='epoch_1.pth',
        metric='coco/bbox_mAP'),
    'mmpretrain':
    dict(
        config='fcaformer_l1_synthetic_imagenet.py',
        data=('imagenet', 'synthetic_imagenet'),
        # Two epochs of one batch (warm-up, then cosine).
        shorter=['train_dataloader.dataset.indices=8'],
        checkpoint='epoch_2.pth',
        metric='accuracy/top1'),
}
MMFCA_HOOKS = ('SafeCheckpointHook', 'RNGStateHook', 'NonFiniteLossHook',
               'LabelRangeHook')


def upstream_tool(codebase: str, name: str) -> str:
    """The path of ``codebase``'s own ``tools/<name>.py``, as installed."""
    package = importlib.util.find_spec(codebase).submodule_search_locations
    return os.path.join(package[0], '.mim', 'tools', f'{name}.py')


def run(command, expect_success: bool = True):
    result = subprocess.run(
        [sys.executable] + command, cwd=REPO, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert (result.returncode == 0) == expect_success, output[-4000:]
    return output


def onedl_mmseg() -> bool:
    """Whether mmseg is OneDL's fork, whose distribution name mmengine's
    config loader does not know."""
    return installed('mmseg').distribution == 'onedl-mmsegmentation'


@pytest.mark.parametrize('codebase', sorted(CASES))
def test_upstream_train_and_test_tools_run_the_configs(codebase, request,
                                                       tmp_path):
    case = CASES[codebase]
    dataset, fixture = case['data']
    options = synthetic_data_overrides(dataset,
                                       request.getfixturevalue(fixture))
    config = os.path.join(SYNTHETIC, case['config'])
    work_dir = str(tmp_path / 'train')

    if codebase == 'mmseg' and onedl_mmseg():
        # The loader resolves the config's mmseg:: bases before it runs the
        # config's custom_imports, so only tools that import mmfca first
        # (mmfca's own) map them (docs/get_started.md).
        output = run(
            [upstream_tool(codebase, 'train'), config, '--work-dir', work_dir],
            expect_success=False)
        assert 'mmsegmentation is not installed' in output, output[-4000:]
        mmfca_tool = os.path.join(REPO, 'tools', 'train.py')
        run([mmfca_tool, config, '--work-dir', work_dir, '--cfg-options'] +
            options + case['shorter'])
        return

    output = run([
        upstream_tool(codebase, 'train'), config, '--work-dir', work_dir,
        '--cfg-options'
    ] + options + case['shorter'])
    # The hooks of configs/_base_/mmfca_runtime.py, from the config.
    log = open(glob.glob(os.path.join(work_dir, '*', '*.log'))[0]).read()
    for hook in MMFCA_HOOKS:
        assert hook in log, hook
    checkpoint = os.path.join(work_dir, case['checkpoint'])
    # A plain weights_only load, with none of mmfca's allow-list in force.
    active = torch.serialization.get_safe_globals()
    assert not [entry for entry in safe_globals() if entry in active]
    saved = torch.load(checkpoint, map_location='cpu', weights_only=True)
    assert 'rng_states' in saved
    assert not glob.glob(os.path.join(work_dir, '*.tmp-*'))

    output = run([
        upstream_tool(codebase, 'test'), config, checkpoint, '--work-dir',
        str(tmp_path / 'test'), '--cfg-options'
    ] + options)
    assert f'{case["metric"]}: ' in output, output[-4000:]
