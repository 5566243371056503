"""The process state of the eager latency benchmark: glibc's allocator
thresholds pinned by ``--malloc pinned`` (read back from glibc's own
accounting), the state recorded in the results, and MACs never counted in
the timing process."""
import ctypes
import importlib
import json
import os
import subprocess
import sys

import pytest

#: Builds models, runs the tool, starts processes.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ANALYSIS = os.path.join(REPO, 'tools', 'analysis')
MIB = 2**20

#: Run in a fresh interpreter: optionally pin the allocator with the
#: tool's function, then probe glibc (malloc.h): a block is served by a
#: mapping of its own when it is at or above the mmap threshold (mallinfo2's
#: ``hblks`` counts them), and freeing the top of the heap gives it back
#: to the system when it exceeds the trim threshold (``keepcost`` is the
#: releasable top).
PROBE = r"""
import ctypes, json, sys
sys.path.insert(0, sys.argv[1])
import bench_lib

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks',
        'fsmblks', 'uordblks', 'fordblks', 'keepcost')]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Mallinfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
MIB = 2**20
if sys.argv[2] == 'pinned':
    bench_lib.pin_malloc()


def mapped(size):
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    result = libc.mallinfo2().hblks - before
    libc.free(block)
    return result


def kept_after_freeing(blocks):
    libc.malloc_trim(0)
    held = [libc.malloc(16 * MIB) for _ in range(blocks)]
    for block in reversed(held):
        libc.free(block)
    return libc.mallinfo2().keepcost


print(json.dumps(dict(
    mapped_31=mapped(31 * MIB), mapped_33=mapped(33 * MIB),
    kept_48=kept_after_freeing(3), kept_80=kept_after_freeing(5))))
"""


def analysis_tool(name):
    sys.path.insert(0, ANALYSIS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, '-c', PROBE, ANALYSIS, mode],
                         check=True,
                         capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def has_glibc() -> bool:
    return hasattr(ctypes.CDLL(None), 'mallinfo2')


@pytest.mark.skipif(not has_glibc(), reason='needs glibc 2.33+')
def test_pinned_malloc_fixes_both_thresholds_where_glibc_reads_them():
    """Pinned, glibc maps a 33 MiB block but not a 31 MiB one (mmap
    threshold 32 MiB), and keeps a freed 48 MiB top but gives an 80 MiB
    one back once it passes 64 MiB (trim threshold 64 MiB; the last 16 MiB
    stay). In a fresh process with glibc's own thresholds the 31 MiB block
    is mapped."""
    pinned = probe('pinned')
    assert (pinned['mapped_31'], pinned['mapped_33']) == (0, 1)
    assert pinned['kept_48'] >= 48 * MIB
    assert pinned['kept_80'] < 32 * MIB
    assert probe('default')['mapped_31'] == 1


def test_latency_records_the_process_state(tmp_path):
    """The tool run as a command: by default the allocator is pinned, and
    the results say so with the values, where the MACs were counted, the
    thread counts and the fast-paths switch (off here through its
    environment variable, which is recorded too)."""
    out = tmp_path / 'latency.json'
    result = subprocess.run([
        sys.executable,
        os.path.join(ANALYSIS, 'latency.py'), '--device', 'cpu', '--threads',
        '1', '--models', 'FcaFormer-L1', '--repeat', '1', '--sgemm-size', '64',
        '--out',
        str(out)
    ],
                            cwd=REPO,
                            env=dict(os.environ, MMFCA_FAST_PATHS='0'),
                            capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads(out.read_text())['process_state']
    assert state['macs'] == 'counted in a subprocess'
    assert state['threads'] == 1
    assert state['fast_paths'] is False
    assert state['environment']['MMFCA_FAST_PATHS'] == '0'
    if has_glibc():
        assert state['malloc']['mode'] == 'pinned'
        assert state['malloc']['M_MMAP_THRESHOLD'] == 32 * MIB
        assert state['malloc']['M_TRIM_THRESHOLD'] == 64 * MIB
        assert 'process state: malloc pinned (M_MMAP_THRESHOLD 33554432, ' \
            'M_TRIM_THRESHOLD 67108864), threads 1' in result.stdout


def test_latency_counts_no_macs_in_the_timing_process(tmp_path, monkeypatch):
    """With the counter raising in the timing process, a run still gets
    every model's MACs (from its subprocess) and its sgemm shares; with
    ``--macs in-process`` the same run reaches the raising counter."""
    latency = analysis_tool('latency')

    def refuse(*args, **kwargs):
        raise RuntimeError('MACs counted in the timing process')

    monkeypatch.setattr(latency, 'complexity', refuse)
    argv = [
        '--device', 'cpu', '--threads', '1', '--models', 'FcaFormer-L1',
        '--repeat', '1', '--sgemm-size', '64', '--malloc', 'default', '--out',
        str(tmp_path / 'latency.json')
    ]
    results = latency.main(argv)
    assert results['gmacs_224']['FcaFormer-L1'] > 0
    assert results['sgemm_share']['FcaFormer-L1']['median'] > 0
    state = results['process_state']
    assert state['macs'] == 'counted in a subprocess'
    assert state['malloc']['mode'] == 'default'
    assert 'M_MMAP_THRESHOLD' not in state['malloc']
    with pytest.raises(RuntimeError, match='timing process'):
        latency.main(argv + ['--macs', 'in-process'])
