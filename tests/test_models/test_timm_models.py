"""timm's model contract for ``fcaformer_l0`` ... ``fcaformer_l4``: what
``timm.create_model`` users and timm's tools (features_only, TorchScript,
torch.fx, optimizer groups) rely on. Expected values come from the arch
table of the paper, the official evaluation recipe, the functional
restatements in ``reference.py`` and eager PyTorch."""
import contextlib
import io
import logging

import pytest
import timm
import torch
import torch.fx
from reference import perturb_weights, reference_plain_forward
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import group_parameters

from mmfca.models import FcaFormer

HYBRIDS = ['fcaformer_l1', 'fcaformer_l2', 'fcaformer_l3', 'fcaformer_l4']
ALL = ['fcaformer_l0'] + HYBRIDS
# The paper's stage widths (Table 2 / the official model definitions).
WIDTHS = {
    'fcaformer_l1': (64, 128, 192, 320),
    'fcaformer_l2': (96, 192, 320, 480),
    'fcaformer_l3': (96, 192, 320, 512),
    'fcaformer_l4': (128, 256, 512, 768),
}


@pytest.fixture(scope='module')
def l1():
    torch.manual_seed(0)
    return perturb_weights(timm.create_model('fcaformer_l1'), seed=1).eval()


@pytest.fixture(scope='module')
def l0():
    torch.manual_seed(0)
    return perturb_weights(timm.create_model('fcaformer_l0'), seed=1).eval()


@pytest.mark.parametrize('name', ALL)
def test_create_model_is_silent_and_builds_on_the_requested_device(name):
    out, err = io.StringIO(), io.StringIO()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            model = timm.create_model(name, device='meta')
    finally:
        logging.getLogger().removeHandler(handler)
    assert out.getvalue() == err.getvalue() == '' and not records
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(t.device.type == 'meta' for t in tensors)
    with pytest.raises(TypeError):
        timm.create_model(name, device='meta', not_an_argument=1)


@pytest.mark.parametrize('name', ALL)
def test_pretrained_cfg_is_the_official_evaluation(name):
    """The official eval: resize to 224 / 0.875, bicubic, centre crop 224,
    ImageNet mean and std (image_classification/datasets.py)."""
    cfg = timm.create_model(name, device='meta').pretrained_cfg
    assert cfg['input_size'] == (3, 224, 224)
    assert cfg['crop_pct'] == 224 / 256
    assert cfg['interpolation'] == 'bicubic'
    assert cfg['mean'] == IMAGENET_DEFAULT_MEAN
    assert cfg['std'] == IMAGENET_DEFAULT_STD
    state = timm.create_model(name, device='meta').state_dict()
    assert cfg['first_conv'] + '.weight' in state
    assert cfg['classifier'] + '.weight' in state


@pytest.mark.parametrize('name', HYBRIDS)
def test_feature_info_follows_the_arch(name):
    model = timm.create_model(name, device='meta')
    assert [f['num_chs'] for f in model.feature_info] == list(WIDTHS[name])
    assert [f['reduction'] for f in model.feature_info] == [4, 8, 16, 32]
    assert model.num_features == model.head_hidden_size == WIDTHS[name][-1]


def test_plain_model_matches_the_restatement(l0):
    """L0: DeiT's head on the class token, in float64 against the
    functional restatement (backbone names of the OpenMMLab model)."""
    model = l0.double()
    try:
        state = {
            (k if k.startswith('head.') else f'backbone.{k}').replace(
                'backbone.norm.', 'backbone.norm0.'):
            v
            for k, v in model.state_dict().items()
        }
        backbone = {
            k[len('backbone.'):]: v
            for k, v in state.items() if k.startswith('backbone.')
        }
        x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
        with torch.no_grad():
            tokens = model.forward_head(model.forward_features(x), True)
            logits = model(x)
        expected = reference_plain_forward(backbone, x)
        torch.testing.assert_close(tokens, expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(
            logits,
            expected @ state['head.weight'].T + state['head.bias'],
            rtol=1e-9,
            atol=1e-9)
    finally:
        model.float()


def test_weights_round_trip_between_timm_and_openmmlab(l1, tmp_path):
    """A timm state dict, and the OpenMMLab backbone + head holding the same
    weights, load into timm's model through ``pretrained_cfg_overlay``."""
    path = tmp_path / 'timm_l1.pth'
    torch.save(l1.state_dict(), path)
    again = timm.create_model(
        'fcaformer_l1',
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 160, 96)
    with torch.no_grad():
        torch.testing.assert_close(again(x), l1(x), rtol=0, atol=0)

    backbone = FcaFormer('l1', gap_before_final_norm=True)
    state = l1.state_dict()
    backbone.load_state_dict(
        {
            k.replace('head.norm.', 'norm3.'): v
            for k, v in state.items() if not k.startswith('head.fc.')
        },
        strict=True)
    backbone.eval()
    with torch.no_grad():
        pooled, = backbone(x)
        torch.testing.assert_close(
            l1.forward_head(l1.forward_features(x), pre_logits=True), pooled)
        mm_state = {
            f'backbone.{k}': v
            for k, v in backbone.state_dict().items()
        }
    mm_state.update({
        k: v
        for k, v in state.items() if k.startswith('head.fc.')
    })
    path = tmp_path / 'mmfca_l1.pth'
    torch.save(dict(state_dict=mm_state, meta=dict()), path)
    from_mm = timm.create_model(
        'fcaformer_l1',
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path))).eval()
    with torch.no_grad():
        torch.testing.assert_close(from_mm(x), l1(x), rtol=0, atol=0)


def test_pooling_and_classifier_resets(l1):
    model = timm.create_model('fcaformer_l1').eval()
    model.load_state_dict(l1.state_dict())
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert features.shape == (2, 320, 4, 3)
        # pool -> LayerNorm (the official head), by hand.
        expected = torch.nn.functional.layer_norm(
            features.mean((2, 3)), (320, ), model.head.norm.weight,
            model.head.norm.bias, 1e-5)
        torch.testing.assert_close(pre_logits, expected)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre_logits)
        model.reset_classifier(0, '')
        unpooled = model(x)
        assert unpooled.shape == (2, 320, 4, 3)
        torch.testing.assert_close(
            unpooled.mean((2, 3)).shape, pre_logits.shape)
        model.reset_classifier(10)
        assert model(x).shape == (2, 10, 4, 3)
    built = timm.create_model('fcaformer_l1', num_classes=0, global_pool='')
    assert built.eval()(x).shape == (2, 320, 4, 3)


def test_plain_model_pooling(l0):
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = l0.forward_features(x)
        assert tokens.shape == (1, 197, 192)
        model = timm.create_model('fcaformer_l0', global_pool='avg').eval()
        model.load_state_dict(l0.state_dict())
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), tokens[:, 1:].mean(1))
        model.reset_classifier(0, '')
        torch.testing.assert_close(model(x), tokens)
    with pytest.raises(ValueError, match="global_pool must be one of"):
        timm.create_model('fcaformer_l0', global_pool='max')


def test_features_only_and_intermediates(l1):
    x = torch.randn(1, 3, 96, 64)
    features = timm.create_model('fcaformer_l1', features_only=True)
    # features_only prunes the head (pool, norm and classifier).
    features.model.load_state_dict({
        k: v
        for k, v in l1.state_dict().items() if not k.startswith('head.')
    })
    with torch.no_grad():
        outs = features.eval()(x)
        stages = l1.forward_intermediates(x, intermediates_only=True)
        final, taps = l1.forward_intermediates(x)
        early = l1.forward_intermediates(
            x, indices=[1], stop_early=True, intermediates_only=True)
        torch.testing.assert_close(final, l1.forward_features(x))
    assert [tuple(o.shape) for o in outs] == [(1, 64, 24, 16), (1, 128, 12, 8),
                                              (1, 192, 6, 4), (1, 320, 3, 2)]
    for out, stage, tap in zip(outs, stages, taps):
        torch.testing.assert_close(out, stage)
        torch.testing.assert_close(out, tap)
    torch.testing.assert_close(early[0], stages[1])


def test_pruning_removes_the_unused_layers(l1, l0):
    model = timm.create_model('fcaformer_l1').eval()
    model.load_state_dict(l1.state_dict())
    assert model.prune_intermediate_layers([1]) == [1]
    assert len(model.stages) == len(model.downsample_layers) == 2
    assert not any(
        k.startswith(('stages.2', 'head.fc')) for k in model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tap, = model.forward_intermediates(x, [1], intermediates_only=True)
        torch.testing.assert_close(
            tap,
            l1.forward_intermediates(x, [1], intermediates_only=True)[0])

    plain = timm.create_model('fcaformer_l0').eval()
    plain.load_state_dict(l0.state_dict())
    plain.prune_intermediate_layers([4])
    assert len(plain.stages[0].blocks) == 5
    assert plain.stages[0].blocks[-1].cross_token_conv is None
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tap, = plain.forward_intermediates(x, [4], intermediates_only=True)
        full = l0.forward_intermediates(x, intermediates_only=True)
    assert tap.shape == (1, 192, 14, 14) and len(full) == 12
    torch.testing.assert_close(tap, full[4])


@pytest.mark.parametrize('size', [224, 128])
def test_torchscript_matches_eager(l1, size):
    """224: whole windows; 128: stage maps of 8x8 and 4x4, padded."""
    scripted = torch.jit.script(l1)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), l1(x), rtol=0, atol=0)


def test_torchscript_plain_model(l0):
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            torch.jit.script(l0)(x), l0(x), rtol=0, atol=0)


def test_fx_trace_forward_and_backward(l1):
    """Symbolic tracing records the padded path with the padding as
    arithmetic on the input size: one graph serves whole and padded
    windows; gradients reach every parameter."""
    graph = torch.fx.symbolic_trace(l1)
    for shape in [(1, 3, 224, 224), (1, 3, 128, 160)]:
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(graph(x), l1(x))
    model = timm.create_model('fcaformer_l1', num_classes=7).train()
    traced = torch.fx.symbolic_trace(model)
    traced(torch.randn(2, 3, 96, 96)).mean().backward()
    assert all(p.grad is not None for p in traced.parameters())


def test_grad_checkpointing_keeps_outputs_and_gradients(l1):
    model = timm.create_model('fcaformer_l1', num_classes=5)
    model.load_state_dict(
        {
            k: v
            for k, v in l1.state_dict().items() if not k.startswith('head.fc')
        },
        strict=False)
    x = torch.randn(2, 3, 96, 96)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        model.train()(x).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


@pytest.mark.parametrize('name', ['fcaformer_l0', 'fcaformer_l1'])
def test_optimizer_groups_and_no_weight_decay(name):
    model = timm.create_model(name, device='meta')
    names = {n for n, _ in model.named_parameters()}
    assert model.no_weight_decay() <= names
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse))
        grouped = [n for members in groups.values() for n in members]
        assert sorted(grouped) == sorted(names)
        assert len(groups) > 1


@pytest.mark.parametrize('name', ['fcaformer_l0', 'fcaformer_l1'])
def test_a_new_classifier_follows_the_model(name):
    """Device, dtype and train/eval mode of the model it joins."""
    model = timm.create_model(name, device='meta').eval().double()
    model.reset_classifier(3)
    head = model.get_classifier()
    assert all(p.device.type == 'meta' and p.dtype == torch.float64
               for p in head.parameters())
    assert not any(m.training for m in model.modules())
