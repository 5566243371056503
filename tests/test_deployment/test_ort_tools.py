"""The ONNX Runtime inspection helpers of mmfca.deployment.onnx (session
settings, node counts, profile shares) and the export of a timm FcaFormer
where no OpenMMLab package can be imported."""
import importlib
import importlib.util
import json
import os

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from analysis_tools import analysis_tool
from onnx import helper

from mmfca.deployment import onnx as deployment_onnx
from mmfca.deployment.onnx import (ORT_LEVELS, export_onnx, kernel_shares,
                                   node_counts, ort_session, profile_shares,
                                   time_onnx)

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = (4, 8)


def torch_timm_only():
    """tests/test_models/test_torch_timm_only.py, for its interpreter that
    refuses the OpenMMLab packages."""
    path = os.path.join(REPO, 'tests', 'test_models',
                        'test_torch_timm_only.py')
    spec = importlib.util.spec_from_file_location('torch_timm_only', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class LinearNormGelu(nn.Module):
    """Linear, LayerNorm, GELU over the last axis of the images: one node
    each of LayerNormalization and Gelu in the export (opset 18+)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(SHAPE[1], 16)
        self.norm = nn.LayerNorm(16)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.linear(images)))


@pytest.fixture(scope='module')
def tiny_export(tmp_path_factory):
    torch.manual_seed(0)
    model = LinearNormGelu()
    path = str(tmp_path_factory.mktemp('tiny') / 'tiny.onnx')
    export_onnx(model, path, SHAPE)
    return model, path


def feed():
    return {
        'images': np.random.RandomState(0).randn(1, 3,
                                                 *SHAPE).astype(np.float32)
    }


@pytest.mark.slow
def test_node_counts_of_the_export_and_of_the_graph_ort_runs(
        tiny_export, tmp_path):
    model, path = tiny_export
    # Not an FcaFormer: the export leaves its layers as they are.
    assert type(model.linear) is nn.Linear
    exported = node_counts(path)
    assert exported['LayerNormalization'] == 1
    assert exported['Gelu'] == 1
    assert sum(exported.values()) == len(onnx.load(path).graph.node)
    assert node_counts(onnx.load(path)) == exported
    # With ORT's optimisations off, the graph it writes is the export's.
    disabled = str(tmp_path / 'disabled.onnx')
    ort_session(path, level='disable', optimized_path=disabled)
    assert node_counts(disabled) == exported
    optimized = str(tmp_path / 'all.onnx')
    session = ort_session(path, optimized_path=optimized)
    counts = node_counts(optimized)
    assert sum(counts.values()) == len(
        onnx.load(optimized, load_external_data=False).graph.node)
    assert counts['LayerNormalization'] == 1
    with torch.no_grad():
        expected = model(torch.from_numpy(feed()['images'])).numpy()
    np.testing.assert_allclose(
        session.run(None, feed())[0], expected, rtol=0, atol=1e-5)


def test_node_counts_prefix_other_domains_and_count_subgraphs():
    branch = helper.make_graph(
        [helper.make_node('Identity', ['x'], ['y'])], 'branch', [],
        [helper.make_tensor_value_info('y', onnx.TensorProto.FLOAT, [1])])
    nodes = [
        helper.make_node(
            'FusedMatMul', ['a', 'a'], ['b'], domain='com.microsoft'),
        helper.make_node('Relu', ['b'], ['x']),
        helper.make_node('Relu', ['x'], ['c'], domain='ai.onnx'),
        helper.make_node(
            'If', ['cond'], ['y'], then_branch=branch, else_branch=branch),
    ]
    graph = helper.make_graph(nodes, 'g', [], [])
    counts = node_counts(helper.make_model(graph))
    assert counts == {
        'com.microsoft:FusedMatMul': 1,
        'Relu': 2,
        'If': 1,
        'Identity': 2
    }


@pytest.mark.slow
def test_ort_session_states_its_settings(tiny_export):
    _, path = tiny_export
    levels = onnxruntime.GraphOptimizationLevel
    for level, expected in [(None, levels.ORT_ENABLE_ALL),
                            ('basic', levels.ORT_ENABLE_BASIC),
                            ('extended', levels.ORT_ENABLE_EXTENDED),
                            ('disable', levels.ORT_DISABLE_ALL)]:
        kwargs = {} if level is None else dict(level=level)
        options = ort_session(path, threads=1, **kwargs).get_session_options()
        assert options.graph_optimization_level == expected
        assert options.intra_op_num_threads == 1
        assert options.inter_op_num_threads == 1
        assert options.get_session_config_entry(
            'session.intra_op.allow_spinning') == '0'
        assert not options.enable_profiling
    assert set(ORT_LEVELS) == {'disable', 'basic', 'extended', 'all'}
    with pytest.raises(ValueError, match='level must be one of'):
        ort_session(path, level='layout')


def test_time_onnx_pairs_the_file_with_its_model(tiny_export, monkeypatch):
    """time_onnx times the file in a session of ort_session (threads that
    sleep when idle, so they leave the cores to the PyTorch call of the
    pair) and summarises the per-pair ratios."""
    model, path = tiny_export
    sessions = []

    def recorded(*args, **kwargs):
        session = ort_session(*args, **kwargs)
        sessions.append(session.get_session_options())
        return session

    monkeypatch.setattr(deployment_onnx, 'ort_session', recorded)
    result = time_onnx(model, path, SHAPE, rounds=5, threads=1, warmup=1)
    options, = sessions
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry(
        'session.intra_op.allow_spinning') == '0'
    assert result['rounds'] == 5
    assert result['onnxruntime_ms'] > 0 and result['torch_ms'] > 0
    assert result['ratio_min'] <= result['ratio_q1'] <= result['ratio'] \
        <= result['ratio_q3'] <= result['ratio_max']


@pytest.mark.slow
def test_profile_shares_sum_to_one_and_name_the_ops_ort_ran(
        tiny_export, tmp_path):
    _, path = tiny_export
    optimized = str(tmp_path / 'run.onnx')
    session = ort_session(
        path, optimized_path=optimized, profile_prefix=str(tmp_path / 'p'))
    shares = profile_shares(session, feed(), runs=5, warmup=2)
    assert sum(shares.values()) == pytest.approx(1)
    assert list(shares.values()) == sorted(shares.values(), reverse=True)
    # Every node of the graph ORT runs runs once per run; the profile
    # names op types without their domain.
    assert set(shares) == {op.split(':')[-1] for op in node_counts(optimized)}
    assert 'LayerNormalization' in shares
    assert [name for name in os.listdir(tmp_path) if name.startswith('p')]


def test_kernel_shares_leave_out_the_warmup_runs():
    """Two runs: the first (skipped) ran a slow Conv; the second 30 us of
    Gemm and 10 us of Add, fences and other categories not counted."""

    def kernel(op, ts, dur):
        return dict(
            cat='Node',
            name=f'n_{op}_kernel_time',
            ts=ts,
            dur=dur,
            args=dict(op_name=op))

    events = [
        dict(cat='Session', name='model_run', ts=0, dur=500),
        kernel('Conv', 10, 400),
        dict(cat='Session', name='model_run', ts=1000, dur=50),
        kernel('Gemm', 1010, 20),
        kernel('Add', 1030, 10),
        kernel('Gemm', 1040, 10),
        dict(
            cat='Node',
            name='n_Gemm_fence_before',
            ts=1009,
            dur=99,
            args=dict(op_name='Gemm')),
        dict(
            cat='Session',
            name='SequentialExecutor::Execute',
            ts=1000,
            dur=999),
    ]
    assert kernel_shares(events, skip_runs=1) == {'Gemm': 0.75, 'Add': 0.25}
    everything = kernel_shares(events)
    assert everything['Conv'] == pytest.approx(400 / 440)
    with pytest.raises(ValueError, match='cannot skip 2'):
        kernel_shares(events, skip_runs=2)
    with pytest.raises(ValueError, match='no kernel time'):
        kernel_shares(events[:1])


@pytest.mark.slow
def test_a_timm_fcaformer_exports_in_deploy_form_without_openmmlab(tmp_path):
    """A timm fcaformer_l1 (trained-like BatchNorm statistics, unit layer
    scales) exported where no OpenMMLab package imports: the file is in
    deploy form (no BatchNormalization left) and ONNX Runtime gives the
    eval-mode outputs of the model before folding."""
    module = torch_timm_only()
    path = str(tmp_path / 'l1.onnx')
    out = module.run_without(
        module.OPENMMLAB, f"""
        import numpy as np, timm, torch
        import mmfca
        from mmfca.deployment.onnx import (export_onnx, node_counts,
                                           ort_session)
        from mmfca.models.layers import ConvBN
        torch.manual_seed(0)
        model = timm.create_model('fcaformer_l1', layer_scale_init_value=1.)
        model.train()
        with torch.no_grad():
            model(torch.randn(4, 3, 64, 64))
        model.eval()
        images = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            expected = model(images).numpy()
        assert any(isinstance(m, ConvBN) for m in model.modules())
        export_onnx(model, {path!r}, (64, 64))
        assert not any(isinstance(m, ConvBN) for m in model.modules())
        counts = node_counts({path!r})
        assert 'BatchNormalization' not in counts, counts
        assert counts['Conv'] > 0, counts
        outputs = ort_session({path!r}).run(None, {{'images': images.numpy()}})
        error = float(np.abs(outputs[0] - expected).max())
        assert error <= 1e-4, error
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in
                        {module.OPENMMLAB!r})
        assert not loaded, loaded
        print('ok', error)
        """)
    assert out.strip().splitlines()[-1].startswith('ok')


def test_runtimes_inspection_needs_onnxruntime_and_states_its_level(capsys):
    runtimes = analysis_tool('runtimes')
    assert runtimes.parse_args(['--device', 'cpu']).ort_level == 'all'
    for flag in ('--node-counts', '--ort-profile'):
        with pytest.raises(SystemExit):
            runtimes.parse_args(
                ['--device', 'cpu', '--runtimes', 'eager', flag])
        assert 'add onnxruntime to --runtimes' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        runtimes.parse_args(['--device', 'cpu', '--ort-level', 'max'])
    assert "invalid choice: 'max'" in capsys.readouterr().err


@pytest.mark.slow
def test_runtimes_inspection_tables(tiny_export, capsys):
    """--node-counts and --ort-profile of one export: the counts of both
    graphs (the one ORT wrote at the stated level), printed as a table,
    and the profile's shares."""
    runtimes = analysis_tool('runtimes')
    _, path = tiny_export
    optimized = runtimes.optimized_path(path)
    ort_session(path, level='basic', optimized_path=optimized)
    args = runtimes.parse_args([
        '--device', 'cpu', '--threads', '1', '--runtimes', 'onnxruntime',
        '--ort-level', 'basic', '--node-counts', '--ort-profile', '--repeat',
        '4'
    ])
    inspected = runtimes.inspect_onnx('tiny', path, torch.randn(1, 3, *SHAPE),
                                      args, 'case')
    counts = inspected['node_counts']
    assert counts['exported'] == dict(node_counts(path))
    assert counts['after_ort'] == dict(node_counts(optimized))
    profile = inspected['ort_profile']
    assert (profile['runs'], profile['warmup']) == (4, runtimes.PROFILE_WARMUP)
    assert sum(profile['shares'].values()) == pytest.approx(1)
    assert set(profile['shares']) == set(counts['after_ort'])
    assert json.loads(json.dumps(inspected)) == inspected
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if 'exported' in line)
    assert 'after ORT basic' in header
    row = next(line for line in lines
               if line.split()[:1] == ['LayerNormalization'])
    assert row.split()[1:] == ['1', '1']
    total = next(line for line in lines if line.split()[:1] == ['total'])
    assert total.split()[1:] == [
        str(sum(counts['exported'].values())),
        str(sum(counts['after_ort'].values()))
    ]
    assert any('ONNX Runtime profile, case, tiny (level basic, 1 threads, 4 '
               'runs after 3)' in line for line in lines)


@pytest.mark.slow
def test_runtimes_records_the_ort_level_and_the_inspection(tmp_path):
    """The classifier case in ONNX Runtime alone, at level basic, with
    node counts: the level is in the results, both models' counts are,
    and ORT's graph differs from the export (basic already fuses)."""
    runtimes = analysis_tool('runtimes')
    out = tmp_path / 'runtimes.json'
    results = runtimes.main([
        '--device', 'cpu', '--threads', '1', '--runtimes', 'onnxruntime',
        '--cases', 'classifier', '--repeat', '1', '--ort-level', 'basic',
        '--node-counts', '--out',
        str(out)
    ])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results['ort_level'] == 'basic'
    assert results['process_state']['macs'] == 'not counted'
    inspected = results['runtimes']['classifier']['onnxruntime']
    assert set(inspected) == {'FcaFormer-L2', 'ConvNeXt-T'}
    for counts in inspected.values():
        assert 'ort_profile' not in counts
        exported, after = counts['node_counts'].values()
        assert exported['LayerNormalization'] == \
            after['LayerNormalization'] > 0
        assert exported != after
