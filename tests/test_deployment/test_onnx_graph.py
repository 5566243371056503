"""The graph of the dynamo ONNX export in deploy form, for ONNX Runtime.

* Inside :func:`~mmfca.models.layers.deploy.onnx_export_form`, every
  attention is one ONNX Attention node (opset 23) on ``(B, tokens, C)``
  tensors whose mask is an initializer of its real length; the branch
  gives the values of torch's attention (the operator's eager
  implementation), and neither the TorchScript-based exporter nor a plain
  torch.export takes it.
* A fixed-size export of whole windows keeps them (no Pad, no Gather).
* It folds every layer scale into the linear layer before it, and puts
  the model back on leaving.
* The files match PyTorch (ORT, classifier and dense backbone, whole and
  padded windows, batch 1 and 2; the legacy dynamic file at several
  sizes).

The expected node counts are restated from the arch table
(:data:`~mmfca.models.layers.FCAFORMER_ARCHS`), not read from an export.
"""
import copy
import math
import warnings
from collections import Counter

import numpy as np
import pytest
import timm
import torch

from mmfca.models import FcaFormer
from mmfca.models.layers import (FCAFORMER_ARCHS, ConvNeXtBlock, FcaBlock,
                                 FcaStage, ForwardCrossAttention)
from mmfca.models.layers import attention as attention_module
from mmfca.models.layers import fold_for_inference
from mmfca.models.layers.blocks import LayerScale
from mmfca.models.layers.deploy import onnx_export_form
from mmfca.models.layers.fast_paths import InferenceLinear

onnx = pytest.importorskip('onnx')
onnxruntime = pytest.importorskip('onnxruntime')

#: The window sides of the hybrid models' FcaFormer stages.
WINDOWS = (14, 7)
#: The official widened dense outputs of L2.
L2_DENSE_WIDTHS = (96, 192, 384, 768)
#: mmfca.deployment.onnx.export_onnx's fixed-size settings, at opset 23.
EXPORT = dict(input_names=['images'], dynamo=True, opset_version=23)


def trained_scale(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights of a trained model's scale, in place: fan-in scaled
    matrices, layer scales, norm affines and LSFs around 1, biases and
    bias tables that count, BN statistics away from (0, 1). (The init's
    layer scales of 1e-6 make every block nearly the identity.)"""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if param.dim() > 1 and 'bias' not in name and \
                    'cross_scale' not in name:
                param.copy_(noise * param[0].numel()**-0.5)
            elif name.endswith(('position_bias', 'depth_bias')):
                param.copy_(noise)
            elif name.endswith('bias'):
                param.copy_(0.05 * noise)
            else:
                param.copy_(1 + 0.1 * noise)
        for name, buffer in model.named_buffers():
            if name.endswith('running_mean'):
                buffer.copy_(0.1 * torch.randn(buffer.shape, generator=gen))
            elif name.endswith('running_var'):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=gen))
    return model.eval()


def random_attention(cross: int = 32) -> ForwardCrossAttention:
    """L2's third-stage attention (14x14 windows) with ``cross`` cross
    tokens, 4 heads of 8, random weights."""
    torch.manual_seed(0)
    return trained_scale(ForwardCrossAttention(32, 4, 14, cross))


@pytest.mark.parametrize('deploy', [False, True])
@pytest.mark.parametrize('cross', [0, 32])
def test_the_onnx_branch_gives_the_values_of_torch_attention(
        monkeypatch, deploy, cross):
    """The export form, run through the operator's eager implementation
    (``attend`` with the export flag, as the dynamo exporter sees it),
    equals the scaled_dot_product_attention path to float rounding; with
    the flag off an export-time call still takes torch's path."""
    attn = random_attention(cross)
    if deploy:
        fold_for_inference(attn)
    qkv = torch.randn(3, 196, 96)
    tokens = torch.randn(3, cross, 32) if cross else None
    with torch.no_grad():
        expected = attn.attend(qkv, tokens)
        monkeypatch.setattr(attention_module, 'onnx_dynamo_export',
                            lambda: True)
        assert torch.equal(attn.attend(qkv, tokens), expected)
        with onnx_export_form(attn):
            got = attn.attend(qkv, tokens)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert not torch.equal(got, expected)  # another computation ran


def test_the_export_form_holds_the_real_length_mask_and_is_undone():
    attn = fold_for_inference(random_attention(32))
    padded = attn.deploy_bias
    assert padded.shape[-1] > attn.num_keys  # 228 keys, 232 allocated
    with onnx_export_form(attn) as model:
        assert model is attn and attn.onnx_attention
        assert attn.deploy_bias.shape[-1] == attn.num_keys
        assert attn.deploy_bias.is_contiguous()
        assert torch.equal(attn.deploy_bias, padded[..., :attn.num_keys])
    assert not attn.onnx_attention and attn.deploy_bias is padded
    eval_mode = random_attention(32)
    with onnx_export_form(eval_mode):
        assert eval_mode.deploy_bias is None


def recording_stage(monkeypatch):
    """A deployed FcaStage of 3 blocks (7x7 windows) and the
    ``torch.compiler.is_exporting()`` values its attentions see."""
    torch.manual_seed(0)
    stage = fold_for_inference(trained_scale(FcaStage(32, 3, 2, 7, [0.] * 3)))
    seen = []
    attend = ForwardCrossAttention.attend

    def recording(self, *args):
        seen.append(torch.compiler.is_exporting())
        return attend(self, *args)

    monkeypatch.setattr(ForwardCrossAttention, 'attend', recording)
    return stage, seen


def test_torchscript_exporter_and_plain_torch_export_keep_torch_attention(
        monkeypatch, tmp_path):
    """The legacy exporter traces without torch.export
    (``is_exporting()`` is False there), so it records torch's attention
    at opset 17 even inside the export form; a torch.export for other
    runtimes records no ONNX operator."""
    stage, seen = recording_stage(monkeypatch)
    x = torch.randn(1, 32, 14, 14)
    path = str(tmp_path / 'legacy.onnx')
    with torch.no_grad(), onnx_export_form(stage), \
            warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(
            stage, (x, ),
            path,
            input_names=['x'],
            dynamic_axes={'x': {
                2: 'height',
                3: 'width'
            }},
            opset_version=17,
            dynamo=False)
        assert seen and not any(seen)
        seen.clear()
        program = torch.export.export(stage, (x, ))
    assert seen and all(seen)
    counts = Counter(node.op_type for node in onnx.load(path).graph.node)
    assert counts['Softmax'] == 3 and counts['Attention'] == 0
    targets = {str(node.target) for node in program.graph.nodes}
    assert not any('onnx' in target for target in targets)
    assert any('scaled_dot_product_attention' in t for t in targets)


def test_the_export_form_folds_every_layer_scale_and_puts_it_back():
    """Inside the export form ``W' = s W``, ``b' = s b`` (restated in
    float64), the scales are identities (ConvNeXt's ``gamma`` None), the
    linear layers still run as oneDNN calls, and the outputs stay those of
    the deployed model within the deploy tolerances
    (tests/test_deployment/test_deploy.py, tests/test_models/
    test_fast_paths.py); on leaving, the model's own parameters and
    modules are back, bit for bit."""
    torch.manual_seed(0)
    model = trained_scale(
        FcaFormer('l1', out_indices=(0, 1, 2, 3),
                  layer_scale_init_value=1.)).switch_to_deploy()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    parameters = dict(model.named_parameters())
    images = [torch.randn(1, 3, 224, 224), torch.randn(1, 3, 150, 110)]
    with torch.no_grad():
        expected = [model(x) for x in images]
    plain = copy.deepcopy(model)
    with onnx_export_form(model), torch.no_grad():
        assert not any(isinstance(m, LayerScale) for m in model.modules())
        pairs = []
        for name, block in plain.named_modules():
            folded = model.get_submodule(name)
            if isinstance(block, FcaBlock):
                assert isinstance(folded.ls1, torch.nn.Identity)
                pairs += [(block.attn.proj, block.ls1.weight,
                           folded.attn.proj),
                          (block.ffn.fc2, block.ls2.weight, folded.ffn.fc2)]
            elif isinstance(block, ConvNeXtBlock):
                assert folded.gamma is None
                pairs.append((block.pointwise_conv2, block.gamma,
                              folded.pointwise_conv2))
        assert len(pairs) == 2 * 8 + 4
        for linear, scale, folded in pairs:
            assert isinstance(folded, InferenceLinear)
            scale = scale.double()
            torch.testing.assert_close(folded.weight.double(),
                                       linear.weight.double() * scale[:, None])
            torch.testing.assert_close(folded.bias.double(),
                                       linear.bias.double() * scale)
        for x, want in zip(images, expected):
            for ref, got in zip(want, model(x)):
                assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5
                torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert dict(model.named_parameters()) == parameters
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    with torch.no_grad():
        for x, want in zip(images, expected):
            for ref, got in zip(want, model(x)):
                assert torch.equal(got, ref)


def fcaformer_blocks(arch: str):
    """Per FcaFormer stage of a hybrid arch: (depth, heads, window)."""
    settings = FCAFORMER_ARCHS[arch]
    return list(
        zip(settings['depths'][2:], settings['num_heads'][2:], WINDOWS))


def expected_counts(arch: str) -> dict:
    """Node counts of the deploy-form classifier export, restated from the
    architecture: one Attention per FcaBlock; LayerNormalization: one per
    ConvNeXt block, three per FcaBlock (norm1, norm2, the FFN's own), one
    per block with cross tokens (its cross norm, without affine) and the
    head's; linear layers: two per ConvNeXt block, four per FcaBlock, the
    cross tokens' key/value projection per block with cross tokens, the
    head; Mul: only the cross tokens' LSFs (the layer scales are folded);
    Conv: the stem's two, three per transition, a ConvNeXt block's
    depthwise one, an FcaBlock's local conv and, in all but the last block
    of a stage, its cross-token conv."""
    depths = FCAFORMER_ARCHS[arch]['depths']
    conv_blocks = depths[0] + depths[1]
    fca_blocks = sum(depths[2:])
    cross_blocks = sum(depth - 1 for depth in depths[2:])
    return dict(
        Attention=fca_blocks,
        LayerNormalization=conv_blocks + 3 * fca_blocks + cross_blocks + 1,
        linear=2 * conv_blocks + 4 * fca_blocks + cross_blocks + 1,
        Mul=cross_blocks,
        Conv=2 + 3 * (len(depths) - 1) + conv_blocks + fca_blocks +
        cross_blocks,
    )


def node_scopes(node) -> str:
    """The module scopes the dynamo exporter records for a node."""
    for prop in node.metadata_props:
        if prop.key == 'pkg.torch.onnx.name_scopes':
            return prop.value
    return ''


def ort_outputs(path: str, images: torch.Tensor) -> list:
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    return session.run(None, {'images': images.numpy()})


def max_error(path: str, model: torch.nn.Module,
              images: torch.Tensor) -> float:
    with torch.no_grad():
        expected = model(images)
    if not isinstance(expected, (list, tuple)):
        expected = [expected]
    outputs = ort_outputs(path, images)
    assert len(outputs) == len(expected)
    return max(
        float(np.abs(out - ref.numpy()).max())
        for out, ref in zip(outputs, expected))


def export(model: torch.nn.Module, path: str, images: torch.Tensor) -> str:
    with torch.no_grad(), onnx_export_form(model), \
            warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (images, ), path, verbose=False, **EXPORT)
    return path


@pytest.fixture(scope='module')
def l2_classifier(tmp_path_factory):
    """The deploy-form timm L2 classifier and its 224x224 export."""
    torch.manual_seed(0)
    model = fold_for_inference(
        trained_scale(timm.create_model('fcaformer_l2')))
    path = str(tmp_path_factory.mktemp('l2') / 'l2.onnx')
    return model, export(model, path, torch.randn(1, 3, 224, 224))


@pytest.mark.slow
def test_node_counts_of_the_deploy_form_classifier(l2_classifier):
    _, path = l2_classifier
    proto = onnx.load(path)
    assert [(o.domain, o.version) for o in proto.opset_import] == [('', 23)]
    counts = Counter(node.op_type for node in proto.graph.node)
    expected = expected_counts('l2')
    assert counts['Attention'] == expected['Attention'] == 9
    assert counts['LayerNormalization'] == expected['LayerNormalization']
    assert counts['MatMul'] + counts['Gemm'] == expected['linear']
    assert counts['Mul'] == expected['Mul']
    assert counts['Conv'] == expected['Conv']
    # Whole windows (a 14x14 and a 7x7 map): no padding, no index work;
    # no decomposed attention (Softmax, the heads' unbind) and no slicing
    # of masks. (timm's average pooling of the head exports one Gather.)
    stages = Counter(node.op_type for node in proto.graph.node
                     if "'stages" in node_scopes(node))
    for op in ('Pad', 'Gather', 'Softmax', 'Squeeze', 'Slice'):
        assert stages[op] == 0, op
    assert counts['Softmax'] == counts['Slice'] == counts['Pad'] == 0
    # Each mask is an initializer of its real length: the keys of the
    # window and the earlier blocks' cross tokens.
    initializers = {i.name: list(i.dims) for i in proto.graph.initializer}
    masks = [
        initializers[node.input[3]] for node in proto.graph.node
        if node.op_type == 'Attention'
    ]
    want = [[1, heads, window**2, window**2 + i * math.ceil(window / 4)**2]
            for depth, heads, window in fcaformer_blocks('l2')
            for i in range(depth)]
    assert masks == want


@pytest.mark.slow
def test_the_classifier_file_matches_pytorch(l2_classifier):
    model, path = l2_classifier
    torch.manual_seed(1)
    assert max_error(path, model, torch.randn(1, 3, 224, 224)) < 1e-4


class Backbone(torch.nn.Module):
    """The OpenMMLab backbone's outputs as a tuple (what export_onnx's
    dense wrapper gives)."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, images):
        return tuple(self.backbone(images))


@pytest.fixture(scope='module')
def l2_backbone():
    """The deployed L2 backbone with the official widened outputs."""
    torch.manual_seed(0)
    backbone = FcaFormer(
        'l2', out_indices=(0, 1, 2, 3), out_channels=L2_DENSE_WIDTHS)
    return Backbone(trained_scale(backbone).switch_to_deploy()).eval()


@pytest.mark.slow
@pytest.mark.parametrize('size', [(224, 224), (150, 110)])
def test_the_dense_backbone_file_matches_pytorch(l2_backbone, tmp_path, size):
    """Whole windows and padded ones (150x110 pads the 10x7 and 5x4 maps):
    the fixed-size export takes the path of its size, and the attention's
    mask broadcasts over the windows and the batch."""
    for batch in (1, 2):
        torch.manual_seed(batch)
        images = torch.randn(batch, 3, *size)
        path = export(l2_backbone, str(tmp_path / f'b{batch}.onnx'), images)
        counts = Counter(n.op_type for n in onnx.load(path).graph.node)
        assert counts['Attention'] == 9 and counts['Softmax'] == 0
        whole = size == (224, 224)
        assert (counts['Pad'] == 0) == whole
        assert (counts['Gather'] == 0) == whole
        assert max_error(path, l2_backbone, images) < 1e-4


@pytest.mark.slow
def test_the_legacy_dynamic_export_serves_every_size(l2_backbone, tmp_path):
    """The TorchScript-based export with dynamic height and width (as
    export_onnx's ``dynamic=True``), made at a size of whole windows
    inside the export form: torch's attention, the general padded path,
    and one file exact at sizes that pad and at another batch."""
    path = str(tmp_path / 'dynamic.onnx')
    images = torch.randn(1, 3, 224, 224)
    names = [f'output{i}' for i in range(4)]
    axes = {'images': {0: 'batch', 2: 'height', 3: 'width'}}
    for name in names:
        axes[name] = {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'}
    with torch.no_grad(), onnx_export_form(l2_backbone), \
            warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(
            l2_backbone, (images, ),
            path,
            input_names=['images'],
            output_names=names,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False)
    counts = Counter(n.op_type for n in onnx.load(path).graph.node)
    assert counts['Attention'] == 0 and counts['Softmax'] == 9
    assert counts['Pad'] > 0
    for size, batch in [((224, 224), 1), ((150, 110), 1), ((97, 203), 2)]:
        torch.manual_seed(batch)
        images = torch.randn(batch, 3, *size)
        assert max_error(path, l2_backbone, images) < 1e-4
