"""Shapes, options and bad input of the FcaFormer backbone."""
import copy
import math

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmfca.models import FcaFormer
from mmfca.models.layers.fast_paths import GeluLinear, LearnedBiasAttention
from mmfca.testing.autograd import autograd_node_names

# The hybrid archs (the plain 'l0' is tested with the classifiers).
WIDTHS = {
    name: arch['channels']
    for name, arch in FcaFormer.arch_zoo.items() if name != 'l0'
}


@pytest.mark.parametrize('arch', sorted(WIDTHS))
@pytest.mark.parametrize('size', [(64, 64), (97, 131), (224, 224)])
def test_output_shapes_and_strides(arch, size):
    model = FcaFormer(arch, out_indices=(0, 1, 2, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert len(outs) == 4
    height, width = size
    for i, out in enumerate(outs):
        stride = 4 * 2**i
        expected = (1, WIDTHS[arch][i], math.ceil(height / stride),
                    math.ceil(width / stride))
        # Every conv has padding k // 2, so each stride-2 step rounds up.
        assert tuple(out.shape) == expected, (i, out.shape, expected)


@pytest.mark.parametrize('size', [(500, 376), (1333 // 4, 800 // 4)])
def test_dense_sizes_with_widened_outputs(size):
    model = FcaFormer(
        'l1', out_indices=(1, 3), out_channels=(32, 64, 96, 128)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert [o.shape[1] for o in outs] == [64, 128]
    assert outs[1].shape[-2:] == (math.ceil(size[0] / 32),
                                  math.ceil(size[1] / 32))


def test_arch_is_case_insensitive_and_custom_dicts_work():
    assert FcaFormer('L2').channels == FcaFormer('l2').channels
    custom = FcaFormer(
        dict(
            channels=(16, 32, 48, 64),
            depths=(1, 1, 3, 2),
            num_heads=(0, 0, 2, 4)),
        out_indices=(3, ))
    assert custom(torch.randn(1, 3, 64, 64))[0].shape == (1, 64, 2, 2)


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='l5'),
     "Unknown FcaFormer arch 'l5'.*'l0', 'l1', 'l2', 'l3', 'l4'"),
    (dict(arch=dict(channels=(8, 16, 24, 32), depths=(1, 1, 1, 1))),
     'needs exactly the keys'),
    (dict(
        arch=dict(
            channels=(8, 16, 24, 30),
            depths=(1, 1, 1, 1),
            num_heads=(0, 0, 2, 4))), '30 channels cannot be split'),
    (dict(window_size=(14, 0)), 'window_size must be'),
    (dict(out_indices=(4, )), r'out_indices entries must be in \[-4, 3\]'),
    (dict(out_channels=(96, 192)), 'out_channels needs one entry per stage'),
    (dict(frozen_stages=7), r'frozen_stages .* must be in \[0, 4\] for this '
     r'arch, got 7'),
    (dict(frozen_stages=-1), r'must be in \[0, 4\].*got -1'),
    (dict(arch='l0', frozen_stages=2), r'must be in \[0, 1\].*got 2'),
    (dict(drop_path_rate=1.5), r'drop_path_rate .* must be in \[0, 1\), got '
     r'1\.5'),
    (dict(drop_path_rate=-0.1), r'drop_path_rate .*got -0\.1'),
    (dict(mlp_ratio=0), 'mlp_ratio .* must be positive, got 0'),
])
def test_bad_arguments_fail_clearly(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FcaFormer(**kwargs)


@pytest.mark.parametrize('shape, message', [
    ((2, 224), '4-D tensor'),
    ((1, 1, 64, 64), 'built for 3 input channels but got 1'),
])
def test_bad_input_fails_before_any_layer(shape, message):
    model = FcaFormer('l1')
    with pytest.raises(ValueError, match=message):
        model(torch.randn(*shape))


def test_a_batch_of_another_dtype_is_refused_naming_both():
    model = FcaFormer('l1')
    for dtype in (torch.float64, torch.uint8):
        images = torch.zeros(1, 3, 64, 64, dtype=dtype)
        with pytest.raises(
                TypeError,
                match=rf"weights are torch.float32 but the images are "
                rf"{dtype}: convert the batch \(x.to\(torch.float32\)\)"):
            model(images)
    # Under autocast the model takes what autocast casts, as ever.
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outs = model(torch.zeros(1, 3, 64, 64, dtype=torch.bfloat16))
    assert outs[0].shape == (1, 320, 2, 2)
    # A float64 model takes float64 images.
    assert model.double()(torch.zeros(
        1, 3, 64, 64, dtype=torch.float64))[0].isfinite().all()


def test_gradients_reach_every_parameter():
    model = FcaFormer(
        'l1',
        out_indices=(0, 1, 2, 3),
        out_channels=(32, 64, 96, 128),
        layer_scale_init_value=1.0)
    model.init_weights()
    model.train()
    outs = model(torch.randn(2, 3, 80, 72))
    sum(o.square().mean() for o in outs).backward()
    without = [
        n for n, p in model.named_parameters()
        if p.grad is None or p.grad.abs().sum() == 0
    ]
    assert not without, without
    attn = model.stages[2].blocks[3].attn
    assert attn.cross_scale.grad.abs().sum() > 0
    assert attn.depth_bias.grad.abs().sum() > 0
    assert attn.position_bias.grad.abs().sum() > 0


def test_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = FcaFormer('l1', out_indices=(2, 3), layer_scale_init_value=1.0)
    plain.init_weights()
    ckpt = copy.deepcopy(plain)
    for stage in ckpt.stages[2:]:
        for block in stage.blocks:
            block.grad_checkpointing = True
    for stage in ckpt.stages[:2]:
        for block in stage:
            block.grad_checkpointing = True
    x = torch.randn(2, 3, 96, 80)
    grads = []
    for model in (plain, ckpt):
        model.train()
        sum(o.sum() for o in model(x)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_with_cp_option_reaches_every_block():
    model = FcaFormer('l1', with_cp=True)
    assert all(block.grad_checkpointing for block in model.stages[0])
    assert all(block.grad_checkpointing for stage in model.stages[2:]
               for block in stage.blocks)


def test_frozen_stages_do_not_change():
    model = FcaFormer(
        'l1',
        out_indices=(0, 1, 2, 3),
        frozen_stages=2,
        drop_path_rate=0.1,
        layer_scale_init_value=1.0)
    model.init_weights()
    model.train()
    frozen = [
        model.downsample_layers[0], model.downsample_layers[1],
        model.stages[0], model.stages[1], model.norm0, model.norm1
    ]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.stages[2].parameters())
    assert not model.downsample_layers[0].training
    before = copy.deepcopy(model.state_dict())
    optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad],
                            lr=0.1)
    sum(o.mean() for o in model(torch.randn(2, 3, 64, 64))).backward()
    optim.step()
    after = model.state_dict()
    for name in before:
        if name.startswith(('downsample_layers.0.', 'downsample_layers.1.',
                            'stages.0.', 'stages.1.')):
            # BN running statistics included: frozen stages run in eval.
            assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before['stages.2.blocks.0.attn.qkv.weight'],
                           after['stages.2.blocks.0.attn.qkv.weight'])


def test_norm_eval_keeps_batchnorm_statistics():
    model = FcaFormer('l1', norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not bn.training for bn in bns)
    before = bns[-1].running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, bns[-1].running_mean)


def test_drop_path_and_layer_scale_options():
    model = FcaFormer('l1', drop_path_rate=0.2, layer_scale_init_value=0.5)
    last = model.stages[3].blocks[-1]
    assert last.drop_path.drop_prob == pytest.approx(0.2)
    assert torch.all(last.ls1.weight == 0.5)
    assert torch.all(model.stages[0][0].gamma == 0.5)


def test_last_block_of_a_stage_makes_no_cross_tokens():
    model = FcaFormer('l2')
    blocks = model.stages[2].blocks
    assert blocks[-1].cross_token_conv is None
    assert all(b.cross_token_conv is not None for b in blocks[:-1])
    # Block i attends to i * ceil(14 / 4)^2 cross tokens.
    assert [b.attn.num_cross_tokens
            for b in blocks] == [16 * i for i in range(7)]


def test_gradients_of_a_batch_are_the_mean_of_its_images():
    """Training on a batch equals averaging per-image gradients, also when
    a batch of one image is a single (padded) attention window (96x96:
    stage maps 6x6 and 3x3 in windows of 14 and 7). A two-process run
    relies on it."""
    torch.manual_seed(0)
    model = FcaFormer(
        'l1',
        out_indices=(0, 1, 2, 3),
        layer_scale_init_value=1.0,
        norm_eval=True).train()
    x = torch.randn(2, 3, 96, 96)

    def gradients(images):
        model.zero_grad()
        sum(o.pow(2).mean() for o in model(images)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    both = gradients(x)
    first, second = gradients(x[:1]), gradients(x[1:])
    for name, grad in both.items():
        torch.testing.assert_close(
            grad, (first[name] + second[name]) / 2, msg=name)


def test_learned_bias_attention_gradients_are_the_math_paths():
    """The fused-forward, recomputing-backward attention used in CPU
    training gives the gradients of the attention formula written out
    (torch autograd through matmul and softmax), the bias gradient summed
    over the batch it was broadcast to."""
    torch.manual_seed(0)

    def formula(q, k, v, bias):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias
        return scores.softmax(-1) @ v

    # A batch of 3 windows shares the bias; a batch of one does not
    # broadcast it.
    for batch in (3, 1):
        q, k, v = (
            torch.randn(
                batch, 2, n, 4, dtype=torch.float64, requires_grad=True)
            for n in (5, 7, 7))
        bias = torch.randn(1, 2, 5, 7, dtype=torch.float64, requires_grad=True)
        weights = torch.randn(batch, 2, 5, 4, dtype=torch.float64)

        def grads(fn):
            out = fn(q, k, v, bias)
            return (out, ) + torch.autograd.grad((out * weights).sum(),
                                                 (q, k, v, bias))

        expected = grads(formula)
        for got, want in zip(grads(LearnedBiasAttention.apply), expected):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        assert torch.autograd.gradcheck(LearnedBiasAttention.apply,
                                        (q, k, v, bias))
    # Training FcaFormer on the CPU goes through it, once per FcaBlock.
    model = FcaFormer('l1', out_indices=(3, )).train()
    names = autograd_node_names(model(torch.randn(1, 3, 64, 64))[0])
    assert names.count('LearnedBiasAttentionBackward') == 8  # 6 + 2 blocks


def test_channel_mlps_train_without_keeping_the_gelu_output():
    """GeluLinear gives the gradients of ``fc2(GELU(h))`` written out
    (torch autograd), also for a frozen ``fc2`` and no bias, and every
    channel MLP of a training FcaFormer goes through it."""
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 5, 3, dtype=torch.float64)
    for inputs in [(hidden, weight, bias), (hidden, weight, None),
                   (hidden, weight.detach(), bias)]:
        wanted = [t for t in inputs if t is not None and t.requires_grad]

        def grads(fn):
            out = fn(*inputs)
            return (out, ) + torch.autograd.grad((out * weights).sum(), wanted)

        expected = grads(lambda h, w, b: torch.nn.functional.linear(
            torch.nn.functional.gelu(h), w, b))
        for got, want in zip(grads(GeluLinear.apply), expected):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        assert torch.autograd.gradcheck(GeluLinear.apply, inputs)

    model = FcaFormer('l1', out_indices=(3, )).train()
    names = autograd_node_names(model(torch.randn(1, 3, 64, 64))[0])
    # 2 + 2 ConvNeXt blocks and 6 + 2 FcaBlocks.
    assert names.count('GeluLinearBackward') == 12
