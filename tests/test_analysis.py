"""The tensor adapter of the analysis and export tools, and the block
profiler's clock."""
import os
import sys

import pytest
import torch

from mmfca.apis import build_model, load_config
from mmfca.models import FcaFormer
from mmfca.utils import TensorForward

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_tensor_forward_runs_a_segmentor_with_and_without_inference():
    cfg = load_config(
        os.path.join(REPO, 'configs/upernet_fcaformer_l2_160k_ade20k.py'))
    cfg.model.backbone.init_cfg = None
    cfg.model.test_cfg = dict(mode='whole')
    model = build_model(cfg).eval()
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = TensorForward(model)(images)
        resized = TensorForward(model, 'predict')(images)
        features = TensorForward(model, 'backbone')(images)
    # mode='tensor' is the decode head at 1/4 of the input; inference
    # resizes its logits to the image.
    assert logits.shape == (2, 150, 16, 24)
    assert resized.shape == (2, 150, 64, 96)
    torch.testing.assert_close(
        resized,
        torch.nn.functional.interpolate(
            logits, size=(64, 96), mode='bilinear', align_corners=False))
    assert [f.shape[1] for f in features] == [96, 192, 384, 768]
    with pytest.raises(ValueError, match="one of .*'predict'"):
        TensorForward(model, 'logits')


def test_block_profiler_times_the_real_forward_and_detaches():
    sys.path.insert(0, os.path.join(REPO, 'tools', 'analysis'))
    try:
        import profile_blocks
    finally:
        sys.path.pop(0)
    torch.manual_seed(0)
    model = FcaFormer('l1', out_indices=(0, 1, 2, 3)).eval()
    model.switch_to_deploy()
    images = torch.randn(1, 3, 100, 70)  # stage 3/4 windows padded
    clock = profile_blocks.PartClock(model)
    with torch.no_grad():
        expected = model(images)
        with clock.attached():
            outs = model(images)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    seconds = dict(clock.seconds)
    assert set(seconds) == set(profile_blocks.PARTS)
    assert all(value > 0 for value in seconds.values()), seconds
    blocks = [b for stage in model.stages[2:] for b in stage.blocks]
    # Detached: no instance wrapper, no hooks; a forward adds nothing.
    assert all('merge_and_enhance' not in vars(b) for b in blocks)
    with torch.no_grad():
        model(images)
    assert dict(clock.seconds) == seconds
