"""The tensor adapter of the analysis and export tools, the block
profiler's clock, the benchmark tools' paired rounds and ratios, their
training and runtime tables, and the codebases' complexity counter."""
import json
import os
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest
import torch
from analysis_tools import ANALYSIS, analysis_tool

from mmfca.apis import build_model, load_config
from mmfca.deployment.segmentor import SegmentorForward, mmseg_inference
from mmfca.models import FcaFormer
from mmfca.utils import TensorForward

#: Trains, exports or starts processes: not in `pytest -m "not slow"`.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    profile_blocks = analysis_tool('profile_blocks')
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
    mmpretrain, mmseg and mmdet call, gives our figure for the L2
    classifier, attention included: ``import mmfca`` adds the handle of
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
    # Per stage too, as the codebases' tools print it.
    stages = analyzer.by_module_and_operator()
    assert stages['model.backbone.stages.2'][
        'scaled_dot_product_attention'] == stage3
    assert stages['model.backbone.stages.3'][
        'scaled_dot_product_attention'] == stage4


def test_the_profiler_times_its_parts_in_paired_rounds():
    """The warm-up's hooked forwards are left out, and each round's parts
    lie inside that round's hooked forward."""
    profile_blocks = analysis_tool('profile_blocks')
    result = profile_blocks.main([
        '--arch', 'l1', '--shape', '64', '64', '--threads', '1', '--repeat',
        '2'
    ])
    hooked = result['times'][profile_blocks.HOOKED]
    assert hooked['runs'] == 2
    assert set(hooked['ratios']) == {profile_blocks.WHOLE, 'ConvNeXt-T'}
    parts = result['part_ms']
    assert set(parts) == set(profile_blocks.PARTS) | {'rest'}
    assert all(len(values) == 2 for values in parts.values())
    assert all(value > 0 for part in profile_blocks.PARTS
               for value in parts[part])
    # The parts lie inside the hooked call of their own round.
    assert all(value > 0 for value in parts['rest'])


def test_bench_lib_imports_torch_only():
    """The timing library runs on a machine with torch alone: importing it
    loads none of mmfca and the OpenMMLab or timm packages."""
    code = ('import sys; sys.path.insert(0, sys.argv[1]); import bench_lib; '
            'print(sorted({m.split(".")[0] for m in sys.modules} & {"mmfca", '
            '"mmengine", "mmcv", "mmpretrain", "mmseg", "mmdet", "timm"}))')
    out = subprocess.run([sys.executable, '-c', code, ANALYSIS],
                         check=True,
                         capture_output=True,
                         text=True).stdout
    assert out.strip() == '[]'


def test_rounds_rotate_the_order_and_time_each_call():
    bench_lib = analysis_tool('bench_lib')
    calls = []

    def call(name, seconds=0.):

        def fn():
            calls.append((name, torch.is_grad_enabled()))
            time.sleep(seconds)

        return fn

    fns = {'A': call('A'), 'B': call('B', 0.005), 'C': call('C')}
    times = bench_lib.time_rounds(fns, 'cpu', warmup=1, rounds=3)
    order = ''.join(name for name, _ in calls)
    assert order == 'ABC' + 'ABC' + 'BCA' + 'CAB'
    assert not any(grad for _, grad in calls)
    assert [len(times[n]) for n in 'ABC'] == [3, 3, 3]
    assert min(times['B']) >= 5
    calls.clear()
    bench_lib.time_rounds(fns, 'cpu', warmup=0, rounds=1, inference=False)
    assert all(grad for _, grad in calls)


def test_benchmark_ratios_are_paired_and_printed_with_their_spread(capsys):
    """The ratio is the median of per-round ratios, not a ratio of
    medians: here 1.0, where the medians give 30 / 20 = 1.5."""
    bench_lib = analysis_tool('bench_lib')
    times = {'A': [10., 40., 30., 20.], 'B': [10., 20., 30., 20.]}
    summary = bench_lib.summarize(times, ('B', ))
    ratio = summary['A']['ratios']['B']
    # Per-round ratios 1, 2, 1, 1: quartiles (inclusive) 1, 1, 1.25.
    assert (ratio['median'], ratio['q1'], ratio['q3']) == (1., 1., 1.25)
    assert (ratio['min'], ratio['max']) == (1., 2.)
    assert summary['B']['ratios'] == {}
    bench_lib.report('title', summary)
    line = next(line for line in capsys.readouterr().out.splitlines()
                if line.strip().startswith('A '))
    assert '1.000x B [1.000-1.250] (1.00-2.00)' in line


def test_benchmark_sgemm_share_is_paired_per_round(capsys):
    """A model of 1 GMAC in 10 ms against a 1000-cubed product (1 GMAC)
    in 5 ms runs at half the product's rate; the share is taken per round,
    so a round where both slow down alike keeps it."""
    latency = analysis_tool('latency')
    times = {'M': [10., 20., 10.]}
    shares = latency.sgemm_shares(times, [5., 10., 4.], {'M': 1.0}, 1000)
    # Per-round shares 0.5, 0.5, 0.4.
    assert shares['M']['median'] == pytest.approx(0.5)
    assert shares['M']['min'] == pytest.approx(0.4)
    # 2 GFLOP in 5, 10 and 4 ms: 400, 200 and 500 GFLOP/s.
    assert shares[latency.SGEMM]['gflops']['median'] == pytest.approx(400)
    latency.report_sgemm_shares(shares, 1000, 2)
    out = capsys.readouterr().out
    assert '400.0 GFLOP/s' in out and 'M ' in out and '50.0%' in out


def test_benchmark_latency_table_reports_sgemm_shares(tmp_path):
    """A real latency run times the matrix product in its rounds and
    counts both models' MACs."""
    latency = analysis_tool('latency')
    out = tmp_path / 'latency.json'
    results = latency.main([
        '--device', 'cpu', '--threads', '1', '--models', 'FcaFormer-L1',
        'ConvNeXt-T', '--repeat', '1', '--sgemm-size', '256', '--out',
        str(out)
    ])
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(results))
    shares = result['sgemm_share']
    assert set(shares) == {'FcaFormer-L1', 'ConvNeXt-T', latency.SGEMM}
    assert all(shares[n]['median'] > 0 for n in ('FcaFormer-L1', 'ConvNeXt-T'))
    assert latency.SGEMM not in result['classification_latency']
    assert result['gmacs_224']['FcaFormer-L1'] > 0
    assert result['gmacs_224']['ConvNeXt-T'] > 0
    # Batch 64 and peak memory only when asked for.
    assert 'classification_throughput' not in result
    assert 'peak_memory' not in result


def test_benchmark_best_runtime_of_each_model(capsys):
    runtimes = analysis_tool('runtimes')
    times = {
        'FcaFormer-L2 eager': [10., 12., 11.],
        'FcaFormer-L2 onnxruntime': [8., 9., 10.],
        'ConvNeXt-T eager': [10., 10., 10.],
        'ConvNeXt-T compile': [9., 12., 12.],
    }
    best = runtimes.best_of_each(times, ['FcaFormer-L2', 'ConvNeXt-T'])
    assert best['FcaFormer-L2'] == dict(runtime='onnxruntime', ms=9.)
    assert best['ConvNeXt-T'] == dict(runtime='eager', ms=10.)
    # Rounds paired: 8/10, 9/10, 10/10.
    assert best['ratio']['median'] == pytest.approx(0.9)
    assert 'FcaFormer-L2 onnxruntime 9.0 ms, ConvNeXt-T eager 10.0 ms: ' \
        '0.900x [0.850-0.950] (0.80-1.00)' in capsys.readouterr().out


def test_benchmark_each_runtime_against_the_models_first(capsys):
    runtimes = analysis_tool('runtimes')
    times = {
        'FcaFormer-L2 eager': [10., 20., 10.],
        'FcaFormer-L2 onnxruntime': [8., 18., 7.],
        'ConvNeXt-T eager': [10., 10., 10.],
        'ConvNeXt-T onnxruntime': [5., 6., 7.],
    }
    gains = runtimes.against_own_first(times, ['FcaFormer-L2', 'ConvNeXt-T'],
                                       ['eager', 'onnxruntime'])
    # Rounds paired within each model: 8/10, 18/20, 7/10; 5/10, 6/10, 7/10.
    assert set(gains) == {'FcaFormer-L2', 'ConvNeXt-T'}
    assert gains['FcaFormer-L2']['onnxruntime']['median'] == \
        pytest.approx(0.8)
    assert gains['FcaFormer-L2']['onnxruntime']['max'] == pytest.approx(0.9)
    assert gains['ConvNeXt-T']['onnxruntime']['median'] == pytest.approx(0.6)
    assert 'ConvNeXt-T onnxruntime / eager: 0.600x [0.550-0.650] ' \
        '(0.50-0.70)' in capsys.readouterr().out


def test_benchmark_onnxruntime_runs_the_exported_model(tmp_path):
    runtimes = analysis_tool('runtimes')
    bench_models = analysis_tool('bench_models')
    images = torch.randn(1, 3, 64, 64)
    path = tmp_path / 'l1.onnx'
    calls = runtimes.runtime_calls(bench_models.CLASSIFIERS['FcaFormer-L1'],
                                   'classifier',
                                   images, ['eager', 'onnxruntime'], 'cpu', 2,
                                   str(path))
    assert set(calls) == {'eager', 'onnxruntime'}
    assert os.path.isfile(path)
    with torch.no_grad():
        expected = calls['eager']()
    outputs = calls['onnxruntime']()
    np.testing.assert_allclose(outputs[0], expected.numpy(), rtol=0, atol=1e-4)


def test_benchmark_segmentor_case_runs_the_whole_segmentor(tmp_path):
    """The segmentor case times mmseg's whole-image inference: eager and
    ONNX Runtime both give the logits of mmseg's own ``predict`` at the
    input size (an odd one: the head resizes to it)."""
    runtimes = analysis_tool('runtimes')
    assert set(runtimes.CASES['segmentor']['models'].values()) == set(
        analysis_tool('bench_models').SEGMENTORS.values())
    config = os.path.join(
        REPO, 'configs/synthetic/upernet_fcaformer_l2_synthetic_ade20k.py')
    images = torch.randn(1, 3, 70, 90)
    path = tmp_path / 'upernet.onnx'
    calls = runtimes.runtime_calls(config, 'segmentor',
                                   images, ['eager', 'onnxruntime'], 'cpu', 1,
                                   str(path))
    wrapper = calls['eager'].func
    assert isinstance(wrapper, SegmentorForward)
    with torch.no_grad():
        expected = mmseg_inference(wrapper.model, images, argmax=False)
        eager = calls['eager']()
    assert expected.shape[-2:] == (70, 90)
    outputs = calls['onnxruntime']()
    np.testing.assert_allclose(
        eager.numpy(), expected.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(outputs[0], expected.numpy(), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="output='dense'"):
        runtimes.runtime_calls(config, 'dense', images, ['eager'], 'cpu', 1,
                               str(path))


def test_benchmark_tools_refuse_bad_arguments(capsys):
    cpu = ['--device', 'cpu']
    for tool, argv, message in [
        ('train_cost', cpu + ['--batch', '1'], 'two values per channel'),
        ('train_cost', cpu + ['--crop', '100'], 'multiple of 32'),
        ('latency', cpu + ['--with-cp'], 'unrecognized arguments: --with-cp'),
        ('runtimes', cpu + ['--mode', 'eval'],
         'unrecognized arguments: --mode'),
        ('latency', cpu + ['--repeat', '0'], 'must be at least 1, got 0'),
        ('dense_latency', cpu + ['--windows', '16x8'], 'comma-separated ints'),
        ('window_drift', [], 'the following arguments are required: '
         '--windows'),
    ]:
        with pytest.raises(SystemExit):
            analysis_tool(tool).parse_args(argv)
        assert message in capsys.readouterr().err, (tool, argv)
    if not torch.cuda.is_available():
        for tool in ('latency', 'dense_latency', 'whole_model_latency',
                     'train_cost', 'runtimes'):
            with pytest.raises(SystemExit):
                analysis_tool(tool).parse_args(['--device', 'cuda'])
            assert 'torch.cuda.is_available() is False' in \
                capsys.readouterr().err, tool


def test_benchmark_train_mode_times_and_attributes_by_stage(tmp_path):
    """A tiny training run: paired iteration times, and per-stage times and
    saved activations that account for every saved tensor once."""
    train_cost = analysis_tool('train_cost')
    bench_models = analysis_tool('bench_models')
    out = tmp_path / 'train.json'
    train_cost.main([
        '--device', 'cpu', '--threads', '1', '--crop', '64', '--repeat', '1',
        '--parts', 'time', 'stages', '--out',
        str(out)
    ])
    result = json.loads(out.read_text())['training']
    fca, convnext = bench_models.SEGMENTORS
    assert result['time'][fca]['runs'] == 1
    assert convnext in result['time'][fca]['ratios']
    assert 'memory' not in result
    parts = ['stage 1', 'stage 2', 'stage 3', 'stage 4', 'outside']
    for name in (fca, convnext):
        stages = result['stages'][name]
        assert list(stages) == parts
        for part in parts[:4]:
            assert stages[part]['forward_ms'] > 0
            assert stages[part]['backward_ms'] > 0
            assert stages[part]['saved_mb'] > 0

    # Saved bytes, counted without attribution: the parts add up to them.
    step = train_cost.TrainStep(
        train_cost.train_segmentor(bench_models.SEGMENTORS[fca], False, 'cpu'),
        2, 64, 'cpu')
    tensors = []
    step.inputs.requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: tensors.append(weakref.ref(t)) or t, lambda t: t):
        loss = step.forward()
    params = {p.untyped_storage().data_ptr() for p in step.model.parameters()}
    storages = {
        t().untyped_storage().data_ptr(): t().untyped_storage().nbytes()
        for t in tensors if t() is not None
    }
    total = sum(v for k, v in storages.items() if k not in params) / 2**20
    del loss
    step.inputs.requires_grad_(False)
    profile = train_cost.StageProfile(step.model, 'cpu').run(step)
    assert sum(p['saved_mb'] for p in profile.values()) == \
        pytest.approx(total)
    assert 0 < profile['stage 3']['saved_mb'] < total
