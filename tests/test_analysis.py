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


def test_the_codebases_counter_counts_attention():
    """mmengine's get_model_complexity_info, which the get_flops.py tools of
    mmpretrain, mmseg and mmdet call, gives our 3.585G for the L2
    classifier: ``import mmfca`` adds the handle of
    scaled_dot_product_attention to its default tables."""
    from mmengine.analysis import FlopAnalyzer, get_model_complexity_info

    from mmfca.utils import complexity
    model = build_model(
        load_config(os.path.join(REPO, 'configs/fcaformer_l2_in1k.py')))
    model.eval()
    images = torch.randn(1, 3, 224, 224)
    upstream = get_model_complexity_info(
        TensorForward(model),
        inputs=(images, ),
        show_table=False,
        show_arch=False)
    ours = complexity(model, images)['macs']
    assert upstream['flops'] == ours
    assert round(ours / 1e6) == 3585
    # By hand, q @ k^T and attn @ v per block: batch x heads x N x (N +
    # cross) x head dims x 2. L2 at 224x224: stage 3 is one 14x14 window
    # (N = 196), 10 heads of 32 channels, 7 blocks, 16 cross tokens from
    # each earlier block; stage 4 one 7x7 window (N = 49), 15 heads of 32,
    # 2 blocks, 4 cross tokens from each earlier block.
    stage3 = sum(10 * 196 * (196 + 16 * j) * 32 * 2 for j in range(7))
    stage4 = sum(15 * 49 * (49 + 4 * j) * 32 * 2 for j in range(2))
    assert stage3 + stage4 == 219_049_600
    analyzer = FlopAnalyzer(TensorForward(model), (images, ))
    analyzer.unsupported_ops_warnings(False)
    assert analyzer.by_operator()['scaled_dot_product_attention'] == \
        stage3 + stage4
    # The codebases' tools print it, so one block is restated too: the
    # fourth block of stage 3 attends to 196 + 3 * 16 keys.
    block = analyzer.by_module_and_operator(
    )['model.backbone.stages.2.blocks.3.attn']
    assert block['scaled_dot_product_attention'] == \
        10 * 196 * (196 + 48) * 32 * 2
