"""FcaFormer-L2 against ConvNeXt-T on a GPU, paired, in one command meant
to fit a GPU lease of one command of at most 8 minutes (``--budget-s``),
with torch and timm only (no OpenMMLab package).

FcaFormer-L2 is mmfca's timm model (``import mmfca`` needs torch and timm
alone), ConvNeXt-T is timm's ``convnext_tiny``; random weights. The
sections, in the order they run:

* ``check``: FcaFormer-L2, the classifier and the dense backbone, weights
  perturbed so that every layer counts: fp32 on the device against the same
  weights in fp32 on the CPU, and deploy form against eval mode on the
  device; max abs differences, next to the CPU's own fp32 rounding (fp32
  against fp64);
* ``classifier``: the classifiers at 224x224, batch 1 and 64, in fp32, bf16
  autocast and fp16 autocast, eager; FcaFormer in deploy form
  (:func:`mmfca.models.layers.fold_for_inference`);
* ``dense``: the dense backbones (timm's ``features_only``; FcaFormer with
  the official widened outputs 96, 192, 384, 768) at 512x512, batch 8,
  fp32 and bf16;
* ``train``: a training step of each dense backbone with a light decode
  head (a 1x1 conv per level to 128 channels, upsampled to 1/4 and summed,
  a 1x1 classifier to 150 classes, cross entropy against random labels):
  forward, backward and AdamW step at 512x512, batch 8, bf16 autocast; ms
  per step, and each model's peak memory (CUDA's max_memory_allocated
  over a step, less what was allocated before the model was built);
* ``profile``: torch.profiler's top kernels by self CUDA time (top
  operators by self CPU time on a CPU) of each model, for the classifier
  at the largest batch in bf16 and for the training step;
* ``compile``: the classifier cases under ``torch.compile`` (mode
  ``default`` for batches above 1, ``reduce-overhead`` for batch 1), last,
  in the order of ``--compile-dtypes``, each only while ``--budget-s``
  leaves time for it; a case that fails or runs out of time is reported
  as such and the others go on.

Every timing is paired: the two models' calls alternate, the order flipping
each round, each call timed with CUDA events after a synchronize
(``time.perf_counter`` on a CPU); a ratio is the median of the per-round
ratios FcaFormer-L2 / ConvNeXt-T [quartiles]. TF32 is off throughout (cuDNN
and cuBLAS). A summary table is printed last; the full numbers, every
round's times included, go to ``--out`` as JSON.

Examples::

    python tools/analysis/cuda_latency.py
    python tools/analysis/cuda_latency.py --budget-s 300 --compile-dtypes bf16
    python tools/analysis/cuda_latency.py --sections check classifier dense
    python tools/analysis/cuda_latency.py --device cpu --quick
"""
import argparse
import contextlib
import copy
import functools
import os
import signal
import threading
import time
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from bench_lib import device_name, paired_ratios, positive_int, quartiles, save

import mmfca  # noqa: F401  registers fcaformer_l* in timm
from mmfca.models.layers import OutputProjection, fold_for_inference

FCAFORMER = 'FcaFormer-L2'
CONVNEXT = 'ConvNeXt-T'
DENSE_WIDTHS = (96, 192, 384, 768)
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
SECTIONS = ('check', 'classifier', 'dense', 'train', 'profile', 'compile')
NUM_CLASSES = 150
HEAD_WIDTH = 128
ADAMW = dict(lr=1e-4, weight_decay=0.01)
#: What the first compile case is assumed to take before one has run.
FIRST_COMPILE_S = 60.0
#: The workload of a full run, and of ``--quick`` (a check that the script
#: runs, not a measurement).
WORKLOADS = {
    'full':
    dict(
        classifier_size=224,
        classifier_batch=[1, 64],
        dense_size=512,
        dense_batch=8,
        train_batch=8,
        rounds_classifier=100,
        rounds_dense=50,
        rounds_train=25,
        rounds_compile=50,
        warmup=5,
        profile_steps=5,
        compile_cases=None),
    'quick':
    dict(
        classifier_size=32,
        classifier_batch=[1, 2],
        dense_size=32,
        dense_batch=2,
        train_batch=2,
        rounds_classifier=2,
        rounds_dense=2,
        rounds_train=2,
        rounds_compile=2,
        warmup=1,
        profile_steps=1,
        compile_cases=1),
}


class DenseFcaFormer(nn.Module):
    """timm's ``features_only`` FcaFormer with the official widened outputs
    (1x1 conv + LayerNorm per stage), as the dense backbone has them."""

    def __init__(self, name: str = 'fcaformer_l2'):
        super().__init__()
        self.features = timm.create_model(name, features_only=True)
        self.outputs = nn.ModuleList(
            OutputProjection(info['num_chs'], width) for info, width in zip(
                self.features.feature_info.get_dicts(), DENSE_WIDTHS))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [
            output(feature)
            for output, feature in zip(self.outputs, self.features(x))
        ]


class LightDecodeHead(nn.Module):
    """A light segmentation head: a 1x1 conv per level to one width, each
    upsampled to the first level's size and summed, a 1x1 classifier.

    Args:
        in_channels (Sequence[int]): Channels of each level.
        width (int): The common width of the levels.
        num_classes (int): Classes of the classifier.
    """

    def __init__(self,
                 in_channels: Sequence[int],
                 width: int = HEAD_WIDTH,
                 num_classes: int = NUM_CLASSES):
        super().__init__()
        self.laterals = nn.ModuleList(
            nn.Conv2d(channels, width, 1) for channels in in_channels)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        fused = sum(
            F.interpolate(
                lateral(feature),
                size=size,
                mode='bilinear',
                align_corners=False)
            for lateral, feature in zip(self.laterals, features))
        return self.classifier(fused)


def build_classifier(name: str) -> nn.Module:
    """A timm classifier of 1000 classes."""
    return timm.create_model('fcaformer_l2' if name ==
                             FCAFORMER else 'convnext_tiny')


def build_dense(name: str) -> nn.Module:
    """The dense backbone of ``name``: outputs of 96, 192, 384, 768
    channels at 1/4 ... 1/32."""
    if name == FCAFORMER:
        return DenseFcaFormer()
    return timm.create_model('convnext_tiny', features_only=True)


def for_inference(name: str, model: nn.Module,
                  device: torch.device) -> nn.Module:
    """``model`` on ``device`` in eval mode, FcaFormer in deploy form
    (folded after the move, so its precomputed masks are made there)."""
    model = model.to(device).eval()
    return fold_for_inference(model) if name == FCAFORMER else model


def autocast(device: torch.device, dtype: str):
    """Autocast to ``dtype`` on the device's type; nothing for fp32."""
    if dtype == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Add noise to every floating-point weight and BN statistic in place
    (variances and cross scales set positive), so that the init's layer
    scales of 1e-6 and BN statistics of 0 and 1 hide no difference."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                noise = torch.randn(value.shape, generator=generator)
                if name.endswith(('running_var', 'cross_scale')):
                    value.copy_(1 + 0.3 * noise.abs())
                else:
                    value.add_(0.05 * noise)
    return model


@contextlib.contextmanager
def tf32_off() -> Iterator[None]:
    """TF32 off in cuBLAS and cuDNN, cuDNN's autotuner on (the shapes are
    fixed), restored on exit."""
    before = (torch.backends.cuda.matmul.allow_tf32,
              torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32,
         torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = before


class Timer:
    """Milliseconds of one call: CUDA events recorded around it once the
    device's queued work is done, or ``time.perf_counter`` on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == 'cuda'
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn: Callable[[], object]) -> float:
        if not self.cuda:
            begin = time.perf_counter()
            fn()
            return (time.perf_counter() - begin) * 1000
        torch.cuda.synchronize()
        self.start.record()
        fn()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end)


def paired_rounds(calls: Dict[str, Callable[[], object]], timer: Timer,
                  warmup: int, rounds: int) -> Dict[str, List[float]]:
    """Each call's milliseconds in each round: one call of each per round,
    the order reversed every other round (A B, B A, A B, ...), after
    ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    names = list(calls)
    times = {name: [] for name in names}
    for index in range(rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            times[name].append(timer(calls[name]))
    return times


def paired_result(times: Dict[str, List[float]]) -> dict:
    """A case's results: each model's ms (quartiles), the per-round ratios
    FcaFormer / ConvNeXt (quartiles) and the times themselves."""
    return dict(
        ms={
            name: quartiles(values)
            for name, values in times.items()
        },
        ratio=paired_ratios(times[FCAFORMER], times[CONVNEXT]),
        times_ms=times)


def max_abs_diff(outputs: Sequence[torch.Tensor],
                 references: Sequence[torch.Tensor]) -> float:
    """The largest absolute difference over a model's outputs (compared in
    float64 on the CPU)."""
    return max((out.cpu().double() - ref.cpu().double()).abs().max().item()
               for out, ref in zip(outputs, references))


def as_list(outputs) -> List[torch.Tensor]:
    """A classifier's logits or a dense model's outputs, as a list."""
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def check_numerics(build: Callable[[], nn.Module], shape: Sequence[int],
                   device: torch.device) -> dict:
    """Max abs differences of a perturbed FcaFormer in fp32: on the device
    against the CPU, deploy form against eval mode (on the device), and the
    CPU's fp32 against fp64 as the scale of fp32 rounding.

    Args:
        build (callable): Makes the model (random weights).
        shape (sequence): The input's shape.
        device (torch.device): The device checked against the CPU.
    """
    torch.manual_seed(0)
    model = perturb(build()).eval()
    images = torch.randn(*shape)
    with torch.no_grad():
        fp64 = as_list(copy.deepcopy(model).double()(images.double()))
        cpu = as_list(model(images))
        model = model.to(device)
        on_device = as_list(model(images.to(device)))
        deploy = as_list(fold_for_inference(model)(images.to(device)))
    return dict(
        shape=list(shape),
        device_vs_cpu=max_abs_diff(on_device, cpu),
        deploy_vs_eval=max_abs_diff(deploy, on_device),
        cpu_fp32_vs_fp64=max_abs_diff(cpu, fp64),
        output_max_abs=max(out.abs().max().item() for out in cpu))


class TrainStep:
    """One training step of a dense backbone with :class:`LightDecodeHead`
    on fixed random images and labels: forward under autocast, cross
    entropy, backward, AdamW step.

    Args:
        name (str): FCAFORMER or CONVNEXT.
        device (torch.device): Where it trains.
        batch (int): Images per step.
        size (int): Side of the square images.
        dtype (str): Autocast dtype (a key of DTYPES).
    """

    def __init__(self, name: str, device: torch.device, batch: int, size: int,
                 dtype: str):
        backbone = build_dense(name)
        self.model = nn.Sequential(
            backbone, LightDecodeHead(DENSE_WIDTHS)).to(device).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), **ADAMW)
        self.images = torch.randn(batch, 3, size, size, device=device)
        self.labels = torch.randint(
            NUM_CLASSES, (batch, size // 4, size // 4), device=device)
        self.device = device
        self.dtype = dtype

    def __call__(self) -> None:
        with autocast(self.device, self.dtype):
            loss = F.cross_entropy(self.model(self.images), self.labels)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_mb(self) -> float:
        """MiB of the parameters and the optimizer's state."""
        tensors = list(self.model.parameters()) + [
            value for state in self.optimizer.state.values()
            for value in state.values() if isinstance(value, torch.Tensor)
        ]
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def top_events(profiler: torch.profiler.profile, device: torch.device,
               steps: int, top: int) -> dict:
    """The profile's top kernels by self CUDA time (on a CPU: operators by
    self CPU time), per step, with their share of the total.

    Args:
        profiler (profile): A finished profile.
        device (torch.device): Where the profiled calls ran.
        steps (int): Calls in the profile.
        top (int): Rows to keep.
    """
    cuda = device.type == 'cuda'
    rows = []
    for event in profiler.key_averages():
        if cuda and event.device_type != torch.autograd.DeviceType.CUDA:
            continue
        self_us = event.self_device_time_total if cuda else \
            event.self_cpu_time_total
        rows.append((self_us, event.key, event.count))
    rows.sort(key=lambda row: row[0], reverse=True)
    total = sum(row[0] for row in rows)
    return dict(
        activity='cuda kernels' if cuda else 'cpu operators',
        total_ms_per_step=total / 1000 / steps,
        top=[
            dict(
                name=name,
                ms_per_step=self_us / 1000 / steps,
                calls_per_step=count / steps,
                share=self_us / total if total else 0.0)
            for self_us, name, count in rows[:top]
        ])


class BudgetSpent(BaseException):
    """The time of ``--budget-s`` ran out during a case (a BaseException,
    so that torch's own ``except Exception`` does not swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`BudgetSpent` after ``seconds`` (SIGALRM, in the main
    thread of a platform that has it; elsewhere no limit)."""
    if not hasattr(signal, 'setitimer') or \
            threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise BudgetSpent(f'the budget ran out after {seconds:.0f} s')

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def error_text(error: BaseException) -> str:
    """An exception's type and first line, for a report."""
    lines = str(error).strip().splitlines()
    return f'{type(error).__name__}: {lines[0] if lines else ""}'[:300]


class Bench:
    """The sections of one run, on one device, with the models each needs
    built once.

    Args:
        args (Namespace): From :func:`parse_args`, the workload resolved.
    """

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.timer = Timer(self.device)
        self.began = time.perf_counter()
        self.cases: List[dict] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    @functools.cached_property
    def classifiers(self) -> Dict[str, nn.Module]:
        torch.manual_seed(0)
        return {
            name: for_inference(name, build_classifier(name), self.device)
            for name in (FCAFORMER, CONVNEXT)
        }

    @functools.cached_property
    def trainers(self) -> Dict[str, TrainStep]:
        """Each model's training step, built one after the other; the
        memory of each is read while it is built and warmed up."""
        args = self.args
        trainers = {}
        self.train_memory = {}
        for name in (FCAFORMER, CONVNEXT):
            torch.manual_seed(0)
            before = self._allocated()
            trainers[name] = step = TrainStep(name, self.device,
                                              args.train_batch,
                                              args.dense_size, 'bf16')
            step()  # optimizer state, cuDNN's autotuning
            self._reset_peak()
            step()
            self.train_memory[name] = dict(
                peak_mb=self._peak_since(before), state_mb=step.state_mb())
        return trainers

    def _allocated(self) -> int:
        if self.device.type != 'cuda':
            return 0
        torch.cuda.synchronize()
        return torch.cuda.memory_allocated()

    def _reset_peak(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def _peak_since(self, before: int) -> Optional[float]:
        """MiB of CUDA's peak allocation since the last reset, less
        ``before``; None on a device without CUDA's allocator counters."""
        if self.device.type != 'cuda':
            return None
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20

    def _record(self, case: dict) -> dict:
        self.cases.append(case)
        print(case_line(case), flush=True)
        return case

    def _inference(self, models: Dict[str, nn.Module], batch: int, size: int,
                   dtype: str, rounds: int) -> dict:
        images = torch.randn(batch, 3, size, size, device=self.device)
        calls = {
            name: functools.partial(model, images)
            for name, model in models.items()
        }
        with torch.no_grad(), autocast(self.device, dtype):
            return paired_result(
                paired_rounds(calls, self.timer, self.args.warmup, rounds))

    def check(self) -> dict:
        """Numerics of FcaFormer-L2, classifier and dense backbone."""
        args = self.args
        side, dense = args.classifier_size, args.dense_size
        check = dict(
            classifier=check_numerics(lambda: build_classifier(FCAFORMER),
                                      (2, 3, side, side), self.device),
            dense=check_numerics(DenseFcaFormer, (1, 3, dense, dense),
                                 self.device))
        print('\n'.join(check_lines(check)), flush=True)
        return check

    def classifier(self) -> None:
        """The classifiers, eager, every batch and dtype."""
        for dtype in DTYPES:
            for batch in self.args.classifier_batch:
                result = self._inference(self.classifiers, batch,
                                         self.args.classifier_size, dtype,
                                         self.args.rounds_classifier)
                self._record(
                    dict(
                        section='classifier',
                        batch=batch,
                        size=self.args.classifier_size,
                        dtype=dtype,
                        mode='eager',
                        status='ok',
                        **result))

    def dense(self) -> None:
        """The dense backbones, eager, fp32 and bf16."""
        torch.manual_seed(0)
        models = {
            name: for_inference(name, build_dense(name), self.device)
            for name in (FCAFORMER, CONVNEXT)
        }
        for dtype in ('fp32', 'bf16'):
            result = self._inference(models, self.args.dense_batch,
                                     self.args.dense_size, dtype,
                                     self.args.rounds_dense)
            self._record(
                dict(
                    section='dense',
                    batch=self.args.dense_batch,
                    size=self.args.dense_size,
                    dtype=dtype,
                    mode='eager',
                    status='ok',
                    **result))

    def train(self) -> None:
        """Training steps in paired rounds, and each model's memory."""
        times = paired_rounds(self.trainers, self.timer, self.args.warmup,
                              self.args.rounds_train)
        self._record(
            dict(
                section='train',
                batch=self.args.train_batch,
                size=self.args.dense_size,
                dtype='bf16',
                mode='eager',
                status='ok',
                memory=self.train_memory,
                **paired_result(times)))

    def profile(self) -> dict:
        """Top kernels of each model: the classifier at the largest batch
        in bf16, and the training step."""
        batch = max(self.args.classifier_batch)
        size = self.args.classifier_size
        images = torch.randn(batch, 3, size, size, device=self.device)
        workloads = {
            f'classifier b{batch} bf16': {
                name: functools.partial(model, images)
                for name, model in self.classifiers.items()
            },
            'train step bf16': self.trainers,
        }
        results = {}
        for workload, calls in workloads.items():
            inference = workload.startswith('classifier')
            results[workload] = {}
            for name, fn in calls.items():
                context = contextlib.ExitStack()
                if inference:
                    context.enter_context(torch.no_grad())
                    context.enter_context(autocast(self.device, 'bf16'))
                with context:
                    results[workload][name] = self._profile(fn)
        return results

    def _profile(self, fn: Callable[[], object]) -> dict:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == 'cuda':
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        for _ in range(self.args.warmup):
            fn()
        steps = self.args.profile_steps
        with torch.profiler.profile(activities=activities) as profiler:
            for _ in range(steps):
                fn()
            if self.device.type == 'cuda':
                torch.cuda.synchronize()
        return top_events(profiler, self.device, steps, self.args.top)

    def compile(self) -> None:
        """The classifier cases under torch.compile while the budget
        lasts; after each, torch.compiler.reset()."""
        args = self.args
        cases = [(dtype, batch) for dtype in args.compile_dtypes
                 for batch in sorted(args.classifier_batch, reverse=True)]
        longest = FIRST_COMPILE_S
        for dtype, batch in cases[:args.compile_cases]:
            mode = 'reduce-overhead' if batch == 1 else 'default'
            case = dict(
                section='compile',
                batch=batch,
                size=args.classifier_size,
                dtype=dtype,
                mode=f'compile {mode}',
                backend=args.compile_backend)
            left = args.budget_s - self.elapsed()
            if left < longest:
                self._record(
                    dict(
                        case,
                        status='skipped',
                        error=f'{left:.0f} s of the budget left, the '
                        f'case needs about {longest:.0f} s'))
                continue
            began = time.perf_counter()
            try:
                with time_limit(left):
                    case.update(self._compiled(mode, batch, dtype))
                case['status'] = 'ok'
            except BudgetSpent as error:
                case.update(status='skipped', error=str(error))
            except Exception as error:  # reported per case, the run goes on
                case.update(status='failed', error=error_text(error))
            finally:
                torch.compiler.reset()
            case['seconds'] = time.perf_counter() - began
            longest = max(longest, case['seconds'])
            self._record(case)

    def _compiled(self, mode: str, batch: int, dtype: str) -> dict:
        """One compile case: both classifiers compiled, their first calls
        (the compilation) timed, then paired rounds."""
        backend = self.args.compile_backend
        size = self.args.classifier_size
        images = torch.randn(batch, 3, size, size, device=self.device)
        calls, compile_s = {}, {}
        with torch.no_grad(), autocast(self.device, dtype):
            for name, model in self.classifiers.items():
                compiled = torch.compile(
                    model,
                    backend=backend,
                    mode=mode if backend == 'inductor' else None,
                    dynamic=False)
                calls[name] = functools.partial(compiled_call, compiled,
                                                images,
                                                mode == 'reduce-overhead')
                began = time.perf_counter()
                calls[name]()
                if self.device.type == 'cuda':
                    torch.cuda.synchronize()
                compile_s[name] = time.perf_counter() - began
            result = paired_result(
                paired_rounds(calls, self.timer, self.args.warmup,
                              self.args.rounds_compile))
        return dict(compile_s=compile_s, **result)


def compiled_call(model: Callable, images: torch.Tensor,
                  cudagraphs: bool) -> torch.Tensor:
    """Call a compiled model; with CUDA graphs, each call a new step."""
    if cudagraphs:
        torch.compiler.cudagraph_mark_step_begin()
    return model(images)


def case_line(case: dict) -> str:
    """One row of the summary: the case, both medians, the ratio."""
    name = (f'{case["section"]:10s} b{case["batch"]} {case["size"]}px '
            f'{case["dtype"]} {case["mode"]}')
    if case['status'] != 'ok':
        return f'{name:44s} {case["status"]}: {case["error"]}'
    ms = case['ms']
    ratio = case['ratio']
    line = (f'{name:44s} {ms[FCAFORMER]["median"]:9.2f} '
            f'{ms[CONVNEXT]["median"]:9.2f}   {ratio["median"]:.3f} '
            f'[{ratio["q1"]:.3f}-{ratio["q3"]:.3f}]')
    memory = case.get('memory')
    if memory:
        line += '   ' + ' / '.join(
            'n/a' if entry['peak_mb'] is None else f'{entry["peak_mb"]:.0f}'
            for entry in memory.values()) + ' MiB peak'
        line += ' (state ' + ' / '.join(f'{entry["state_mb"]:.0f}'
                                        for entry in memory.values()) + ')'
    return line


def check_lines(check: dict) -> List[str]:
    """One summary row per checked model."""
    return [
        f'check      {part:10s} max |device - cpu| '
        f'{entry["device_vs_cpu"]:.2e}, |deploy - eval| '
        f'{entry["deploy_vs_eval"]:.2e}, |fp32 - fp64| (cpu) '
        f'{entry["cpu_fp32_vs_fp64"]:.2e}, max |output| '
        f'{entry["output_max_abs"]:.3g}' for part, entry in check.items()
    ]


def profile_lines(profile: dict, width: int = 72) -> List[str]:
    """The profile tables: per workload and model, the top rows."""
    lines = []
    for workload, models in profile.items():
        for name, entry in models.items():
            lines.append(f'\n{workload}, {name}: top {entry["activity"]} by '
                         f'self time, {entry["total_ms_per_step"]:.2f} ms '
                         f'per step in all')
            lines += [
                f'  {row["ms_per_step"]:8.3f} ms {row["share"]:6.1%} '
                f'{row["calls_per_step"]:6.0f}x  {row["name"][:width]}'
                for row in entry['top']
            ]
    return lines


def summary_lines(results: dict) -> List[str]:
    """The summary table printed last."""
    lines = [
        f'\nsummary: {FCAFORMER} / {CONVNEXT}, median ms and the median of '
        f'the per-round ratios [quartiles]; {results["device_name"]}, '
        f'torch {results["torch"]}, TF32 off',
        f'{"case":44s} {FCAFORMER:>9s} {CONVNEXT:>9s}   ratio'
    ]
    if 'check' in results:
        lines += check_lines(results['check'])
    lines += [case_line(case) for case in results['cases']]
    for workload, models in results.get('profile', {}).items():
        tops = ', '.join(f'{name} {entry["top"][0]["name"][:40]} '
                         f'({entry["top"][0]["share"]:.0%})'
                         for name, entry in models.items() if entry['top'])
        lines.append(f'profile    {workload}: top {tops}')
    lines.append(f'{results["elapsed_s"]:.0f} s in all: ' + ', '.join(
        f'{section} {seconds:.0f} s'
        for section, seconds in results['section_s'].items()))
    return lines


EPILOG = """sections, in the order they run (--sections picks some):
  check       FcaFormer-L2 in fp32 on the device against the CPU, deploy form
              against eval mode: max abs differences
  classifier  224x224, batch 1 and 64, fp32 / bf16 / fp16 autocast, eager
  dense       the dense backbones (widened outputs) at 512x512, batch 8, fp32
              and bf16
  train       a training step with a light decode head, bf16 autocast: ms per
              step and each model's peak memory
  profile     the top CUDA kernels by self time of each model (the classifier
              at batch 64 in bf16, the training step)
  compile     the classifier cases under torch.compile, while --budget-s lasts

Each ratio is FcaFormer-L2 / ConvNeXt-T, the median of the per-round ratios
[quartiles], the two models' calls alternating; TF32 is off. Workload options
left unset take the values of a full run or of --quick. The summary table is
printed last, the full results go to --out.

examples:""" + __doc__.split('Examples::')[1].rstrip('\n')


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        '--device',
        type=device_name,
        default='cuda' if torch.cuda.is_available() else 'cpu',
        help='torch device (default cuda where there is one; cpu for the '
        '--quick check)')
    parser.add_argument(
        '--quick',
        action='store_true',
        help='tiny sizes and rounds and one compile case with the eager '
        'backend: a check that the script runs (with --device cpu), not a '
        'measurement')
    parser.add_argument(
        '--sections',
        nargs='+',
        choices=SECTIONS,
        default=list(SECTIONS),
        metavar='SECTION',
        help='which sections to run (default all)')
    parser.add_argument(
        '--budget-s',
        type=float,
        default=420.0,
        metavar='S',
        help='wall-clock seconds for the run, counted from the first '
        'section: the compile cases run last and only while it lasts, a '
        'case still compiling when it ends is stopped (default 420)')
    parser.add_argument(
        '--compile-dtypes',
        nargs='+',
        choices=sorted(DTYPES),
        default=['bf16', 'fp32', 'fp16'],
        metavar='DTYPE',
        help='dtypes of the compile cases, in the order they run, each at '
        'every classifier batch, the largest first (default bf16 fp32 '
        'fp16)')
    parser.add_argument(
        '--compile-backend',
        metavar='NAME',
        help='torch.compile backend (default inductor; eager with --quick)')
    parser.add_argument(
        '--compile-cases',
        type=positive_int,
        metavar='N',
        help='run only the first N compile cases (default all; 1 with '
        '--quick)')
    parser.add_argument(
        '--classifier-size',
        type=positive_int,
        metavar='PX',
        help='side of the classifier inputs (224; 32 with --quick)')
    parser.add_argument(
        '--classifier-batch',
        type=positive_int,
        nargs='+',
        metavar='N',
        help='classifier batches (1 64; 1 2 with --quick)')
    parser.add_argument(
        '--dense-size',
        type=positive_int,
        metavar='PX',
        help='side of the dense and training inputs, a multiple of 32 '
        '(512; 32 with --quick)')
    parser.add_argument(
        '--dense-batch',
        type=positive_int,
        metavar='N',
        help='dense forward batch (8; 2 with --quick)')
    parser.add_argument(
        '--train-batch',
        type=positive_int,
        metavar='N',
        help='training step batch (8; 2 with --quick)')
    for section, full in (('classifier', 100), ('dense', 50), ('train', 25),
                          ('compile', 50)):
        parser.add_argument(
            f'--rounds-{section}',
            type=positive_int,
            metavar='N',
            help=f'timed rounds per {section} case ({full}; 2 with --quick)')
    parser.add_argument(
        '--warmup',
        type=positive_int,
        metavar='N',
        help='untimed rounds before each case (5; 1 with --quick)')
    parser.add_argument(
        '--profile-steps',
        type=positive_int,
        metavar='N',
        help='calls per profile (5; 1 with --quick)')
    parser.add_argument(
        '--top',
        type=positive_int,
        default=15,
        metavar='N',
        help='rows of each profile table (default 15)')
    parser.add_argument(
        '--threads',
        type=positive_int,
        metavar='N',
        help='CPU threads (torch.set_num_threads; default torch\'s)')
    out = os.path.join(os.environ.get('OUT', 'work_dirs'), 'cuda_latency.json')
    parser.add_argument(
        '--out',
        default=out,
        metavar='PATH',
        help=f'JSON file of the full results (default {out}: under $OUT '
        f'where it is set, else under work_dirs)')
    args = parser.parse_args(argv)
    workload = WORKLOADS['quick' if args.quick else 'full']
    for key, value in workload.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.compile_backend is None:
        args.compile_backend = 'eager' if args.quick else 'inductor'
    if args.dense_size % 32:
        parser.error(f'--dense-size must be a multiple of 32 (the backbones '
                     f'downsample 32 times), got {args.dense_size}')
    return args


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the sections; returns the results written to ``--out``."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    results = dict(
        device=args.device,
        device_name=torch.cuda.get_device_name()
        if device.type == 'cuda' else 'CPU',
        torch=torch.__version__,
        timm=timm.__version__,
        quick=args.quick,
        threads=torch.get_num_threads(),
        workload={key: getattr(args, key)
                  for key in WORKLOADS['full']},
        budget_s=args.budget_s,
        compile_backend=args.compile_backend,
        method='paired rounds, median of the per-round ratios '
        f'{FCAFORMER} / {CONVNEXT} [quartiles]')
    print(', '.join(f'{key} {value}' for key, value in results.items()))
    bench = Bench(args)
    results['section_s'] = {}
    with tf32_off():
        results['backends'] = dict(
            cublas_tf32=torch.backends.cuda.matmul.allow_tf32,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark)
        for section in SECTIONS:
            if section not in args.sections:
                continue
            began = bench.elapsed()
            value = getattr(bench, section)()
            results['section_s'][section] = bench.elapsed() - began
            if value is not None:
                results[section] = value
    results['cases'] = bench.cases
    if 'profile' in results:
        print('\n'.join(profile_lines(results['profile'])))
    results['elapsed_s'] = bench.elapsed()
    save(results, args.out)
    print('\n'.join(summary_lines(results)))
    return results


if __name__ == '__main__':
    main()
