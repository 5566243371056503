"""Deploy mode, torch.compile and ONNX export."""
import copy
import itertools
import os

import pytest
import torch

from mmfca.apis import build_model, load_config
from mmfca.deployment import check_onnx, export_onnx
from mmfca.models import FcaFormer
from mmfca.models.layers import FeedForward
from mmfca.models.layers.fast_paths import linear

#: Trains, exports or starts processes: not in `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def trained_like(arch='l2', **kwargs):
    """A backbone with non-trivial BN statistics and layer scales."""
    torch.manual_seed(0)
    model = FcaFormer(arch, layer_scale_init_value=1.0, **kwargs)
    model.init_weights()
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 96, 96))
    return model.eval()


def test_switch_to_deploy_keeps_the_outputs():
    model = trained_like(
        out_indices=(0, 1, 2, 3), out_channels=(96, 192, 384, 768))
    deployed = copy.deepcopy(model).switch_to_deploy()
    assert not any(type(m).__name__ == 'ConvBN' for m in deployed.modules())
    for size in [(224, 224), (150, 110)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            for ref, out in zip(model(x), deployed(x)):
                assert ((ref - out).abs().max() / ref.abs().max()) < 1e-5


def called_ops(fn) -> dict:
    """Names of the operators ``fn()`` runs, with their call counts
    (torch's profiler)."""
    with torch.profiler.profile() as prof:
        fn()
    return {event.key: event.count for event in prof.key_averages()}


FUSED = 'mkldnn::_linear_pointwise'


def test_deploy_runs_linear_layers_as_onednn_calls_only_where_they_apply():
    """Deployed CPU inference runs each linear layer as one oneDNN call,
    the first of each channel MLP with its GELU; gradients, autocast and
    recorded graphs (the MAC counters' trace) keep torch's calls."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 128)
    x = torch.randn(2, 49, 32)
    # A strided input (a transposed view) too.
    inputs = [x, torch.randn(2, 32, 49).transpose(1, 2)]
    with torch.no_grad():
        for gelu, tokens in itertools.product((True, False), inputs):
            expected = layer(tokens)
            if gelu:
                expected = torch.nn.functional.gelu(expected)
            assert FUSED in called_ops(
                lambda: linear(tokens, layer.weight, layer.bias, True, gelu))
            assert FUSED not in called_ops(
                lambda: linear(tokens, layer.weight, layer.bias, False, gelu))
            torch.testing.assert_close(
                linear(tokens, layer.weight, layer.bias, True, gelu),
                expected,
                rtol=1e-5,
                atol=1e-6)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            out = linear(x, layer.weight, layer.bias, True, gelu=True)
            assert out.dtype == torch.bfloat16
        ffn = FeedForward(32, 128)
        ffn.fused_linears = True
        graph = str(torch.jit.trace(ffn, x).inlined_graph)
        assert 'mkldnn' not in graph and 'aten::gelu' in graph
    out = linear(x, layer.weight, layer.bias, True, gelu=True)
    assert out.grad_fn is not None
    out.sum().backward()
    assert layer.weight.grad is not None

    model = trained_like('l1', out_indices=(0, 1, 2, 3))
    deployed = copy.deepcopy(model).switch_to_deploy()
    image = torch.randn(1, 3, 96, 96)
    linears = sum(isinstance(m, torch.nn.Linear) for m in deployed.modules())
    assert linears == 8 + 8 * 4  # 4 ConvNeXt blocks' 2, 8 FcaBlocks' 4
    with torch.no_grad():
        # Every linear layer, fused with its GELU or alone, is one call.
        assert called_ops(lambda: deployed(image))[FUSED] == linears
        assert FUSED not in called_ops(lambda: model(image))


def test_torch_compile_traces_without_graph_breaks():
    model = trained_like('l1', out_indices=(0, 1, 2, 3))
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    x = torch.randn(1, 3, 100, 130)
    with torch.no_grad():
        for ref, out in zip(model(x), compiled(x)):
            torch.testing.assert_close(out, ref)


def test_onnx_export_of_the_classifier(tmp_path):
    model = build_model(
        load_config(os.path.join(REPO, 'configs/fcaformer_l1_in1k.py')))
    path = str(tmp_path / 'l1.onnx')
    export_onnx(model, path, (224, 224))
    assert check_onnx(model, path, (224, 224)) < 1e-4


class Dense(torch.nn.Module):
    """Anything with a ``backbone`` exports in dense mode."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


def test_onnx_export_of_the_dense_backbone(tmp_path):
    model = Dense(trained_like('l1', out_indices=(0, 1, 2, 3)))
    path = str(tmp_path / 'dense.onnx')
    export_onnx(model, path, (150, 110), dense=True)
    assert check_onnx(model, path, (150, 110), dense=True) < 1e-4


def test_onnx_export_with_dynamic_height_and_width(tmp_path):
    # Exported at a size made of whole windows, checked at sizes that need
    # padding (and at another batch size): the one file serves them all.
    model = Dense(trained_like('l1', out_indices=(0, 1, 2, 3)))
    path = str(tmp_path / 'dynamic.onnx')
    export_onnx(model, path, (224, 224), dense=True, dynamic=True)
    for size, batch in [((150, 110), 1), ((224, 320), 1), ((97, 203), 2)]:
        assert check_onnx(model, path, size, dense=True, batch=batch) < 1e-4


def test_deploy_mode_follows_moves_reloads_and_refuses_training():
    """The precomputed attention masks follow ``.to()`` (a forward on the
    meta device fails on any tensor left on the CPU), are recomputed when
    weights are loaded, and a deployed model cannot be trained."""
    model = trained_like('l1', out_indices=(0, 1, 2, 3))
    deployed = copy.deepcopy(model).switch_to_deploy()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outs = deployed.to('meta')(x.to('meta'))
    assert all(out.device.type == 'meta' for out in outs)

    deployed = copy.deepcopy(model).switch_to_deploy()
    with torch.no_grad():
        ref = deployed(x)
        out = deployed.double()(x.double())
    for a, b in zip(ref, out):
        assert b.dtype == torch.float64
        torch.testing.assert_close(b.float(), a, rtol=1e-4, atol=1e-4)

    # New weights for a deployed model: masks from the new tables.
    deployed = copy.deepcopy(model).switch_to_deploy()
    state = deployed.state_dict()
    for key in state:
        if key.endswith(('position_bias', 'depth_bias')):
            state[key] = torch.randn_like(state[key])
    deployed.load_state_dict(state)
    fresh = copy.deepcopy(model)
    fresh.load_state_dict(
        {
            k: v
            for k, v in state.items() if 'bias' in k and 'attn' in k
        },
        strict=False)
    fresh.switch_to_deploy()
    with torch.no_grad():
        for a, b in zip(deployed(x), fresh(x)):
            torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match='deploy mode'):
        deployed.train()


def test_export_preparation_folds_then_moves_to_the_device():
    # 'meta' stands in for a GPU: a forward there fails on any tensor the
    # move left on the CPU.
    from mmfca.deployment import prepared
    wrapper = prepared(
        Dense(FcaFormer('l1', out_indices=(0, 1, 2, 3))),
        dense=True,
        device='meta')
    outs = wrapper(torch.zeros(1, 3, 100, 130, device='meta'))
    assert len(outs) == 4
    assert all(out.device == torch.device('meta') for out in outs)


def test_onnx_tool_refuses_cuda_without_a_gpu(monkeypatch, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'pytorch2onnx',
        os.path.join(REPO, 'tools', 'deployment', 'pytorch2onnx.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    monkeypatch.setattr('sys.argv', [
        'pytorch2onnx.py', 'configs/fcaformer_l1_in1k.py', '--device', 'cuda'
    ])
    with pytest.raises(SystemExit):
        tool.main()
    assert 'torch.cuda.is_available() is False' in capsys.readouterr().err


@pytest.fixture(scope='module')
def upernet_l2():
    """The synthetic UperNet + FcaFormer-L2 config's segmentor, random
    weights with BN statistics from a few training-mode forwards."""
    torch.manual_seed(0)
    model = build_model(
        load_config(
            os.path.join(
                REPO,
                'configs/synthetic/upernet_fcaformer_l2_synthetic_ade20k.py')))
    model.train()
    with torch.no_grad():
        model.decode_head(model.extract_feat(torch.randn(2, 3, 96, 96)))
    return model.eval()


@pytest.mark.parametrize('size', [(160, 160), (130, 225), (2, 3), (7, 19)])
def test_exact_adaptive_pooling_equals_torch(size):
    # Bins that divide the size, that do not, and more bins than inputs.
    from mmfca.deployment import ExactAdaptiveAvgPool2d
    x = torch.randn(2, 5, *size)
    for output_size in [1, 2, 3, 6, (6, None), (None, 4)]:
        ref = torch.nn.AdaptiveAvgPool2d(output_size)(x)
        out = ExactAdaptiveAvgPool2d(output_size)(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_onnx_export_of_the_whole_segmentor(upernet_l2, tmp_path):
    """One dynamic file, mmseg's own whole-image logits at the export size
    and at a size that is no multiple of 32 (its 4x7 last map pools into
    3 and 6 bins unevenly)."""
    path = str(tmp_path / 'upernet.onnx')
    export_onnx(upernet_l2, path, (96, 96), dynamic=True, segmentor=True)
    # The model's own pooling modules are back after the export.
    pools = [
        type(m) for m in upernet_l2.modules()
        if isinstance(m, torch.nn.AdaptiveAvgPool2d)
    ]
    assert pools and set(pools) == {torch.nn.AdaptiveAvgPool2d}
    torch.manual_seed(1)
    for size, batch in [((96, 96), 2), ((130, 225), 1)]:
        assert check_onnx(
            upernet_l2, path, size, batch=batch, segmentor=True) < 1e-4


def test_onnx_export_of_the_segmentor_labels(upernet_l2, tmp_path):
    import onnxruntime

    from mmfca.deployment import mmseg_inference
    path = str(tmp_path / 'labels.onnx')
    export_onnx(
        upernet_l2, path, (96, 96), dynamic=True, segmentor=True, argmax=True)
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    torch.manual_seed(2)
    images = torch.randn(1, 3, 75, 110)
    labels, = session.run(None, {'images': images.numpy()})
    with torch.no_grad():
        expected = mmseg_inference(upernet_l2, images, argmax=True)
        logits = mmseg_inference(upernet_l2, images)
    assert labels.shape == (1, 1, 75, 110)
    assert labels.dtype == expected.numpy().dtype
    # Not a constant map: the labels carry the logits' argmax.
    assert len(set(labels.ravel().tolist())) > 10
    assert (labels == expected.numpy()).all()
    assert (labels == logits.argmax(1, keepdim=True).numpy()).all()


def test_mmdeploy_exports_mask_rcnn_with_the_workarounds(tmp_path):
    """mmdeploy 1.3.1's ONNX Runtime route for the synthetic Mask R-CNN +
    FcaFormer-L2 config, in-process inside ``mmdeploy_compat`` (needs
    mmdeploy installed as docs/deployment.md says; skipped without it)."""
    pytest.importorskip('mmdeploy')
    import numpy as np
    import onnxruntime
    import torch.onnx.symbolic_opset9 as opset9
    from mmdeploy.apis import torch2onnx
    from mmengine.config import Config

    from mmfca.deployment.mmdeploy_compat import mmdeploy_compat
    model_cfg = load_config(
        os.path.join(
            REPO,
            'configs/synthetic/mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py'))
    torch.manual_seed(0)
    checkpoint = str(tmp_path / 'model.pth')
    torch.save({'state_dict': build_model(model_cfg).state_dict()}, checkpoint)
    # The values of mmdeploy's configs/mmdet/instance-seg/
    # instance-seg_onnxruntime_dynamic.py (its configs are not in the
    # wheel).
    deploy_cfg = Config(
        dict(
            onnx_config=dict(
                type='onnx',
                export_params=True,
                keep_initializers_as_inputs=False,
                opset_version=11,
                save_file='end2end.onnx',
                input_names=['input'],
                output_names=['dets', 'labels', 'masks'],
                input_shape=None,
                optimize=True,
                dynamic_axes=dict(
                    input={
                        0: 'batch',
                        2: 'height',
                        3: 'width'
                    },
                    dets={
                        0: 'batch',
                        1: 'num_dets'
                    },
                    labels={
                        0: 'batch',
                        1: 'num_dets'
                    },
                    masks={
                        0: 'batch',
                        1: 'num_dets',
                        2: 'height',
                        3: 'width'
                    })),
            codebase_config=dict(
                type='mmdet',
                task='ObjectDetection',
                model_type='end2end',
                post_processing=dict(
                    score_threshold=0.05,
                    confidence_threshold=0.005,
                    iou_threshold=0.5,
                    max_output_boxes_per_class=200,
                    pre_top_k=5000,
                    keep_top_k=100,
                    background_label_id=-1,
                    export_postprocess_mask=False)),
            backend_config=dict(type='onnxruntime')))
    image = np.random.default_rng(0).integers(
        0, 255, (128, 170, 3), dtype=np.uint8)
    export = torch.onnx.export
    had_cast = hasattr(opset9, '_cast_Long')
    with mmdeploy_compat():
        torch2onnx(
            image,
            str(tmp_path),
            'end2end.onnx',
            deploy_cfg,
            model_cfg,
            checkpoint,
            device='cpu')
    # Both workarounds are undone.
    assert torch.onnx.export is export
    assert hasattr(opset9, '_cast_Long') == had_cast
    session = onnxruntime.InferenceSession(
        str(tmp_path / 'end2end.onnx'), providers=['CPUExecutionProvider'])
    assert [o.name
            for o in session.get_outputs()] == ['dets', 'labels', 'masks']
    dets, labels, masks = session.run(
        None, {'input': np.random.randn(1, 3, 128, 192).astype(np.float32)})
    assert dets.shape[-1] == 5 and dets.shape[:2] == labels.shape
    assert masks.shape[:2] == labels.shape
