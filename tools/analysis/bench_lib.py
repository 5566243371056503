"""The timing method the benchmark tools of tools/analysis share.

Paired rounds: the calls of a table run in rounds, one call of each per
round, one after the other, in an order that rotates from round to round
(so no call always runs first, or right after the same other call). Each
call's time is divided by a reference call's time of the same round, and
a table gives the median of these per-round ratios with their quartiles
and range. A load change on a shared machine hits the calls of a round
alike, so the per-round ratio is far steadier than a ratio of medians
timed one model after the other.

The clock is read after the device's queued work is done (CUDA is
synchronised), inference calls run without autograd and, with ``--amp``,
under autocast on the device's type.

Process state: the same forward runs at different speeds in processes
whose allocator is in different states. glibc's malloc serves a block at
or above its mmap threshold with a fresh mapping (page faults on first
touch, unmapped when freed), and returns the top of its heap to the system
above its trim threshold; both thresholds start at 128 KiB and move up
(to 32 and 64 MiB at most) whenever a mapped block is freed, so what a
process allocated and freed before timing (building models, counting
MACs) changes the speed of the large activations after it. With
``--malloc pinned`` (:func:`add_run_arguments`) :func:`start` fixes both
thresholds at those maxima (:data:`MALLOC_PINNED`, through ``mallopt``,
which also stops their moving), so a run's state no longer depends on its
history; ``--malloc default`` leaves glibc's moving thresholds. Every run
records its state (:func:`process_state`).

This module imports only torch and the standard library, so it also runs
on a machine with torch alone.
"""
import argparse
import contextlib
import ctypes
import json
import os
import os.path as osp
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

AMP_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}
METHOD = 'paired rounds, median of per-round ratios [quartiles]'
#: glibc's ``mallopt`` parameters (malloc.h).
MALLOPT_PARAMETERS = {'M_TRIM_THRESHOLD': -1, 'M_MMAP_THRESHOLD': -3}
#: What ``--malloc pinned`` fixes, in bytes: the largest values glibc's
#: dynamic thresholds reach on a 64-bit system
#: (``DEFAULT_MMAP_THRESHOLD_MAX`` and twice it), from the start of the run.
MALLOC_PINNED = {
    'M_MMAP_THRESHOLD': 32 * 2**20,
    'M_TRIM_THRESHOLD': 64 * 2**20
}
MALLOC_MODES = ('pinned', 'default')
#: Environment variables that change the allocator or the threads, recorded
#: with the process state where they are set.
STATE_VARIABLES = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_',
                   'MALLOC_TOP_PAD_', 'MALLOC_MMAP_MAX_', 'MALLOC_ARENA_MAX',
                   'GLIBC_TUNABLES', 'LD_PRELOAD', 'OMP_NUM_THREADS',
                   'MKL_NUM_THREADS', 'MMFCA_FAST_PATHS')


def device_name(name: str) -> str:
    """``name`` if torch can run on it (an argparse type).

    Raises:
        argparse.ArgumentTypeError: Not a torch device, or a CUDA device
            on a machine without one.
    """
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(
            f'{name!r} is not a torch device: {error}')
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(
            f'{name!r}: torch.cuda.is_available() is False (a torch build '
            f'without CUDA, or no GPU visible). Use --device cpu.')
    return name


def positive_int(text: str) -> int:
    """An integer of at least 1 (an argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer')
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be at least 1, got {value}')
    return value


def glibc() -> Optional[ctypes.CDLL]:
    """The C library of this process if it is glibc (it has ``mallopt``
    and ``mallinfo2``), else None (macOS, musl)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
    except (OSError, AttributeError):
        return None
    if not hasattr(libc, 'mallopt'):
        return None
    return libc


def pin_malloc(settings: Optional[Dict[str, int]] = None) -> None:
    """Fix glibc's allocator thresholds for the rest of the process
    (``mallopt``; a threshold set this way no longer moves).

    Args:
        settings (dict, optional): ``mallopt`` parameter name (a key of
            :data:`MALLOPT_PARAMETERS`) -> bytes. Defaults to
            :data:`MALLOC_PINNED`.

    Raises:
        RuntimeError: Not glibc, or glibc refused a value.
    """
    libc = glibc()
    if libc is None:
        raise RuntimeError(
            'Pinning the allocator needs glibc (mallopt), which this '
            'process does not use: pass --malloc default.')
    for name, value in (settings or MALLOC_PINNED).items():
        if libc.mallopt(MALLOPT_PARAMETERS[name], value) != 1:
            raise RuntimeError(f'glibc refused mallopt({name}, {value}).')


def process_state(malloc: Optional[str], **state) -> dict:
    """What the speed of an eager forward depends on besides the model:
    the allocator's settings, the thread counts, the environment variables
    of :data:`STATE_VARIABLES` that are set, and the tool's own entries.

    Args:
        malloc (str, optional): The ``--malloc`` mode, None for a tool
            without the option (glibc's defaults, or the environment's).
        **state: The tool's entries (e.g. where it counted MACs).
    """
    libc = glibc()
    allocator = dict(
        mode=malloc or 'default',
        glibc=libc.gnu_get_libc_version().decode() if libc else None)
    if malloc == 'pinned':
        allocator.update(MALLOC_PINNED)
    else:
        allocator['thresholds'] = ('glibc dynamic (128 KiB at start, up to '
                                   '32 / 64 MiB as mapped blocks are freed)')
    return dict(
        malloc=allocator,
        threads=torch.get_num_threads(),
        interop_threads=torch.get_num_interop_threads(),
        environment={
            name: os.environ[name]
            for name in STATE_VARIABLES if name in os.environ
        },
        **state)


def state_text(state: dict) -> str:
    """A :func:`process_state` on one line."""
    allocator = state['malloc']
    settings = ', '.join(f'{name} {allocator[name]}' for name in MALLOC_PINNED
                         if name in allocator)
    extra = [
        f'{key} {value}' for key, value in state.items()
        if key not in ('malloc', 'threads', 'interop_threads', 'environment')
    ]
    return ', '.join([
        f'malloc {allocator["mode"]}' + (f' ({settings})' if settings else ''),
        f'threads {state["threads"]} (inter-op '
        f'{state["interop_threads"]})'
    ] + extra + [f'environment {state["environment"] or "-"}'])


def add_run_arguments(parser: argparse.ArgumentParser,
                      repeat: int,
                      out: str,
                      amp: bool = True,
                      repeat_help: str = 'timed rounds',
                      malloc: bool = False) -> None:
    """The options every benchmark tool has.

    Args:
        parser (ArgumentParser): The tool's parser.
        repeat (int): Default number of timed rounds.
        out (str): Default JSON file of the results.
        amp (bool): Whether the tool offers ``--amp`` (inference under
            autocast, or training steps that autocast their forward).
        repeat_help (str): What ``--repeat`` counts in this tool.
        malloc (bool): Whether the tool offers ``--malloc`` (the
            allocator's state, see the module docstring), for tools whose
            eager CPU figures are compared across runs.
    """
    parser.add_argument(
        '--device',
        type=device_name,
        default='cuda' if torch.cuda.is_available() else 'cpu',
        help='torch device the models run on (cpu, cuda, cuda:1, ...; '
        'meta runs every forward without computing anything: a check that '
        'no tensor is left on another device, not a timing)')
    parser.add_argument(
        '--threads',
        type=positive_int,
        default=2,
        metavar='N',
        help='CPU threads (torch.set_num_threads)')
    parser.add_argument(
        '--repeat',
        type=positive_int,
        default=repeat,
        metavar='N',
        help=f'{repeat_help} (default {repeat})')
    if amp:
        parser.add_argument(
            '--amp',
            choices=sorted(AMP_DTYPES),
            help='autocast to this dtype on the device type')
    if malloc:
        pinned = ', '.join(f'{name}={value}'
                           for name, value in MALLOC_PINNED.items())
        parser.add_argument(
            '--malloc',
            choices=MALLOC_MODES,
            default='pinned' if glibc() else 'default',
            help=f'glibc allocator state: pinned = thresholds fixed from '
            f'the start ({pinned} bytes, mallopt), so the run does not '
            f'depend on what the process freed before; default = glibc\'s '
            f'moving thresholds (default: pinned with glibc)')
    parser.add_argument(
        '--out',
        default=out,
        metavar='PATH',
        help=f'JSON file of the results ({out})')


def start(args: argparse.Namespace,
          state: Optional[dict] = None,
          **settings) -> dict:
    """Set the thread count (and with ``--malloc pinned`` the allocator's
    thresholds), print the run's settings and return them as the first
    entries of its results.

    Args:
        args (Namespace): Parsed by a parser with :func:`add_run_arguments`.
        state (dict, optional): The tool's entries of the process state
            (:func:`process_state`); with them, or with ``--malloc``, the
            results hold ``process_state`` and it is printed.
        **settings: The tool's own settings to record (e.g. ``mode``).
    """
    torch.set_num_threads(args.threads)
    malloc = getattr(args, 'malloc', None)
    if malloc == 'pinned':
        pin_malloc()
    results = dict(
        device=args.device,
        threads=args.threads,
        amp=getattr(args, 'amp', None),
        torch=torch.__version__,
        **settings,
        method=METHOD)
    print(', '.join(f'{key} {value}' for key, value in results.items()))
    if malloc is not None or state is not None:
        results['process_state'] = process_state(malloc, **(state or {}))
        print(f'process state: {state_text(results["process_state"])}')
    return results


def save(results: dict, path: str) -> None:
    """Write ``results`` to the JSON file ``path`` (folders made)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as file:
        json.dump(results, file, indent=2)
    print(f'\nresults saved to {path}')


def synchronize(device: str) -> None:
    """Wait for the device's queued work, so a timer sees all of it."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def clock(device: str) -> float:
    """:func:`time.perf_counter` once ``device`` has done its queued
    work, in seconds."""
    synchronize(device)
    return time.perf_counter()


def autocast(device: str, amp: Optional[str]):
    """Autocast on the device's type to ``amp``'s dtype, or nothing."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])


def quartiles(values: Sequence[float]) -> Dict[str, float]:
    """Median, first and third quartile (inclusive method), minimum and
    maximum."""
    values = list(values)
    if len(values) == 1:
        q1 = median = q3 = values[0]
    else:
        q1, median, q3 = statistics.quantiles(values, n=4, method='inclusive')
    return dict(median=median, q1=q1, q3=q3, min=min(values), max=max(values))


def paired_ratios(times: Sequence[float],
                  references: Sequence[float]) -> Dict[str, float]:
    """:func:`quartiles` of the per-round ratios ``times / references``."""
    return quartiles([a / b for a, b in zip(times, references)])


def time_rounds(fns: Dict[str, Callable[[], object]],
                device: str,
                warmup: int,
                rounds: int,
                amp: Optional[str] = None,
                inference: bool = True) -> Dict[str, List[float]]:
    """Time every call once per round, one call after the other, in an
    order that rotates from round to round.

    Args:
        fns (dict): Name -> a call to time (one forward, one step).
        device (str): Where the calls run (its work is awaited before each
            reading of the clock).
        warmup (int): Untimed rounds first.
        rounds (int): Timed rounds.
        amp (str, optional): Autocast dtype name (a key of
            :data:`AMP_DTYPES`) for inference calls.
        inference (bool): Run the calls without autograd and in ``amp``;
            False for training steps, which do their own.

    Returns:
        dict: Name -> milliseconds of its call in each round.
    """
    names = list(fns)
    times = {name: [] for name in names}
    context = contextlib.ExitStack()
    if inference:
        context.enter_context(torch.no_grad())
        context.enter_context(autocast(device, amp))
    with context:
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for index in range(rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                begin = clock(device)
                fns[name]()
                times[name].append((clock(device) - begin) * 1000)
    return times


def summarize(times: Dict[str, List[float]],
              references: Sequence[str]) -> Dict[str, dict]:
    """Each call's milliseconds, and the per-round ratios of its time to
    each reference call's (quartiles of both).

    Args:
        times (dict): Name -> ms per round, from :func:`time_rounds`.
        references (sequence): Names to divide by; those not in ``times``
            are left out.

    Returns:
        dict: Name -> ``ms`` (quartiles), ``runs`` and ``ratios``
        (reference -> quartiles of the per-round ratios).
    """
    summary = {}
    for name, values in times.items():
        ratios = {
            reference: paired_ratios(values, times[reference])
            for reference in references
            if reference in times and reference != name
        }
        summary[name] = dict(
            ms=quartiles(values), runs=len(values), ratios=ratios)
    return summary


def report(title: str,
           summary: Dict[str, dict],
           images: Optional[int] = None) -> None:
    """Print a :func:`summarize` table: median ms [quartiles], optionally
    images/s, and each median per-round ratio [quartiles] (range).

    Args:
        title (str): The table's first line.
        summary (dict): From :func:`summarize`.
        images (int, optional): Images per call, for images/s.
    """
    print(f'\n{title}')
    print('  (ms: median [quartiles]; ratio: median of the per-round '
          'ratios [quartiles] (min-max))')
    for name, entry in summary.items():
        ms = entry['ms']
        cells = [f'{ms["median"]:8.1f} ms [{ms["q1"]:.1f}-{ms["q3"]:.1f}]']
        if images:
            cells.append(f'{images * 1000 / ms["median"]:6.1f} images/s')
        for reference, ratio in entry['ratios'].items():
            cells.append(format_ratio(ratio, reference))
        print(f'  {name:32s} ' + '   '.join(cells))


def format_ratio(ratio: Dict[str, float], reference: str = '') -> str:
    """A :func:`paired_ratios` entry as ``median x [q1-q3] (min-max)``,
    the reference's name after the median if given."""
    median = f'{ratio["median"]:.3f}x'
    if reference:
        median += f' {reference}'
    return (f'{median} [{ratio["q1"]:.3f}-{ratio["q3"]:.3f}] '
            f'({ratio["min"]:.2f}-{ratio["max"]:.2f})')


def ratio_text(value: float, reference: float) -> str:
    """``value / reference`` as text, or '-' for a zero reference."""
    return f'{value / reference:.3f}x' if reference else '-'
