"""Loading FcaFormer weights in each layout, and refusing bad files."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
from conftest import L2_DENSE_WIDTHS
from mmengine.runner import load_checkpoint
from reference import reference_forward

from mmfca.models import FcaFormer
from mmfca.models.checkpoint import convert_official_keys
from mmfca.runtime import build_model, load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pretrained(path, arch='l2', **kwargs):
    init = dict(type='Pretrained', checkpoint=path)
    init.update({k: kwargs.pop(k) for k in ('prefix', 'use_ema')
                 if k in kwargs})
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
    model = pretrained(ckpt['path'], out_indices=(0, 1, 2, 3),
                       out_channels=L2_DENSE_WIDTHS, prefix=prefix)
    assert_backbone_equals(model, ckpt['model'])
    report = model.load_report
    # Every backbone tensor came from the file; only the new output
    # projections did not, and the classifier's ending was not used.
    assert not report['missing']
    assert sorted({k.split('.')[0] for k in report['new_outputs']}) == [
        'proj0', 'proj1', 'proj2', 'proj3'
    ]
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
    model = pretrained(official_dense_l2['path'], out_indices=(0, 1, 2, 3),
                       out_channels=L2_DENSE_WIDTHS, prefix='backbone.')
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
    ema = {f'module.{k}': v + 1 for k, v in state.items()
           if v.is_floating_point()}
    ema['steps'] = torch.tensor(5)
    path = str(tmp_path / 'ours.pth')
    torch.save(dict(state_dict=state, ema_state_dict=ema, meta={}), path)

    model = pretrained(path, arch='l1', out_indices=(3, ),
                       prefix='backbone.')
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    ema_model = pretrained(path, arch='l1', out_indices=(3, ),
                           use_ema=True)
    weight = 'stages.2.blocks.0.attn.qkv.weight'
    assert torch.equal(ema_model.state_dict()[weight],
                       source.state_dict()[weight] + 1)


def test_converted_checkpoint_loads_strictly_into_the_classifier_config(
        official_cls, tmp_path):
    ckpt = official_cls['l1']
    dst = str(tmp_path / 'converted.pth')
    subprocess.run([
        sys.executable,
        os.path.join(REPO, 'tools/model_converters/official_to_mmfca.py'),
        ckpt['path'], dst
    ], check=True, capture_output=True)
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
    with pytest.raises(ValueError, match='stage 3 tables are for window 14'
                       '.*uses 12'):
        pretrained(official_dense_l2['path'], window_size=(12, 7),
                   prefix='backbone.')


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
    model = FcaFormer('l1', init_cfg=dict(
        type='Pretrained', checkpoint=official_cls['l1']['path'], ema=True))
    with pytest.raises(ValueError, match=r"Unknown keys \['ema'\]"):
        model.init_weights()


def test_mmengine_checkpoints_load_under_weights_only(tmp_path):
    """What mmengine's Runner stores (history buffers, numpy values) loads
    with torch's weights_only default once mmfca is imported, and not
    without it."""
    from mmengine.logging import MessageHub
    import numpy as np
    hub = MessageHub.get_instance('mmfca_test')
    hub.update_scalar('train/loss', np.float64(0.5))
    hub.update_scalar('train/lr', 1e-3)
    path = str(tmp_path / 'iter_1.pth')
    torch.save(
        dict(
            meta=dict(seed=np.int64(3), epoch=1),
            state_dict={'w': torch.zeros(2)},
            message_hub=hub.state_dict()), path)
    loaded = torch.load(path)
    assert loaded['meta']['seed'] == 3
    code = ('import torch, pickle, sys\n'
            'try:\n'
            f'    torch.load({path!r})\n'
            'except pickle.UnpicklingError:\n'
            '    sys.exit(7)\n')
    result = subprocess.run([sys.executable, '-c', code])
    assert result.returncode == 7


class AsksForAnotherAttribute:
    """Pickles as ``getattr(HistoryBuffer, '__init__')``."""

    def __reduce__(self):
        from mmengine.logging.history_buffer import HistoryBuffer
        return getattr, (HistoryBuffer, '__init__')


def test_getattr_in_a_weights_file_resolves_only_statistics(tmp_path):
    path = str(tmp_path / 'getattr.pth')
    torch.save({'x': AsksForAnotherAttribute()}, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
