"""tools/analysis/cuda_latency.py, the one GPU benchmark: its ``--device
cpu --quick`` run has every case in its summary table and its JSON, in a
process where the OpenMMLab packages cannot be imported; its pairing,
budget and docs hold."""
import json
import os
import re
import statistics
import subprocess
import sys
import time

import pytest
import timm
import torch
from analysis_tools import ANALYSIS, analysis_tool

import mmfca  # noqa: F401  registers fcaformer_l* in timm

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ANALYSIS, 'cuda_latency.py')
FCA, CNX = 'FcaFormer-L2', 'ConvNeXt-T'
# Runs the script as ``python SCRIPT ARGS`` does (its folder first on
# sys.path), with the OpenMMLab packages made unimportable.
WITHOUT_OPENMMLAB = (
    'import runpy, sys\n'
    'for name in ("mmengine", "mmcv", "mmpretrain", "mmseg", "mmdet"):\n'
    '    sys.modules[name] = None\n'
    'sys.argv = sys.argv[1:]\n'
    'sys.path.insert(0, sys.argv[0].rsplit("/", 1)[0])\n'
    'runpy.run_path(sys.argv[0], run_name="__main__")\n')


def cuda_latency():
    """The tool as a module, imported as the tools import each other."""
    return analysis_tool('cuda_latency')


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    """stdout and JSON of one ``--device cpu --quick`` run."""
    folder = tmp_path_factory.mktemp('cuda_latency')
    out = folder / 'results.json'
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop('OUT', None)
    run = subprocess.run([
        sys.executable, '-c', WITHOUT_OPENMMLAB, SCRIPT, '--device', 'cpu',
        '--quick', '--out',
        str(out)
    ],
                         cwd=folder,
                         env=env,
                         capture_output=True,
                         text=True,
                         timeout=1800)
    assert run.returncode == 0, run.stderr[-4000:]
    return run.stdout, json.loads(out.read_text())


def summary(stdout):
    """The lines from the summary table's title to the end."""
    lines = stdout.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith('summary')]
    assert starts, stdout[-2000:]
    return lines[starts[-1]:]


@pytest.mark.slow
def test_quick_run_has_every_case(quick_run):
    stdout, results = quick_run
    cases = {(case['section'], case['batch'], case['dtype'], case['mode'])
             for case in results['cases']}
    assert cases == ({('classifier', batch, dtype, 'eager')
                      for batch in (1, 2)
                      for dtype in ('fp32', 'bf16', 'fp16')}
                     | {('dense', 2, dtype, 'eager')
                        for dtype in ('fp32', 'bf16')}
                     | {('train', 2, 'bf16', 'eager'),
                        ('compile', 2, 'bf16', 'compile default')})
    assert all(case['status'] == 'ok' for case in results['cases']), [
        case.get('error') for case in results['cases']
    ]
    compiled = [c for c in results['cases'] if c['section'] == 'compile']
    assert compiled[0]['backend'] == 'eager'
    assert set(compiled[0]['compile_s']) == {FCA, CNX}
    assert set(results['section_s']) == {
        'check', 'classifier', 'dense', 'train', 'profile', 'compile'
    }
    # The summary is printed last, after the path of the JSON, with a row
    # per case, per check and per profile.
    table = summary(stdout)
    assert 'results saved to' in stdout.split(table[0])[0]
    for section, batch, dtype, mode in cases:
        assert any(
            re.match(
                rf'{section}\s+b{batch} 32px {dtype} {mode}\s+[\d.]+'
                rf'\s+[\d.]+\s+[\d.]+x? \[', line)
            for line in table), (section, batch, dtype, mode)
    assert sum(line.startswith('check ') for line in table) == 2
    assert sum(line.startswith('profile ') for line in table) == 2
    assert re.match(r'\d+ s in all: check \d+ s', table[-1])


@pytest.mark.slow
def test_quick_run_ratios_are_medians_of_the_per_round_ratios(quick_run):
    _, results = quick_run
    rounds = {'classifier': 2, 'dense': 2, 'train': 2, 'compile': 2}
    for case in results['cases']:
        times = case['times_ms']
        assert len(times[FCA]) == len(times[CNX]) == rounds[case['section']]
        assert all(ms > 0 for values in times.values() for ms in values)
        ratios = [a / b for a, b in zip(times[FCA], times[CNX])]
        assert case['ratio']['median'] == pytest.approx(
            statistics.median(ratios))
        assert case['ratio']['min'] == pytest.approx(min(ratios))
        for name in (FCA, CNX):
            assert case['ms'][name]['median'] == pytest.approx(
                statistics.median(times[name]))


def adamw_state_mb(parameters):
    """Parameters and AdamW's two moments, float32, in MiB."""
    return 3 * 4 * parameters / 2**20


@pytest.mark.slow
def test_quick_run_train_step_has_each_models_memory(quick_run):
    _, results = quick_run
    train, = [c for c in results['cases'] if c['section'] == 'train']
    memory = train['memory']
    assert set(memory) == {FCA, CNX}
    # No allocator counters on the CPU: no peak, not a made-up one.
    assert all(entry['peak_mb'] is None for entry in memory.values())

    def count(model):
        return sum(p.numel() for p in model.parameters())

    # The light head: a 1x1 conv per level to 128, a 1x1 conv to 150.
    head = sum(c * 128 + 128 for c in (96, 192, 384, 768)) + 128 * 150 + 150
    fca = timm.create_model('fcaformer_l2', features_only=True)
    widened = sum(c * w + 2 * w
                  for c, w in zip(fca.feature_info.channels(), (96, 192, 384,
                                                                768)))
    cnx = timm.create_model('convnext_tiny', features_only=True)
    assert memory[FCA]['state_mb'] == pytest.approx(
        adamw_state_mb(count(fca) + widened + head), rel=1e-3)
    assert memory[CNX]['state_mb'] == pytest.approx(
        adamw_state_mb(count(cnx) + head), rel=1e-3)


@pytest.mark.slow
def test_quick_run_check_and_profile(quick_run):
    _, results = quick_run
    for part in ('classifier', 'dense'):
        check = results['check'][part]
        # On the CPU the device is the CPU: the same computation.
        assert check['device_vs_cpu'] == 0
        scale = max(1.0, check['output_max_abs'])
        assert 0 < check['cpu_fp32_vs_fp64'] < 1e-4 * scale
        assert check['deploy_vs_eval'] < 1e-4 * scale
    assert set(results['profile']) == {'classifier b2 bf16', 'train step bf16'}
    for models in results['profile'].values():
        assert set(models) == {FCA, CNX}
        for entry in models.values():
            assert entry['activity'] == 'cpu operators'
            rows = entry['top']
            assert 0 < len(rows) <= 15
            times = [row['ms_per_step'] for row in rows]
            assert times == sorted(times, reverse=True) and times[0] > 0
            assert sum(row['share'] for row in rows) <= 1 + 1e-9
            assert any(row['name'].startswith('aten::') for row in rows)


def test_rounds_alternate_the_order_and_time_each_call():
    tool = cuda_latency()
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in 'AB'}
    ticks = iter(range(100))
    times = tool.paired_rounds(
        fns, lambda fn: (fn(), next(ticks))[1], warmup=1, rounds=3)
    assert calls == list('AB'
                         'AB'
                         'BA'
                         'AB')
    assert times == {'A': [0, 3, 4], 'B': [1, 2, 5]}


def test_time_limit_stops_a_case():
    tool = cuda_latency()
    began = time.perf_counter()
    with pytest.raises(tool.BudgetSpent, match='budget ran out'):
        with tool.time_limit(0.05):
            time.sleep(5)
    assert time.perf_counter() - began < 2
    time.sleep(0.1)  # the timer is cancelled: nothing fires after the block


def test_compile_cases_past_the_budget_are_skipped(tmp_path, capsys):
    tool = cuda_latency()
    results = tool.main([
        '--device', 'cpu', '--sections', 'compile', '--budget-s', '0', '--out',
        str(tmp_path / 'r.json')
    ])
    # Six cases (three dtypes, two batches), bf16 first, the largest
    # batch first; none is run.
    assert [(c['dtype'], c['batch'], c['mode']) for c in results['cases']] \
        == [(dtype, batch, f'compile {mode}')
            for dtype in ('bf16', 'fp32', 'fp16')
            for batch, mode in ((64, 'default'), (1, 'reduce-overhead'))]
    assert all(c['status'] == 'skipped' and 'ms' not in c
               for c in results['cases'])
    table = summary(capsys.readouterr().out)
    assert sum('skipped: ' in line for line in table) == 6


def test_workload_options_and_their_checks(capsys):
    tool = cuda_latency()
    full = tool.parse_args([])
    assert (full.classifier_size, full.classifier_batch, full.dense_size,
            full.train_batch, full.compile_backend) == (224, [1, 64], 512, 8,
                                                        'inductor')
    quick = tool.parse_args(['--quick', '--dense-size', '64'])
    assert (quick.dense_size, quick.rounds_train, quick.compile_cases,
            quick.compile_backend) == (64, 2, 1, 'eager')
    with pytest.raises(SystemExit):
        tool.parse_args(['--dense-size', '100'])
    assert 'multiple of 32' in capsys.readouterr().err


def test_help_and_docs_give_the_same_commands(capsys):
    tool = cuda_latency()
    with pytest.raises(SystemExit):
        tool.parse_args(['--help'])
    help_text = capsys.readouterr().out
    for section in tool.SECTIONS:
        assert section in help_text
    command = re.compile(r'^\s*(python tools/analysis/cuda_latency\.py.*)$',
                         re.M)
    examples = command.findall(tool.__doc__)
    with open(os.path.join(REPO, 'docs', 'benchmarks.md')) as file:
        documented = command.findall(file.read())
    assert len(examples) >= 3
    assert sorted(set(examples)) == sorted(set(documented))
    assert any(c.endswith('--device cpu --quick') for c in examples)
    # Every example parses.
    for example in examples:
        tool.parse_args(example.split()[2:])


def test_the_dense_backbone_has_the_official_widths():
    tool = cuda_latency()
    with torch.no_grad():
        outs = tool.DenseFcaFormer().eval()(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 96, 16, 16), (1, 192, 8, 8),
                                              (1, 384, 4, 4), (1, 768, 2, 2)]
