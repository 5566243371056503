"""The padded path of :class:`FcaStage` (maps that are not whole windows)
against the official computation, restated here: every block pads the map
with zeros (even blocks at the top-left, odd ones at the bottom-right),
partitions it into windows, runs on the windows (drop path drawn per
window), and the windows are put back and cropped."""
from typing import List

import pytest
import torch
import torch.nn.functional as F

from mmfca.models.layers import FcaStage

WINDOW = 7
CHANNELS = 16


def official_stage(stage: FcaStage, x: torch.Tensor) -> torch.Tensor:
    """The official loop over the blocks of a stage, on whole padded maps
    (the blocks' own window-token ``forward``)."""
    ws = stage.window_size
    batch, channels, height, width = x.shape
    pad_h, pad_w = -height % ws, -width % ws
    rows, cols = (height + pad_h) // ws, (width + pad_w) // ws
    cross_tokens: List[torch.Tensor] = []
    for i, block in enumerate(stage.blocks):
        top_left = i % 2 == 0
        pad = [pad_w, 0, pad_h, 0] if top_left else [0, pad_w, 0, pad_h]
        padded = F.pad(x, pad)
        windows = padded.reshape(batch, channels, rows, ws, cols, ws)
        windows = windows.permute(0, 2, 4, 3, 5,
                                  1).reshape(-1, ws * ws, channels)
        cross = torch.cat(cross_tokens, 1) if cross_tokens else None
        windows, new_cross = block(windows, cross)
        if new_cross is not None:
            cross_tokens.append(new_cross)
        padded = windows.reshape(batch, rows, cols, ws, ws, channels)
        padded = padded.permute(0, 5, 1, 3, 2,
                                4).reshape(batch, channels, rows * ws,
                                           cols * ws)
        if top_left:
            x = padded[:, :, pad_h:, pad_w:]
        else:
            x = padded[:, :, :height, :width]
    return x


def make_stage(depth: int = 3, drop_path: float = 0.) -> FcaStage:
    """A small float64 stage with random weights, batch statistics and
    visible (non-zero) layer scales and LSFs."""
    torch.manual_seed(0)
    stage = FcaStage(
        CHANNELS,
        depth,
        num_heads=2,
        window_size=WINDOW,
        drop_path_rates=[drop_path] * depth,
        layer_scale_init_value=0.5).double()
    with torch.no_grad():
        for name, param in stage.named_parameters():
            if 'ls' in name or 'norm' in name or 'cross_scale' in name:
                param.uniform_(0.5, 1.5)
            else:
                param.normal_(0, 0.3)
        for module in stage.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2)
    return stage


# Both alignments at each size (even and odd blocks); sizes smaller than
# a window, whole in one direction only, and odd in both.
SIZES = [(9, 11), (5, 3), (14, 10), (16, 13)]


@pytest.mark.parametrize('size', SIZES)
def test_eval_outputs_equal_the_official_padding(size):
    stage = make_stage().eval()
    x = torch.randn(2, CHANNELS, *size, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(
            stage(x), official_stage(stage, x), rtol=0, atol=1e-12)


def run_with_gradients(fn, stage, x, seed):
    """Outputs and gradients (input and parameters) of a weighted sum of
    the outputs, with the generator seeded for drop path."""
    stage.zero_grad()
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)
    out = fn(stage, x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype)
    (out.flatten() * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in stage.named_parameters()}
    grads['input'] = x.grad
    return out.detach(), grads


@pytest.mark.parametrize('checkpointing', [False, True])
@pytest.mark.parametrize('size', [(9, 11), (16, 13)])
def test_training_with_drop_path_equals_the_official_padding(
        size, checkpointing):
    """Drop path is drawn once per window in both the attention and the
    FFN branch, as the official block applied to the window batch: with
    the same generator state, the same windows are dropped. BatchNorm uses
    batch statistics over the padded windows. Gradient checkpointing
    recomputes both parts with the same draws."""
    stage = make_stage(drop_path=0.5).train()
    x = torch.randn(3, CHANNELS, *size, dtype=torch.float64)
    expected, expected_grads = run_with_gradients(
        lambda s, t: official_stage(s, t), stage, x, seed=5)
    for block in stage.blocks:
        block.grad_checkpointing = checkpointing
    out, grads = run_with_gradients(lambda s, t: s(t), stage, x, seed=5)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert grads.keys() == expected_grads.keys()
    for name, grad in expected_grads.items():
        torch.testing.assert_close(
            grads[name], grad, rtol=0, atol=1e-10, msg=name)
    # The draws matter: another generator state drops other windows.
    other, _ = run_with_gradients(lambda s, t: s(t), stage, x, seed=6)
    assert not torch.allclose(other, out)


@pytest.mark.parametrize('size', [(5, 3), (9, 11)])
def test_gradients_of_one_image_with_frozen_batchnorm(size):
    """Training with frozen BatchNorm statistics (``norm_eval``) on one
    image: at 5x3 the whole batch is one window. torch 2.14's CPU
    BatchNorm computes wrong input gradients for the batch-1 gradient
    layout that a transpose view gives, so this failed while the outputs
    were right."""
    stage = make_stage().eval()
    x = torch.randn(1, CHANNELS, *size, dtype=torch.float64)
    expected, expected_grads = run_with_gradients(
        lambda s, t: official_stage(s, t), stage, x, seed=0)
    out, grads = run_with_gradients(lambda s, t: s(t), stage, x, seed=0)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(
            grads[name], grad, rtol=0, atol=1e-10, msg=name)


def test_scripted_and_fx_traced_stages_serve_any_size():
    """TorchScript and torch.fx take the padded path with indices built
    from the input size: one graph for whole and padded windows."""
    stage = make_stage().eval()
    scripted = torch.jit.script(stage)
    traced = torch.fx.symbolic_trace(stage)
    with torch.no_grad():
        for size in [(9, 11), (14, 14), (16, 13)]:
            x = torch.randn(1, CHANNELS, *size, dtype=torch.float64)
            expected = official_stage(stage, x)
            torch.testing.assert_close(
                scripted(x), expected, rtol=0, atol=1e-12)
            torch.testing.assert_close(traced(x), expected, rtol=0, atol=1e-12)


def test_indices_cached_under_inference_mode_serve_training():
    """The window indices are cached per map size; those first made under
    ``torch.inference_mode`` are ordinary tensors that autograd may save."""
    stage = make_stage().eval()
    x = torch.randn(1, CHANNELS, 11, 9, dtype=torch.float64)
    with torch.inference_mode():
        stage(x)
    stage.train()
    stage(x.requires_grad_()).sum().backward()
    assert x.grad is not None
