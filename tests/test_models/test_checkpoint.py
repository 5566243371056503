"""Loading FcaFormer weights in each layout, and refusing bad files."""
import argparse
import copy
import functools
import glob
import http.server
import importlib.util
import logging
import os
import os.path as osp
import pickle
import re
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from conftest import L2_DENSE_WIDTHS
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import load_checkpoint
from mmengine.testing.runner_test_case import ToyDataset, ToyModel
from reference import reference_forward

from mmfca.apis import build_model, load_config
from mmfca.engine.runner import ReliableRunner
from mmfca.engine.runner.reliable_runner import is_intact_checkpoint
from mmfca.models import FcaFormer
from mmfca.models.utils.checkpoint import convert_official_keys
from mmfca.utils.serialization import (checkpoint_globals, from_weights_only,
                                       load_checkpoint_file, safe_globals,
                                       to_weights_only)

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pretrained(path, arch='l2', **kwargs):
    init = dict(type='Pretrained', checkpoint=path)
    init.update(
        {k: kwargs.pop(k)
         for k in ('prefix', 'use_ema') if k in kwargs})
    model = FcaFormer(arch, init_cfg=init, **kwargs)
    model.init_weights()
    return model.eval()


def assert_backbone_equals(model, official_weights):
    expected, _, _ = convert_official_keys(official_weights)
    state = model.state_dict()
    for key, value in expected.items():
        if key in state:
            assert torch.equal(state[key], value), key


@pytest.mark.parametrize('prefix', [None, 'backbone.'])
def test_official_imagenet_checkpoint_loads_model_weights(
        official_cls, prefix):
    ckpt = official_cls['l2']
    model = pretrained(
        ckpt['path'],
        out_indices=(0, 1, 2, 3),
        out_channels=L2_DENSE_WIDTHS,
        prefix=prefix)
    assert_backbone_equals(model, ckpt['model'])
    report = model.load_report
    # Every backbone tensor came from the file; only the new output
    # projections did not, and the classifier's ending was not used.
    assert not report['missing']
    assert sorted({k.split('.')[0]
                   for k in report['new_outputs']
                   }) == ['proj0', 'proj1', 'proj2', 'proj3']
    # The classifier's final norm (norm_head, our norm3) has no place in a
    # backbone with output projections either.
    assert sorted(report['unused']) == [
        'head.bias', 'head.weight', 'norm3.bias', 'norm3.weight'
    ]


def test_official_imagenet_checkpoint_ema_on_request(official_cls):
    ckpt = official_cls['l1']
    model = pretrained(ckpt['path'], arch='l1', use_ema=True)
    assert_backbone_equals(model, ckpt['ema'])
    plain = pretrained(ckpt['path'], arch='l1')
    assert not torch.equal(
        model.state_dict()['stages.2.blocks.1.attn.depth_bias'],
        plain.state_dict()['stages.2.blocks.1.attn.depth_bias'])


def test_official_downstream_checkpoint_gives_official_features(
        official_dense_l2):
    model = pretrained(
        official_dense_l2['path'],
        out_indices=(0, 1, 2, 3),
        out_channels=L2_DENSE_WIDTHS,
        prefix='backbone.')
    assert not model.load_report['missing']
    assert not model.load_report['new_outputs']
    x = torch.randn(1, 3, 120, 90)
    with torch.no_grad():
        outs = model(x)
        expected = reference_forward(official_dense_l2['weights'], 'l2', x)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=2e-5)


def test_own_checkpoints_and_their_ema(tmp_path):
    source = FcaFormer('l1', out_indices=(3, ))
    source.init_weights()
    state = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state['head.fc.weight'] = torch.zeros(10, 320)
    ema = {
        f'module.{k}': v + 1
        for k, v in state.items() if v.is_floating_point()
    }
    ema['steps'] = torch.tensor(5)
    path = str(tmp_path / 'ours.pth')
    torch.save(dict(state_dict=state, ema_state_dict=ema, meta={}), path)

    model = pretrained(path, arch='l1', out_indices=(3, ), prefix='backbone.')
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    ema_model = pretrained(path, arch='l1', out_indices=(3, ), use_ema=True)
    weight = 'stages.2.blocks.0.attn.qkv.weight'
    assert torch.equal(ema_model.state_dict()[weight],
                       source.state_dict()[weight] + 1)


@pytest.mark.slow
def test_converted_checkpoint_loads_strictly_into_the_classifier_config(
        official_cls, tmp_path):
    ckpt = official_cls['l1']
    dst = str(tmp_path / 'converted.pth')
    subprocess.run([
        sys.executable,
        os.path.join(REPO, 'tools/model_converters/official_to_mmfca.py'),
        ckpt['path'], dst
    ],
                   check=True,
                   capture_output=True)
    cfg = load_config(os.path.join(REPO, 'configs/fcaformer_l1_in1k.py'))
    model = build_model(cfg)
    load_checkpoint(model, dst, strict=True)
    model.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = model(x, mode='tensor')
        expected = reference_forward(ckpt['model'], 'l1', x)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=2e-5)


def test_checkpoint_of_another_arch_names_it(official_cls):
    with pytest.raises(ValueError, match="looks like arch='l1'.*arch='l2'"):
        pretrained(official_cls['l1']['path'], arch='l2')


def test_window_size_that_misses_the_bias_tables(official_dense_l2):
    with pytest.raises(
            ValueError, match='stage 3 tables are for window 14'
            '.*uses 12'):
        pretrained(
            official_dense_l2['path'], window_size=(12, 7), prefix='backbone.')


def test_missing_checkpoint_file(tmp_path):
    missing = str(tmp_path / 'nope.pth')
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        pretrained(missing)


def test_truncated_checkpoint(official_cls, tmp_path):
    data = open(official_cls['l1']['path'], 'rb').read()
    path = tmp_path / 'truncated.pth'
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(RuntimeError, match='truncated'):
        pretrained(str(path), arch='l1')


class NotWeights:
    """A class a weights file must not be able to instantiate."""


def test_foreign_pickles_are_refused(tmp_path):
    path = str(tmp_path / 'evil.pth')
    torch.save({'model': {}, 'payload': NotWeights()}, path)
    with pytest.raises(RuntimeError, match='Refusing to load'):
        pretrained(path, arch='l1')


def test_unknown_pretrained_option_is_refused(official_cls):
    model = FcaFormer(
        'l1',
        init_cfg=dict(
            type='Pretrained', checkpoint=official_cls['l1']['path'],
            ema=True))
    with pytest.raises(ValueError, match=r"Unknown keys \['ema'\]"):
        model.init_weights()


class TinyClassifier(BaseModel):
    """An mmengine model around an FcaFormer-L1, for a real Runner."""

    def __init__(self):
        super().__init__()
        self.backbone = FcaFormer(
            'l1', out_indices=(3, ), gap_before_final_norm=True)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.backbone(inputs)


@pytest.fixture
def runner(tmp_path):
    return ReliableRunner(
        model=TinyClassifier(), work_dir=str(tmp_path / 'run'))


@pytest.fixture(scope='module')
def mmengine_checkpoint(tmp_path_factory):
    """A checkpoint as mmengine's Runner writes it: the model's weights
    next to the message hub's history buffers and numpy values."""
    from mmengine.logging import MessageHub
    hub = MessageHub.get_instance('mmfca_test')
    hub.update_scalar('train/loss', np.float64(0.5))
    hub.update_scalar('train/lr', 1e-3)
    source = TinyClassifier()
    source.backbone.init_weights()
    path = str(tmp_path_factory.mktemp('mmengine') / 'iter_1.pth')
    torch.save(
        dict(
            meta=dict(seed=np.int64(3), epoch=1),
            state_dict=source.state_dict(),
            message_hub=hub.state_dict()), path)
    return dict(path=path, state=source.state_dict())


def test_mmengine_checkpoints_load_under_weights_only(mmengine_checkpoint,
                                                      runner):
    """What mmengine's Runner stores (history buffers, numpy values) loads
    under weights_only through mmfca's readers: the file reader, the
    Pretrained init, the runner's load_from / resume and timm's loader of
    FcaFormer. The allow-list is in force only while they read: after
    ``import mmfca`` a plain ``torch.load`` still refuses the file."""
    import timm
    from mmengine.logging.history_buffer import HistoryBuffer
    path = mmengine_checkpoint['path']
    state = mmengine_checkpoint['state']
    assert load_checkpoint_file(path)['meta']['seed'] == 3
    backbone = pretrained(
        path, arch='l1', out_indices=(3, ), gap_before_final_norm=True)
    runner.load_checkpoint(path, strict=True)
    classifier = timm.create_model(
        'fcaformer_l1',
        pretrained=True,
        num_classes=0,
        pretrained_cfg_overlay=dict(file=path))
    for key, value in state.items():
        name = key[len('backbone.'):]
        assert torch.equal(backbone.state_dict()[name], value), key
        assert torch.equal(runner.model.state_dict()[key], value), key
        # timm's classifier holds the stages at the top and the final
        # norm in its head.
        timm_key = name.replace('norm3.', 'head.norm.')
        assert torch.equal(classifier.state_dict()[timm_key], value), key
    with pytest.raises(pickle.UnpicklingError, match='Unsupported global'):
        torch.load(path)
    assert HistoryBuffer not in torch.serialization.get_safe_globals()


def test_safe_globals_allowed_before_stay_allowed(official_cls):
    """mmfca's allow-list removes on exit only what it added: a type the
    user allowed for the whole process stays allowed."""
    before = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([argparse.Namespace])
    try:
        checkpoint = load_checkpoint_file(official_cls['l1']['path'])
        assert isinstance(checkpoint['args'], argparse.Namespace)
        assert argparse.Namespace in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


class MmengineMainTorch:
    """torch as mmengine's main branch calls it: every ``torch.load`` with
    ``weights_only=False``."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(*args, **kwargs):
        return torch.load(*args, **dict(kwargs, weights_only=False))


def test_trust_guard_does_not_depend_on_mmengines_torch_load(
        runner, mmengine_checkpoint, tmp_path, monkeypatch):
    """A file with objects that are not weights is refused by the runner
    (load_from, resume) and the Pretrained init unless trusted, also when
    mmengine asks torch.load for weights_only=False."""
    import mmengine.runner.checkpoint as mmengine_checkpoint_module
    checkpoint = torch.load(mmengine_checkpoint['path'], weights_only=False)
    checkpoint['meta']['payload'] = NotWeights()
    path = str(tmp_path / 'foreign.pth')
    torch.save(checkpoint, path)
    monkeypatch.setattr(mmengine_checkpoint_module, 'torch',
                        MmengineMainTorch())
    # The simulation works: mmengine's own reader unpickles the object.
    loaded = mmengine_checkpoint_module._load_checkpoint(path)
    assert isinstance(loaded['meta']['payload'], NotWeights)

    with pytest.raises(
            RuntimeError, match='Refusing to load.*'
            '--trust-checkpoint'):
        runner.load_checkpoint(path)
    with pytest.raises(RuntimeError, match='Refusing to load'):
        pretrained(
            path,
            arch='l1',
            out_indices=(3, ),
            gap_before_final_norm=True,
            prefix='backbone.')
    runner.trust_checkpoint = True
    loaded = runner.load_checkpoint(path)
    assert isinstance(loaded['meta']['payload'], NotWeights)


class QuietHandler(http.server.SimpleHTTPRequestHandler):

    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """A local HTTP server for ``tmp_path / 'www'``; yields its URL."""
    root = tmp_path / 'www'
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield dict(root=root, url=f'http://127.0.0.1:{server.server_port}')
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize('where', ['path', 'url'])
def test_pretrained_reads_urls_and_honours_map_location(
        official_cls, served, tmp_path, monkeypatch, where):
    source = official_cls['l1']['path']
    checkpoint = source
    if where == 'url':
        shutil.copy(source, served['root'] / 'official_l1.pth')
        checkpoint = f"{served['url']}/official_l1.pth"
        monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    locations = []

    def map_location(storage, location):
        locations.append(location)
        return storage

    model = FcaFormer(
        'l1',
        init_cfg=dict(
            type='Pretrained',
            checkpoint=checkpoint,
            map_location=map_location))
    model.init_weights()
    assert_backbone_equals(model, official_cls['l1']['model'])
    # The file's tensors were placed by map_location.
    assert locations and set(locations) == {'cpu'}
    if where == 'url':
        # Downloaded once into torch's hub cache.
        assert os.listdir(tmp_path / 'torch_home' / 'hub' /
                          'checkpoints') == ['official_l1.pth']


def test_official_names_load_through_mmengines_load_checkpoint(
        official_dense_l2):
    """The backbone's load-state-dict pre-hook renames official keys in
    any load, here mmengine's load_checkpoint of a whole segmentor file."""
    segmentor = torch.nn.Module()
    segmentor.backbone = FcaFormer(
        'l2', out_indices=(0, 1, 2, 3), out_channels=L2_DENSE_WIDTHS)
    load_checkpoint(segmentor, official_dense_l2['path'])
    expected, _, _ = convert_official_keys(official_dense_l2['weights'])
    state = segmentor.backbone.state_dict()
    assert set(expected) <= set(state)
    assert all(
        k.endswith('num_batches_tracked') for k in set(state) - set(expected))
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


class AsksForAnotherAttribute:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``."""

    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return getattr, (HistoryBuffer, '__init__')


def test_getattr_in_a_weights_file_resolves_only_statistics(tmp_path):
    path = str(tmp_path / 'getattr.pth')
    torch.save({'x': AsksForAnotherAttribute()}, path)
    with pytest.raises(pickle.UnpicklingError), checkpoint_globals():
        torch.load(path)


# A checkpoint that does not hold the backbone is refused, not loaded as
# "0 tensors" with a warning (training would start from random weights).


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
    """torchvision's ResNet-18 weights: a classifier of another model."""
    from torchvision.models import resnet18
    path = str(tmp_path_factory.mktemp('foreign') / 'resnet18.pth')
    torch.save(resnet18().state_dict(), path)
    return path


@pytest.fixture(scope='module')
def l1_without_stage_4(tmp_path_factory):
    """An mmfca L1 checkpoint whose last stage is missing, and the model's
    own weights it was cut from."""
    source = FcaFormer('l1', out_indices=(3, ), gap_before_final_norm=True)
    state = source.state_dict()
    kept = {
        f'backbone.{k}': v
        for k, v in state.items() if not k.startswith('stages.3.')
    }
    path = str(tmp_path_factory.mktemp('partial') / 'l1_partial.pth')
    torch.save(dict(state_dict=kept), path)
    removed = [k for k in state if k.startswith('stages.3.')]
    return dict(path=path, state=state, removed=removed)


class LoggedRecords:
    """Collect what mmengine's current logger emits."""

    def __enter__(self):
        from mmengine.logging import MMLogger
        self.logger = MMLogger.get_current_instance()
        self.records = []
        self.handler = logging.Handler()
        self.handler.emit = self.records.append
        self.logger.addHandler(self.handler)
        return self.records

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)


@pytest.mark.parametrize('strict', [True, False])
def test_checkpoint_of_another_model_is_refused(resnet18_file, strict):
    init = dict(type='Pretrained', checkpoint=resnet18_file)
    if not strict:
        init['strict'] = False
    model = FcaFormer('l2', out_indices=(0, 1, 2, 3), init_cfg=init)
    total = len(model.state_dict())
    with pytest.raises(ValueError) as info:
        model.init_weights()
    message = str(info.value)
    assert resnet18_file in message
    assert f'0 of {total} backbone tensors' in message
    # The prefix that was tried, and what the file holds instead.
    assert "prefix=None, and no key starts with 'backbone.'" in message
    assert "['bn1', 'conv1', 'fc', 'layer1', 'layer2', 'layer3', " \
        "'layer4']" in message
    assert 'no FcaFormer weights' in message


@pytest.mark.parametrize('prefix', ['decode_head.', 'model.backbone.'])
def test_segmentor_checkpoint_with_a_wrong_prefix_is_refused(
        official_dense_l2, prefix):
    model = FcaFormer(
        'l2',
        out_indices=(0, 1, 2, 3),
        out_channels=L2_DENSE_WIDTHS,
        init_cfg=dict(
            type='Pretrained',
            checkpoint=official_dense_l2['path'],
            prefix=prefix))
    total = len(model.state_dict())
    with pytest.raises(ValueError) as info:
        model.init_weights()
    message = str(info.value)
    assert official_dense_l2['path'] in message
    assert f'0 of {total} backbone tensors found under prefix ' \
        f'{prefix!r}' in message
    assert "top-level names are ['backbone', 'decode_head']" in message


def test_dense_checkpoint_missing_an_output_projection_is_refused(
        official_dense_l2, tmp_path):
    """Only a classifier's file may lack the output layers."""
    checkpoint = torch.load(official_dense_l2['path'])
    del checkpoint['state_dict']['backbone.head2.weight']
    path = str(tmp_path / 'no_head2.pth')
    torch.save(checkpoint, path)
    model = FcaFormer(
        'l2', out_indices=(0, 1, 2, 3), out_channels=L2_DENSE_WIDTHS)
    total = len(model.state_dict())
    with pytest.raises(
            ValueError,
            match=rf"{total - 1} of {total} backbone tensors "
            rf".*'proj2\.conv\.weight'.*strict=False"):
        pretrained(
            path, out_indices=(0, 1, 2, 3), out_channels=L2_DENSE_WIDTHS)


def test_partial_checkpoint_needs_strict_false(l1_without_stage_4):
    ckpt = l1_without_stage_4
    total = len(ckpt['state'])
    init = dict(type='Pretrained', checkpoint=ckpt['path'])
    model = FcaFormer(
        'l1', out_indices=(3, ), gap_before_final_norm=True, init_cfg=init)
    with pytest.raises(ValueError) as info:
        model.init_weights()
    message = str(info.value)
    assert ckpt['path'] in message
    assert (f'{total - len(ckpt["removed"])} of {total} backbone tensors '
            f"found under prefix 'backbone.'") in message
    assert 'stages.3.' in message and 'strict=False' in message

    model = FcaFormer(
        'l1',
        out_indices=(3, ),
        gap_before_final_norm=True,
        init_cfg=dict(init, strict=False))
    with LoggedRecords() as records:
        model.init_weights()
    # BN batch counters are not weights (torch does not require them).
    assert sorted(model.load_report['missing']) == sorted(
        k for k in ckpt['removed'] if not k.endswith('num_batches_tracked'))
    state = model.state_dict()
    for key, value in ckpt['state'].items():
        if key not in ckpt['removed']:
            assert torch.equal(state[key], value), key
    warnings = [
        r.getMessage() for r in records if r.levelno == logging.WARNING
    ]
    assert any('stages.3.blocks.0.attn.qkv.weight' in w for w in warnings)


@pytest.mark.parametrize('kwargs', [{}, {
    'features_only': True
}, {
    'num_classes': 10
}])
def test_timm_refuses_a_file_of_another_model(resnet18_file, kwargs):
    """timm loads non-strictly for features_only and another num_classes;
    the backbone check holds anyway."""
    import timm
    with pytest.raises(
            ValueError,
            match=rf"{re.escape(resnet18_file)}.*0 of \d+ "
            r"backbone tensors.*'conv1', 'fc', 'layer1'"):
        timm.create_model(
            'fcaformer_l1',
            pretrained=True,
            pretrained_cfg_overlay=dict(file=resnet18_file),
            **kwargs)


def test_timm_partial_file_needs_pretrained_strict_false(l1_without_stage_4):
    import timm
    ckpt = l1_without_stage_4
    total = len(ckpt['state'])
    with pytest.raises(
            ValueError,
            match=rf"{total - len(ckpt['removed'])} of {total} "
            r'backbone tensors.*pretrained_strict=False'):
        timm.create_model(
            'fcaformer_l1',
            pretrained=True,
            pretrained_cfg_overlay=dict(file=ckpt['path']),
            features_only=True)
    model = timm.create_model(
        'fcaformer_l1',
        pretrained=True,
        pretrained_cfg_overlay=dict(file=ckpt['path']),
        pretrained_strict=False)
    state = model.state_dict()
    for key, value in ckpt['state'].items():
        if key not in ckpt['removed']:
            # timm's classifier keeps the final norm in its head.
            timm_key = key.replace('norm3.', 'head.norm.')
            assert torch.equal(state[timm_key], value), key


def converter():
    spec = importlib.util.spec_from_file_location(
        'official_to_mmfca',
        os.path.join(REPO, 'tools/model_converters/official_to_mmfca.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_converter(monkeypatch, *args):
    """The converter's command line, in this process."""
    monkeypatch.setattr(sys, 'argv', ['official_to_mmfca.py', *args])
    converter().main()


def test_converter_refuses_a_file_of_another_model(resnet18_file, tmp_path,
                                                   monkeypatch):
    dst = str(tmp_path / 'out.pth')
    with pytest.raises(SystemExit) as info:
        run_converter(monkeypatch, resnet18_file, dst)
    message = str(info.value.code)
    assert resnet18_file in message
    assert "['bn1', 'conv1', 'fc', 'layer1'" in message
    assert not os.path.exists(dst)


def test_converter_refuses_an_incomplete_official_file(official_dense_l2,
                                                       tmp_path, monkeypatch):
    tool = converter()
    checkpoint = torch.load(official_dense_l2['path'])
    model = FcaFormer(
        'l2', out_indices=(0, 1, 2, 3), out_channels=L2_DENSE_WIDTHS)
    expected = [f'backbone.{k}' for k in model.state_dict()]
    expected.append('decode_head.conv_seg.weight')
    assert sorted(tool.convert(checkpoint)) == sorted(expected)
    del checkpoint['state_dict']['backbone.layer_2.blocks.3.qkv.weight']
    path = str(tmp_path / 'incomplete.pth')
    torch.save(checkpoint, path)
    with pytest.raises(SystemExit) as info:
        run_converter(monkeypatch, path, str(tmp_path / 'out.pth'))
    message = str(info.value.code)
    assert path in message
    assert "1 of its tensors are missing" in message
    assert 'stages.2.blocks.3.attn.qkv.weight' in message


def test_loading_survives_another_librarys_safe_globals_context(official_cls):
    """torch's ``safe_globals`` context removes what it allowed on exit,
    also when mmfca had allowed it (timm's loader allows
    argparse.Namespace this way): official files still load after one."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        pass
    model = FcaFormer(
        'l1',
        out_indices=(3, ),
        gap_before_final_norm=True,
        init_cfg=dict(
            type='Pretrained', checkpoint=official_cls['l1']['path']))
    model.init_weights()
    assert model.load_report['loaded']


# Checkpoints the runner writes: plain weights_only files, exact round trip,
# and save_best written atomically. A real ReliableRunner on mmengine's toy
# model and data, in-process.


class RisingScore(BaseMetric):
    """A validation score that improves at every evaluation, so that each
    validation writes a new best checkpoint."""

    default_prefix = 'toy'

    def __init__(self):
        super().__init__()
        self.evaluations = 0

    def process(self, data_batch, data_samples):
        self.results.append(0)

    def compute_metrics(self, results):
        self.evaluations += 1
        return dict(score=float(self.evaluations))


class CapturesCheckpoints(Hook):
    """Copies every checkpoint as the hooks leave it, before the runner
    stores it for ``weights_only``."""

    priority = 'LOWEST'

    def __init__(self):
        self.saved = []

    def before_save_checkpoint(self, runner, checkpoint):
        self.saved.append(copy.deepcopy(checkpoint))


def toy_runner(work_dir, max_iters, name, hooks=(), **kwargs):
    """mmengine's toy model and data under ReliableRunner, with the hooks of
    configs/_base_/mmfca_runtime.py that write checkpoints: a checkpoint and
    a validation every 2 iterations, the best kept; ``hooks`` are added."""
    loader = dict(batch_size=3, num_workers=0)
    return ReliableRunner(
        model=ToyModel(),
        work_dir=work_dir,
        experiment_name=name,
        train_dataloader=dict(
            loader,
            dataset=ToyDataset(),
            sampler=dict(type='InfiniteSampler', shuffle=True)),
        val_dataloader=dict(
            loader,
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=False)),
        val_evaluator=[RisingScore()],
        val_cfg=dict(),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=2),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(
                type='SafeCheckpointHook',
                interval=2,
                by_epoch=False,
                save_best='toy/score',
                rule='greater')),
        custom_hooks=[dict(type='RNGStateHook'), *hooks],
        log_processor=dict(by_epoch=False),
        randomness=dict(seed=0),
        **kwargs)


def plain_torch_load(path):
    """``torch.load(weights_only=True)`` with none of mmfca's allow-list in
    force, as the codebases' tools and inference APIs read a file."""
    active = torch.serialization.get_safe_globals()
    assert not [entry for entry in safe_globals() if entry in active]
    return torch.load(path, map_location='cpu', weights_only=True)


def assert_same(a, b, where='checkpoint'):
    """Equal values of the same types, numpy dtypes and history buffers
    included."""
    from mmengine.logging.history_buffer import HistoryBuffer
    assert type(a) is type(b), (where, type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, HistoryBuffer):
        assert a.max_length == b.max_length, where
        assert_same(a._log_history, b._log_history, f'{where}.log')
        assert_same(a._count_history, b._count_history, f'{where}.count')
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f'{where}.{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, where


def test_runner_checkpoints_load_under_plain_weights_only(tmp_path):
    """Every checkpoint the runner writes (periodic and best) loads with a
    plain ``torch.load(weights_only=True)``; read back by the runner it is
    what mmengine and the hooks put in, numpy values and the message hub's
    history buffers included, and a resume from it ends where the
    uninterrupted run ends."""
    from mmengine.logging.history_buffer import HistoryBuffer
    work_dir = str(tmp_path / 'run')
    captured = CapturesCheckpoints()
    toy_runner(work_dir, 6, 'plain', hooks=[captured]).train()
    files = sorted(glob.glob(osp.join(work_dir, '*.pth')))
    assert [osp.basename(path) for path in files] == [
        'best_toy_score_iter_6.pth', 'iter_2.pth', 'iter_4.pth', 'iter_6.pth'
    ]
    for path in files:
        plain_torch_load(path)
    # The last write is iter_6.pth again, with the best checkpoint's name.
    expected = captured.saved[-1]
    assert expected['message_hub']['runtime_info']['best_ckpt'] == \
        files[0]
    assert isinstance(expected['message_hub']['log_scalars']['train/loss'],
                      HistoryBuffer)
    assert isinstance(expected['message_hub']['runtime_info']['eta'],
                      np.generic)
    restored = from_weights_only(plain_torch_load(files[-1]))
    assert_same(restored, expected)

    resumed_dir = str(tmp_path / 'resumed')
    resumed = toy_runner(
        resumed_dir, 6, 'resumed', resume=True, load_from=files[2])
    resumed.train()
    final = from_weights_only(
        plain_torch_load(osp.join(resumed_dir, 'iter_6.pth')))
    for key in ('state_dict', 'optimizer', 'rng_states'):
        assert_same(final[key], restored[key], key)
    # The logged losses of all 6 iterations (times differ from run to run).
    for key in ('train/loss', 'train/lr'):
        assert_same(final['message_hub']['log_scalars'][key],
                    restored['message_hub']['log_scalars'][key], key)


class Killed(Exception):
    """Stands for the process being killed."""


def test_a_kill_while_saving_a_new_best_keeps_the_previous_best(
        tmp_path, monkeypatch):
    """The stock hook removes the previous best checkpoint and then writes
    the new one in place: a kill during that write leaves a truncated file
    under the new best's name and no intact best. SafeCheckpointHook writes
    it to a temporary name and removes the previous best only afterwards."""
    import mmengine.runner.runner as mmengine_runner
    from mmengine.runner.checkpoint import save_checkpoint

    writes = []

    def killed_while_writing_the_second_best(checkpoint, filename, **kwargs):
        # Best checkpoints are the ones saved without the optimizer.
        if 'optimizer' not in checkpoint and writes.count('best') == 1:
            save_checkpoint(checkpoint, filename, **kwargs)
            with open(filename, 'r+b') as file:
                file.truncate(os.path.getsize(filename) // 2)
            raise Killed
        writes.append('best' if 'optimizer' not in checkpoint else 'last')
        save_checkpoint(checkpoint, filename, **kwargs)

    monkeypatch.setattr(mmengine_runner, 'save_checkpoint',
                        killed_while_writing_the_second_best)
    work_dir = str(tmp_path / 'run')
    with pytest.raises(Killed):
        toy_runner(work_dir, 4, 'killed').train()
    previous_best = osp.join(work_dir, 'best_toy_score_iter_2.pth')
    assert glob.glob(osp.join(work_dir, 'best_*.pth')) == [previous_best]
    assert is_intact_checkpoint(previous_best)
    assert plain_torch_load(previous_best)['meta']['iter'] == 2
    assert glob.glob(osp.join(work_dir, 'best_toy_score_iter_4.pth.tmp-*'))


def test_numpy_values_round_trip_through_a_plain_weights_only_file(tmp_path):
    """numpy arrays and scalars of any dtype, nested in containers, come
    back with their types, dtypes and values; what needs no change (a
    state dict and its ``_metadata``) is the caller's object."""
    values = dict(
        state_dict=torch.nn.BatchNorm2d(2).state_dict(),
        numpy_rng=np.random.get_state(),
        scalars=[np.float32(0.1),
                 np.bool_(True), np.int64(-3)],
        zero_d=np.array(7, dtype=np.int16),
        nested={'pair': (np.float64(1.5), 'text', None)})
    raw, stored = str(tmp_path / 'raw.pth'), str(tmp_path / 'stored.pth')
    torch.save(values, raw)
    with pytest.raises(pickle.UnpicklingError):
        plain_torch_load(raw)
    plain = to_weights_only(values)
    assert plain['state_dict'] is values['state_dict']
    torch.save(plain, stored)
    restored = from_weights_only(plain_torch_load(stored))
    assert_same(restored, values)
    assert restored['state_dict']._metadata == \
        values['state_dict']._metadata
