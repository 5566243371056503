"""mmfca gives the official outputs for official weights.

The reference (tests/reference.py) restates the official implementation
with an explicit softmax over a state dict in the official layout.
"""
import pytest
import torch
import torch.nn.functional as F
from conftest import L2_DENSE_WIDTHS
from reference import (ARCHS, OFFICIAL_PARAMS, official_shapes,
                       random_official_state_dict, reference_forward)

from mmfca.models import FcaFormer
from mmfca.models.utils.checkpoint import convert_official_keys


def classifier_backbone(arch, **kwargs):
    return FcaFormer(
        arch, out_indices=(3, ), gap_before_final_norm=True, **kwargs)


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_parameter_count_equals_official(arch):
    backbone = classifier_backbone(arch)
    head = backbone.channels[-1] * 1000 + 1000
    count = sum(p.numel() for p in backbone.parameters()) + head
    assert count == OFFICIAL_PARAMS[arch]


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_classifier_logits_match_official(arch):
    weights = random_official_state_dict(official_shapes(arch), seed=5)
    backbone, head, unknown = convert_official_keys(weights)
    assert not unknown
    model = classifier_backbone(arch)
    result = model.load_state_dict(backbone, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = F.linear(model(x)[0], head['fc.weight'], head['fc.bias'])
        expected = reference_forward(weights, arch, x)
    assert logits.abs().max() > 0.5  # weights large enough to matter
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize('size', [(224, 224), (64, 64), (100, 75), (160, 208),
                                  (250, 188)])
def test_dense_features_match_official(official_dense_l2, size):
    model = FcaFormer(
        'l2', out_indices=(0, 1, 2, 3), out_channels=L2_DENSE_WIDTHS)
    backbone, _, unknown = convert_official_keys(official_dense_l2['weights'])
    assert not unknown
    model.load_state_dict(backbone, strict=True)
    model.eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        outs = model(x)
        expected = reference_forward(official_dense_l2['weights'], 'l2', x)
    for out, ref in zip(outs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=2e-5)
