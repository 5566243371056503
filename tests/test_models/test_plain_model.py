"""FcaFormer-L0, the paper's plain model: DeiT-Tiny with FcaBlocks, keeping
DeiT's task head (class token, position embedding, head on the class
token)."""
import os

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from reference import perturb_weights, reference_plain_forward

from mmfca.apis import build_model, load_config
from mmfca.models import FcaFormer

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
L0_CONFIG = os.path.join(REPO, 'configs/fcaformer_l0_in1k.py')


@pytest.fixture(scope='module')
def l0_classifier():
    cfg = load_config(L0_CONFIG)
    return cfg, build_model(cfg)


def test_size_is_the_papers_and_the_head_is_deits(l0_classifier):
    """5.9M parameters (Table 1), and DeiT-Tiny's own class token, position
    embedding, patch embedding, final norm and head (timm's deit_tiny)."""
    import timm
    _, model = l0_classifier
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e6, 1) == 5.9, count
    deit = timm.create_model('deit_tiny_patch16_224').state_dict()
    ours = model.state_dict()
    pairs = {
        'backbone.cls_token': 'cls_token',
        'backbone.pos_embed': 'pos_embed',
        'backbone.downsample_layers.0.weight': 'patch_embed.proj.weight',
        'backbone.downsample_layers.0.bias': 'patch_embed.proj.bias',
        'backbone.norm0.weight': 'norm.weight',
        'head.fc.weight': 'head.weight',
        'head.fc.bias': 'head.bias',
    }
    for mine, theirs in pairs.items():
        assert ours[mine].shape == deit[theirs].shape, mine
    backbone = model.backbone
    assert backbone.window_size == (14, )
    assert [b.attn.num_cross_tokens
            for b in backbone.stages[0].blocks] == [16 * i for i in range(12)]


def test_outputs_follow_the_described_model():
    """Against a functional restatement: the class token attends with zero
    position bias and sees the cross tokens, skips TME, and its final norm
    is the output."""
    torch.manual_seed(0)
    model = perturb_weights(FcaFormer('l0', out_indices=(0, )), seed=1)
    # In float64, so that any difference is the model's, not rounding's.
    model.eval().double()
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        out, = model(x)
        expected = reference_plain_forward(model.state_dict(), x)
    assert out.shape == (2, 192)
    torch.testing.assert_close(out, expected, rtol=1e-9, atol=1e-9)


def test_class_token_needs_a_one_window_grid():
    model = FcaFormer('l0', out_indices=(0, ))
    with pytest.raises(ValueError, match=r'takes 224x224 images; got a 6x8'):
        model(torch.randn(1, 3, 100, 130))
    with pytest.raises(ValueError, match='outputs its class token'):
        FcaFormer('l0', gap_before_final_norm=True)


def test_config_is_deits_recipe(l0_classifier):
    """Repeated augmentation, no weight decay on the class token and the
    position embedding, and the model trains."""
    cfg, model = l0_classifier
    assert cfg.train_dataloader.sampler.type == 'RepeatAugSampler'
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    decay = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in wrapper.optimizer.param_groups:
        for param in group['params']:
            decay[names[id(param)]] = group['weight_decay']
    assert decay['backbone.cls_token'] == 0
    assert decay['backbone.pos_embed'] == 0
    assert decay['backbone.stages.0.blocks.0.ffn.fc1.weight'] == 0.05

    model.train()
    from mmpretrain.structures import DataSample
    samples = [DataSample().set_gt_label(1), DataSample().set_gt_label(2)]
    losses = model(torch.randn(2, 3, 224, 224), samples, mode='loss')
    sum(losses.values()).backward()
    backbone = model.backbone
    assert backbone.stages[0].blocks[5].attn.depth_bias.grad.abs().sum() > 0
    assert backbone.cls_token.grad.abs().sum() > 0
    assert backbone.pos_embed.grad.abs().sum() > 0
    assert backbone.get_layer_depth(
        'backbone.stages.0.blocks.5.ffn.fc1.weight', 'backbone.') == (6, 14)
    assert backbone.get_layer_depth('backbone.cls_token',
                                    'backbone.') == (0, 14)
