"""The GPU paths, proved by proxy on a CPU.

* fp16 autocast. The official recipes train in float16 (detection:
  ``use_fp16=True``, segmentation: AMP). CPU autocast to float16 runs the
  same casts (matmuls and convolutions in float16, norms and softmax in
  float32), so the dense backbone's forward and backward are checked under
  it: finite gradients, outputs close to float32.
* The ``meta`` device. Every shipped model is moved to ``meta`` and run
  there: a tensor left behind by ``.to()`` (a plain attribute instead of a
  buffer, a tensor made on the CPU in forward) raises "Tensor on device cpu
  is not on the expected device meta", as it would on a GPU.
"""
import json
import os

import torch
from analysis_tools import analysis_tool
from conftest import L2_DENSE_WIDTHS

from mmfca.apis import build_model, load_config
from mmfca.models import FcaFormer

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
META = torch.device('meta')

# Stage-3/4 maps of a 288x96 input are 18x6 and 9x3: padded to 28x14 and
# 14x7 by the (14, 7) windows, two windows each, padding in both sides.
FP16_INPUT = (1, 3, 288, 96)


def relative_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref).norm() / ref.norm())


def test_fp16_autocast_forward_and_backward_of_the_dense_l2():
    """float16 carries 11 significant bits: each rounding of a matmul or
    convolution input moves it by at most u = 2**-11 (about 4.9e-4)
    relative, and oneDNN accumulates in float32. The L2 backbone rounds at
    about 40 places on the way to its last output (13 blocks with 2-4
    matmuls or convolutions each, plus the stem, downsampling and output
    projections); LayerNorm keeps the activations at unit scale, so these
    relative errors add. Uncorrelated they grow like sqrt(40) u (3e-3);
    all lined up, 40 u (2e-2). The bound is between the two, 1e-2 relative
    L2 distance per output (about 20 u)."""
    torch.manual_seed(0)
    # Layer scale 1 (the dense recipes' init) so that the attention and FFN
    # branches weigh in; at the default 1e-6 they would hide their errors.
    model = FcaFormer(
        'l2',
        out_indices=(0, 1, 2, 3),
        out_channels=L2_DENSE_WIDTHS,
        layer_scale_init_value=1.0)
    model.init_weights()
    model.train()
    images = torch.randn(*FP16_INPUT)
    projections = [torch.randn(1, c, 1, 1) for c in L2_DENSE_WIDTHS]

    def run(autocast):
        model.zero_grad()
        with torch.autocast('cpu', dtype=torch.float16, enabled=autocast):
            outs = model(images)
        loss = sum(
            (out.float() * p).mean() for out, p in zip(outs, projections))
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters()}
        return [out.detach().float() for out in outs], grads

    dtypes = []
    linear = model.stages[2].blocks[0].attn.qkv
    handle = linear.register_forward_hook(
        lambda module, args, out: dtypes.append(out.dtype))
    ref, ref_grads = run(autocast=False)
    outs, grads = run(autocast=True)
    handle.remove()
    # The autocast run computed its matmuls in float16 (not a no-op).
    assert dtypes == [torch.float32, torch.float16]

    assert [o.shape for o in outs] == [r.shape for r in ref]
    errors = [relative_l2(o, r) for o, r in zip(outs, ref)]
    print(f'fp16 vs fp32, relative L2 per output: {errors}; max abs: '
          f'{[float((o - r).abs().max()) for o, r in zip(outs, ref)]}')
    assert max(errors) < 1e-2, errors

    missing = [n for n, g in grads.items() if g is None or not g.any()]
    assert not missing, f'parameters without a gradient: {missing}'
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f'non-finite float16 gradients: {bad}'
    flat = [
        torch.cat([g.flatten() for g in d.values()])
        for d in (grads, ref_grads)
    ]
    print(f'gradients, relative L2: {relative_l2(*flat):.2e}')


def meta_model(config: str) -> torch.nn.Module:
    """A shipped config's model without its pretrained checkpoint, in eval
    mode, moved to ``meta``."""
    cfg = load_config(os.path.join(REPO, 'configs', config))
    cfg.model.backbone.init_cfg = None
    model = build_model(cfg)
    model.eval()
    return model.to(META)


def on_meta(tensors) -> bool:
    tensors = list(tensors)
    return bool(tensors) and all(t.device == META for t in tensors)


def test_classifier_runs_on_meta():
    model = meta_model('fcaformer_l2_in1k.py')
    # Images come from the loader on the CPU; the data preprocessor moves
    # them to the model's device and normalises them with its buffers.
    data = model.data_preprocessor(
        dict(inputs=[torch.zeros(3, 224, 224, dtype=torch.uint8)]), False)
    logits = model(data['inputs'], mode='tensor')
    assert logits.device == META and logits.shape == (1, 1000)


def test_upernet_runs_on_meta():
    from mmseg.structures import SegDataSample
    model = meta_model('upernet_fcaformer_l2_160k_ade20k.py')
    data = model.data_preprocessor(
        dict(
            inputs=[torch.zeros(3, 160, 224, dtype=torch.uint8)],
            data_samples=[SegDataSample()]), False)
    logits = model(data['inputs'], data['data_samples'], mode='tensor')
    assert logits.device == META and logits.shape == (1, 150, 40, 56)
    auxiliary = model.auxiliary_head(model.extract_feat(data['inputs']))
    assert auxiliary.device == META and auxiliary.shape[:2] == (1, 150)


def test_mask_rcnn_runs_on_meta():
    """Backbone, FPN and RPN head forward, then the box and mask heads on
    RoI features of the shape RoIAlign gives. The full predict is not run:
    NMS and RoIAlign (mmcv ops) have no meta kernels, and they hold no
    tensors of the model."""
    from mmdet.structures import DetDataSample
    model = meta_model('mask_rcnn_fcaformer_l2_fpn_3x_coco.py')
    sample = DetDataSample(
        metainfo=dict(img_shape=(200, 300), ori_shape=(200, 300)))
    data = model.data_preprocessor(
        dict(
            inputs=[torch.zeros(3, 200, 300, dtype=torch.uint8)],
            data_samples=[sample]), False)
    features = model.extract_feat(data['inputs'])
    assert len(features) == 5 and on_meta(features)
    scores, deltas = model.rpn_head(features)
    assert on_meta(scores) and on_meta(deltas)
    roi_head = model.roi_head
    rois = 8
    box_size = roi_head.bbox_roi_extractor.roi_layers[0].output_size
    cls_score, bbox_pred = roi_head.bbox_head(
        torch.zeros(rois, 256, *box_size, device=META))
    assert cls_score.shape == (rois, 81) and on_meta([bbox_pred])
    mask_size = roi_head.mask_roi_extractor.roi_layers[0].output_size
    masks = roi_head.mask_head(torch.zeros(rois, 256, *mask_size, device=META))
    assert masks.shape == (rois, 80, 28, 28) and on_meta([masks])


def test_deploy_mode_runs_on_meta():
    model = FcaFormer(
        'l2', out_indices=(0, 1, 2, 3), out_channels=L2_DENSE_WIDTHS)
    model.switch_to_deploy()
    model.to(META)
    outs = model(torch.zeros(*FP16_INPUT, device=META))
    assert on_meta(outs)
    assert [o.shape[1:] for o in outs] == [(96, 72, 24), (192, 36, 12),
                                           (384, 18, 6), (768, 9, 3)]


def test_training_step_runs_on_meta():
    """A float32 training forward and backward, where the memory-saving
    autograd functions (GeluLinear; LearnedBiasAttention is CPU-only) run
    as they would on a GPU: every gradient lands on the model's device."""
    model = FcaFormer(
        'l2', out_indices=(0, 1, 2, 3),
        out_channels=L2_DENSE_WIDTHS).train().to(META)
    outs = model(torch.zeros(*FP16_INPUT, device=META))
    sum(out.sum() for out in outs).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert len(grads) > 0 and on_meta(grads)


def test_latency_moves_models_and_inputs_to_its_device(tmp_path):
    """The latency tool on ``--device meta``: any model or input it left
    on the CPU would make a forward fail, as it would with ``--device
    cuda``."""
    latency = analysis_tool('latency')
    out = tmp_path / 'latency.json'
    results = latency.main([
        '--device', 'meta', '--models', 'FcaFormer-L1', 'ConvNeXt-T',
        '--repeat', '2', '--out',
        str(out)
    ])
    latency_table = json.loads(out.read_text())['classification_latency']
    assert results['device'] == 'meta'
    assert set(latency_table) == {'FcaFormer-L1', 'ConvNeXt-T'}
    assert latency_table['FcaFormer-L1']['runs'] == 2
    assert 'ConvNeXt-T' in latency_table['FcaFormer-L1']['ratios']
    # No sgemm share off the CPU.
    assert 'sgemm_share' not in results


def test_dense_latency_moves_backbones_and_inputs_to_its_device(tmp_path):
    """The dense backbone tool on ``--device meta``, another window layout
    included, at both sizes."""
    dense_latency = analysis_tool('dense_latency')
    results = dense_latency.main([
        '--device', 'meta', '--windows', '16,8', '--repeat', '1', '--out',
        str(tmp_path / 'dense.json')
    ])
    tables = results['backbone_latency']
    assert set(tables) == {'512x512', '800x1216'}
    for table in tables.values():
        assert set(table) == {
            'FcaFormer-L2', 'FcaFormer-L2 windows (16, 8)', 'ConvNeXt-T',
            'Swin-T'
        }
        assert 'ConvNeXt-T' in table['FcaFormer-L2 windows (16, 8)']['ratios']
