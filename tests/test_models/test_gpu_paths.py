"""What the GPU paths of the model core need, proved by proxy on a CPU.

* The attention mask is allocated with its key dimension rounded up to a
  multiple of 8 elements (every stride but the last a multiple of 8: what
  torch's memory-efficient CUDA kernel checks, padding an unaligned mask
  on every eager call and refusing it under ``torch.compile``), holds the
  official values, and reaches attention in the queries' dtype (CPU
  autocast to float16 and bfloat16) in training, eval and deploy mode.
* Deploy mode makes the mask once; outside it the mask is made from the
  tables on every call and so follows every update.
* Maps that are not whole windows train through the padded path on every
  device.
* Training forward and backward run on the ``meta`` device, where any
  host-device synchronisation (``.item()``, ``nonzero``, data-dependent
  shapes) fails.
* ``torch.compile``: one graph, no graph break, and no recompilation at a
  fixed size.
* The token <-> map conversions around the TME add no copies.
* Deploy mode folds ``cross_norm``'s affine into the cross tokens'
  key/value projection.
"""
import collections
import copy
import functools
from typing import Callable, Counter, List

import pytest
import timm
import torch
import torch.nn.functional as F

from mmfca.models.layers import (FcaBlock, FcaStage, ForwardCrossAttention,
                                 fold_for_inference, grid_to_map, map_to_grid)
from mmfca.models.layers.windows import cached_padded_window_index

META = torch.device('meta')
#: Elements per row (and per every stride but the last) of a mask that the
#: memory-efficient CUDA kernel takes as it is.
ALIGNMENT = 8

# (window, cross tokens, prefix tokens): L2's third stage (14x14 windows,
# 16 cross tokens per earlier block; keys 196 + 16 i), its fourth (7x7, 4
# per block; 49 + 4 i) and the plain L0 (a class token; 197 + 16 i).
MASK_LAYOUTS = [(14, 0, 0), (14, 16, 0), (14, 96, 0), (7, 0, 0), (7, 4, 0),
                (14, 0, 1), (14, 176, 1)]


def random_attention(window: int,
                     cross: int,
                     prefix: int = 0,
                     dtype: torch.dtype = torch.float64
                     ) -> ForwardCrossAttention:
    """An attention with random tables and weights (3 heads of 8)."""
    torch.manual_seed(0)
    attn = ForwardCrossAttention(24, 3, window, cross, prefix).to(dtype)
    with torch.no_grad():
        for param in attn.parameters():
            param.normal_()
    return attn


def restated_mask(attn: ForwardCrossAttention) -> torch.Tensor:
    """The official mask: the position table gathered at ``|dy| * ws +
    |dx|`` for every pair of window positions, zero rows and columns for
    prefix tokens, the depth bias of every cross token after it."""
    ws = attn.window_size
    rows = torch.arange(ws * ws) // ws
    cols = torch.arange(ws * ws) % ws
    dy = (rows[:, None] - rows[None]).abs()
    dx = (cols[:, None] - cols[None]).abs()
    index = dy * ws + dx
    prefix = attn.num_prefix_tokens
    mask = F.pad(attn.position_bias[:, index], [prefix, 0, prefix, 0])[None]
    if attn.depth_bias is None:
        return mask
    depth = attn.depth_bias.expand(-1, -1, mask.shape[2], -1)
    return torch.cat((mask, depth), dim=-1)


def assert_aligned(mask: torch.Tensor) -> None:
    assert mask.stride(-1) == 1, mask.stride()
    assert mask.stride(-2) % ALIGNMENT == 0, mask.stride()
    assert all(s % ALIGNMENT == 0 for s in mask.stride()[:-1]), mask.stride()


def tables(attn: ForwardCrossAttention) -> List[torch.Tensor]:
    return [t for t in (attn.position_bias, attn.depth_bias) if t is not None]


@pytest.mark.parametrize('window,cross,prefix', MASK_LAYOUTS)
def test_the_mask_is_the_official_one_in_aligned_memory(window, cross, prefix):
    attn = random_attention(window, cross, prefix)
    expected = restated_mask(attn)
    assert expected.shape[-1] % ALIGNMENT  # every layout needs the padding

    # Training: a view of the padded mask, which gradients flow through.
    mask = attn.train().attention_bias(torch.float64)
    assert mask.requires_grad and torch.equal(mask, expected)
    assert_aligned(mask)
    weights = torch.randn(expected.shape, dtype=torch.float64)
    grads = torch.autograd.grad((mask * weights).sum(), tables(attn))
    expected_grads = torch.autograd.grad((expected * weights).sum(),
                                         tables(attn))
    for grad, want in zip(grads, expected_grads):
        torch.testing.assert_close(grad, want, rtol=0, atol=1e-12)

    with torch.no_grad():
        mask = attn.eval().attention_bias(torch.float64)
    assert torch.equal(mask, expected)
    assert_aligned(mask)

    # Deploy mode, and after casting the module: the stored mask is the
    # padded one, sliced at use.
    fold_for_inference(attn)
    assert_aligned(attn.deploy_bias)
    mask = attn.attention_bias(torch.float64)
    assert torch.equal(mask, expected)
    assert_aligned(mask)
    attn.half()
    mask = attn.attention_bias(torch.float16)
    assert mask.dtype == torch.float16
    assert torch.equal(mask, expected.half())
    assert_aligned(mask)


def small_block(cross: int = 8) -> FcaBlock:
    """An FcaBlock of 7x7 windows with cross tokens of two earlier blocks,
    random weights and visible layer scales."""
    torch.manual_seed(0)
    block = FcaBlock(32, 2, 7, cross, True, layer_scale_init_value=0.5)
    with torch.no_grad():
        for name, param in block.named_parameters():
            if 'norm' in name or 'cross_scale' in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.3)
    return block


@pytest.fixture
def masks_seen(monkeypatch) -> List[tuple]:
    """The queries' dtype and the mask of every call of torch's attention
    (the fast path's autograd function calls it too)."""
    seen = []
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        seen.append((q.dtype, attn_mask))
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', recording)
    return seen


@pytest.mark.parametrize('mode', ['train', 'eval', 'deploy'])
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_the_mask_reaches_attention_in_the_query_dtype_and_aligned(
        masks_seen, dtype, mode):
    """A float32 mask with float16 / bfloat16 queries gave silently wrong
    results on cuDNN attention (PyTorch PR #191612): the mask is cast to
    the queries' dtype, and cast before it is sliced, so that the cast
    copy keeps the aligned rows."""
    block = small_block()
    expected = restated_mask(block.attn).detach().to(dtype)
    if mode == 'deploy':
        fold_for_inference(block)
    else:
        block.train(mode == 'train')
    x = torch.randn(2, 49, 32)
    cross = torch.randn(2, 8, 32)
    for _ in range(2):  # in eval mode, the second call's mask is kept
        with torch.autocast('cpu', dtype=dtype), \
                torch.set_grad_enabled(mode == 'train'):
            block(x, cross)
    assert len(masks_seen) == 2
    for query_dtype, mask in masks_seen:
        assert query_dtype == dtype and mask.dtype == dtype
        assert mask.requires_grad == (mode == 'train')
        assert torch.equal(mask, expected)
        assert_aligned(mask)


@pytest.mark.slow
def test_every_mask_of_a_training_model_is_aligned_under_autocast(masks_seen):
    """The whole L2 in training under float16 autocast, at a size that pads
    both attention stages: all 9 attentions."""
    model = timm.create_model('fcaformer_l2', num_classes=10).train()
    with torch.autocast('cpu', dtype=torch.float16):
        model(torch.randn(1, 3, 64, 64))
    assert len(masks_seen) == 9
    for query_dtype, mask in masks_seen:
        assert query_dtype == mask.dtype == torch.float16
        assert mask.requires_grad
        assert_aligned(mask)


def op_counts(fn: Callable[[], object]) -> Counter:
    """How often each operator ran in ``fn()`` (torch's profiler)."""
    with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return collections.Counter(event.name for event in prof.events())


def test_deploy_mode_gathers_no_table_per_call():
    """The mask of a deploy-mode model is made once (no gather, no cat of
    the tables per call); outside deploy mode it is made from the tables
    on every call, so that it can never be stale."""
    attn = random_attention(14, 16).eval()
    x = torch.randn(2, 196, 24, dtype=torch.float64)
    cross = torch.randn(2, 16, 24, dtype=torch.float64)
    with torch.no_grad():
        live = op_counts(lambda: attn(x, cross))
        attn.prepare_deploy()
        deployed = op_counts(lambda: attn(x, cross))
    assert live['aten::index'] == 1
    assert deployed['aten::index'] == 0
    # The cat of the cross keys and values stays; the mask's cat is gone.
    assert live['aten::cat'] - deployed['aten::cat'] == 1
    assert torch.equal(attn.attention_bias(torch.float64), restated_mask(attn))


def sgd_step(attn: ForwardCrossAttention) -> None:
    optimizer = torch.optim.SGD(attn.parameters(), lr=0.5, momentum=0.9)
    for param in attn.parameters():
        param.grad = torch.randn_like(param)
    optimizer.step()


def adamw_step(attn: ForwardCrossAttention, **kind) -> None:
    optimizer = torch.optim.AdamW(attn.parameters(), lr=0.5, **kind)
    for param in attn.parameters():
        param.grad = torch.randn_like(param)
    optimizer.step()


def fused_adamw_step(attn: ForwardCrossAttention) -> None:
    # torch 2.14's fused optimisers step without bumping version counters.
    attn.float()
    adamw_step(attn, fused=True)


def load_new_tables(attn: ForwardCrossAttention) -> None:
    state = attn.state_dict()
    for key in ('position_bias', 'depth_bias'):
        state[key] = torch.randn_like(state[key])
    attn.load_state_dict(state)


def replace_table(attn: ForwardCrossAttention) -> None:
    attn.position_bias.data = torch.randn_like(attn.position_bias)


def cast(attn: ForwardCrossAttention) -> None:
    attn.float()


UPDATES = dict(
    sgd=sgd_step,
    adamw=functools.partial(adamw_step, foreach=True),
    fused_adamw=fused_adamw_step,
    load_state_dict=load_new_tables,
    replaced=replace_table,
    cast=cast)


@pytest.mark.parametrize('update', list(UPDATES))
def test_the_eval_mask_follows_changes_of_the_tables(update):
    """In-place updates (an optimiser step, fused too, ``load_state_dict``),
    a table replaced (``.data =``) or cast, between two inference calls in
    eval mode with nothing else in between."""
    attn = random_attention(14, 16).eval()
    with torch.no_grad():
        before = attn.attention_bias(attn.position_bias.dtype).clone()
        UPDATES[update](attn)
        after = attn.attention_bias(attn.position_bias.dtype)
    assert not torch.equal(after.double(), before)
    assert torch.equal(after, restated_mask(attn))
    assert_aligned(after)


def fca_blocks(model: torch.nn.Module) -> List[FcaBlock]:
    return [m for m in model.modules() if isinstance(m, FcaBlock)]


@pytest.mark.parametrize('device', ['cpu', 'meta'])
def test_maps_that_are_not_whole_windows_train_through_the_padded_path(device):
    """The padded path (``FcaStage.forward`` with padded-window indices)
    runs in training on every device, with no per-device branch: at 96x96
    the L1's stage-3/4 maps (6x6, 3x3) are padded, at 224x224 they are
    whole windows. Its gradients equal the official padding's, restated in
    test_padded_windows.py
    (``test_training_with_drop_path_equals_the_official_padding``)."""
    model = timm.create_model(
        'fcaformer_l1', drop_path_rate=0.1, device=device).train()
    layouts = []
    for block in fca_blocks(model):
        block.register_forward_pre_hook(
            lambda module, args: layouts.append(args[2] is not None))
    for size, padded in [(96, True), (224, False)]:
        if device == 'cpu' and not padded:
            continue  # the meta device shows the branch at no cost
        layouts.clear()
        model.zero_grad()
        x = torch.randn(2, 3, size, size, device=device)
        model(x).sum().backward()
        assert layouts == [padded] * len(fca_blocks(model))
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and g.device.type == device for g in grads)


@pytest.mark.parametrize('checkpointing', [False, True])
@pytest.mark.parametrize('size', [224, 256])
@pytest.mark.parametrize('features_only', [False, True])
def test_training_runs_on_meta(features_only, size, checkpointing):
    """No host-device synchronisation in the forward or backward pass:
    the ``meta`` device has no values to read back, so any ``.item()``,
    ``nonzero`` or data-dependent shape fails there. 256 pads the
    stage-3/4 maps (16x16, 8x8) to windows."""
    model = timm.create_model(
        'fcaformer_l2',
        features_only=features_only,
        drop_path_rate=0.1,
        device='meta').train()
    if checkpointing:
        # features_only wraps the classifier (timm's FeatureGetterNet).
        getattr(model, 'model', model).set_grad_checkpointing(True)
    x = torch.randn(2, 3, size, size, device=META, requires_grad=True)
    outs = model(x)
    outs = outs if isinstance(outs, list) else [outs]
    sum(out.float().sum() for out in outs).backward()
    widths = (96, 192, 320, 480)
    expected = [(2, width, size // 4 >> i, size // 4 >> i)
                for i, width in enumerate(widths)]
    if not features_only:
        expected = [(2, 1000)]
    assert [tuple(out.shape) for out in outs] == expected
    assert x.grad is not None and x.grad.device == META
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.device == META for g in grads)


def compile_model(features_only: bool, train: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(
        'fcaformer_l2', features_only=features_only).train(train)


@pytest.mark.slow
@pytest.mark.parametrize('size', [224, 256])
@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('features_only', [False, True])
def test_torch_compile_records_one_graph(features_only, train, size):
    """No graph break in the classifier or the dense features model, in
    training and inference, at whole windows (224) and padded maps
    (256)."""
    model = compile_model(features_only, train)
    x = torch.randn(1, 3, size, size)
    torch._dynamo.reset()
    with torch.set_grad_enabled(train):
        explanation = torch._dynamo.explain(model)(x)
    reasons = [reason.reason for reason in explanation.break_reasons]
    print(f'features_only={features_only} train={train} {size}: '
          f'{explanation.graph_count} graph(s), '
          f'{explanation.graph_break_count} break(s)')
    assert explanation.graph_break_count == 0, reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('features_only', [False, True])
def test_torch_compile_does_not_recompile_at_a_fixed_size(
        features_only, train):
    from torch._dynamo.testing import CompileCounter
    model = compile_model(features_only, train)
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(
        model, backend=counter, dynamic=False, fullgraph=True)
    x = torch.randn(1, 3, 256, 256)
    with torch.set_grad_enabled(train):
        for _ in range(3):
            compiled(x)
    assert counter.frame_count == 1


def copy_counts(fn: Callable[[], object]) -> Counter:
    """The copies ``fn()`` makes, by kind: ``copy`` for every element-wise
    copy (``copy_``, which ``clone``, ``contiguous`` and materialising
    reshapes run) but the one CPU ``addmm`` makes of a linear layer's bias
    into its output before the product (a BLAS detail: the CUDA kernels and
    deploy mode's oneDNN call have none); ``cat`` and ``gather``
    (``index``, ``index_select``) for the tensors assembled."""
    with torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    counts: Counter = collections.Counter()
    for event in prof.events():
        parent = event.cpu_parent.name if event.cpu_parent else None
        if event.name == 'aten::copy_' and parent != 'aten::addmm':
            counts['copy'] += 1
        elif event.name == 'aten::cat':
            counts['cat'] += 1
        elif event.name in ('aten::index', 'aten::index_select'):
            counts['gather'] += 1
    return counts


def test_the_tme_layouts_are_views():
    tokens = torch.randn(3, 49, 16)
    fmap = grid_to_map(tokens, 7, 7)
    assert fmap.data_ptr() == tokens.data_ptr()
    assert fmap.is_contiguous(memory_format=torch.channels_last)
    again = map_to_grid(fmap)
    assert again.data_ptr() == tokens.data_ptr() and torch.equal(again, tokens)


@pytest.mark.parametrize('mode', ['eval', 'train', 'deploy'])
def test_copies_per_fca_block_forward(mode):
    """The copies of one FcaBlock forward, bounded by the design:

    * whole windows: no copy at all. The qkv split, the token <-> map
      conversions around the TME convolutions (channels-last views) and the
      attention output's head merge are views. The inherent assembly: two
      cats that append the cross tokens' keys and values to the window's
      (attention takes one key tensor), and in training the mask (one
      gather of the position table, one cat with the depth bias and the
      alignment padding; kept between calls in eval mode).
    * padded maps: one copy, the zero row that stands for every padded
      position (F.pad of the real tokens), and three gathers: the qkv and
      the tokens into windows, the real tokens back to map order. Training
      adds the drop path's per-window draw (a fourth gather) only where the
      block drops paths.
    """
    train = mode == 'train'
    block = small_block().train(train)
    if mode == 'deploy':
        block.attn.prepare_deploy()
    x = torch.randn(4, 49, 32)
    cross = torch.randn(4, 8, 32)
    mask = 0 if mode == 'deploy' else 1
    with torch.set_grad_enabled(train):
        block(x, cross)
        whole = copy_counts(lambda: block(x, cross))
        padded = cached_padded_window_index(9, 11, 7, True, x.device)
        real = torch.randn(1, 99, 32)
        padded_cross = torch.randn(4, 8, 32)
        block(real, padded_cross, padded)
        partial = copy_counts(lambda: block(real, padded_cross, padded))
    print(f'{mode}: whole windows {dict(whole)}, padded {dict(partial)}')
    assert whole == collections.Counter(cat=2 + mask, gather=mask, copy=0)
    assert partial == collections.Counter(
        copy=1, cat=2 + mask, gather=3 + mask)
    # Dropping paths adds the per-window draw in training.
    dropping = FcaBlock(32, 2, 7, 8, True, drop_path_rate=0.5).train(train)
    if mode == 'deploy':
        dropping.attn.prepare_deploy()
    with torch.set_grad_enabled(train):
        dropping(real, padded_cross, padded)
        drops = copy_counts(lambda: dropping(real, padded_cross, padded))
    assert drops['gather'] == partial['gather'] + (1 if train else 0)


def random_stage() -> FcaStage:
    """A float32 stage of 3 blocks with random weights, BN statistics and
    cross-norm affines far from (1, 0)."""
    torch.manual_seed(0)
    stage = FcaStage(32, 3, 2, 7, [0.] * 3, layer_scale_init_value=0.5)
    with torch.no_grad():
        for name, param in stage.named_parameters():
            if 'norm' in name and name.endswith('weight') or \
                    'cross_scale' in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.3)
        for module in stage.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2)
    return stage.eval()


def assert_deploy_matches(deployed: torch.nn.Module,
                          reference: torch.nn.Module) -> None:
    """The tolerances of the existing deploy tests: tests/test_deployment/
    test_deploy.py (max error / max output below 1e-5) and
    tests/test_models/test_fast_paths.py (rtol 1e-4, atol 1e-5)."""
    for size in [(14, 14), (9, 11)]:
        x = torch.randn(2, 32, *size)
        with torch.no_grad():
            want, got = reference(x), deployed(x)
        assert float((got - want).abs().max() / want.abs().max()) < 1e-5
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def cross_attentions(module: torch.nn.Module) -> List[ForwardCrossAttention]:
    return [
        m for m in module.modules()
        if isinstance(m, ForwardCrossAttention) and m.cross_norm is not None
    ]


def test_deploy_folds_the_cross_norm_affine_into_the_projection():
    """``W' = W_kv * gamma`` and ``b' = W_kv beta + b_kv`` (restated in
    float64); the deployed attention normalises without the affine."""
    stage = random_stage()
    deployed = fold_for_inference(copy.deepcopy(stage))
    attns = cross_attentions(deployed)
    assert len(attns) == 2
    for attn in attns:
        weight = attn.qkv.weight[32:].double()
        gamma = attn.cross_norm.weight.double()
        beta = attn.cross_norm.bias.double()
        torch.testing.assert_close(attn.deploy_cross_weight.double(),
                                   weight * gamma)
        torch.testing.assert_close(attn.deploy_cross_bias.double(),
                                   weight @ beta + attn.qkv.bias[32:].double())
    calls = []
    for attn in attns:
        attn.cross_norm.register_forward_hook(lambda *args: calls.append(args))
    assert_deploy_matches(deployed, stage)
    assert not calls


def test_the_folded_projection_follows_loaded_weights():
    """New weights for a deployed stage (qkv, cross_norm and the tables
    loaded): what deploy mode precomputed follows them, after the
    submodules have loaded."""
    stage = random_stage()
    deployed = fold_for_inference(copy.deepcopy(stage))
    state = deployed.state_dict()
    for key in state:
        if key.endswith(('qkv.weight', 'cross_norm.weight', 'cross_norm.bias',
                         'position_bias', 'depth_bias')):
            state[key] = state[key] + 0.3 * torch.randn_like(state[key])
    deployed.load_state_dict(state)
    # The reference: the eval-mode stage with the same attention weights.
    for want, got in zip(stage.blocks, deployed.blocks):
        want.attn.load_state_dict(got.attn.state_dict())
    for attn in cross_attentions(deployed):
        torch.testing.assert_close(attn.deploy_cross_weight,
                                   attn.folded_cross_projection()[0])
    assert_deploy_matches(deployed, stage)
