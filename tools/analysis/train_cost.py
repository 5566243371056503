"""Training cost of UperNet with FcaFormer-L2 against UperNet with
ConvNeXt-T (mmseg's config): time per iteration, time and saved
activations per backbone stage, memory.

    python tools/analysis/train_cost.py [--parts time stages memory]
        [--with-cp] [--batch 2] [--crop 512] [--device cpu] [--threads 2]
        [--amp fp16|bf16] [--repeat 3] [--out work_dirs/train_cost.json]

An iteration is a forward in loss mode, the backward and an AdamW step,
on random square crops and label maps, random weights, both backbones
with ``with_cp`` as ``--with-cp`` says; float32 unless ``--amp``
autocasts the forward. Both models get the same plain AdamW (the configs'
layer decay changes learning rates, not cost).

* ``time``: iterations in paired rounds (see bench_lib): median ms
  [quartiles] and the median of the per-round ratios to ConvNeXt-T's
  [quartiles] (range);
* ``stages``: one hooked iteration per model, run first (it is also the
  warm-up of the rounds): forward and backward time and saved activations
  by backbone stage (:class:`StageProfile`);
* ``memory``: each model's memory over two iterations (:func:`train_memory`;
  on the CPU in a fresh process per model, run before anything else).
"""
import argparse
import multiprocessing as mp
import resource
import sys
import weakref
from collections import defaultdict
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from bench_lib import (add_run_arguments, autocast, clock, ratio_text, report,
                       save, start, summarize, synchronize, time_rounds)
from bench_models import SEGMENTORS

from mmfca.apis import build_model, load_config

PARTS = ('time', 'stages', 'memory')
ADAMW = dict(lr=1e-4, weight_decay=0.01)


def crop_side(text: str) -> int:
    """A square crop's side: a multiple of 32, at least 64 (an argparse
    type)."""
    value = int(text)
    if value < 64 or value % 32:
        raise argparse.ArgumentTypeError(
            f'must be a multiple of 32, at least 64 (the backbones '
            f'downsample 32 times), got {value}')
    return value


def batch_size(text: str) -> int:
    """Images per iteration: at least 2 (an argparse type)."""
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(
            f'must be at least 2 (the 1x1 pooling branch of UperNet\'s PPM '
            f'has a BatchNorm, which needs two values per channel), got '
            f'{value}')
    return value


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--parts',
        nargs='+',
        choices=PARTS,
        default=list(PARTS),
        metavar='PART',
        help='time = paired time per iteration, stages = time and saved '
        'activations per stage (one hooked iteration), memory = peak '
        'memory (a fresh process per model on the CPU); default all')
    parser.add_argument(
        '--with-cp',
        action='store_true',
        help='activation checkpointing in both backbones')
    parser.add_argument(
        '--batch',
        type=batch_size,
        default=2,
        metavar='N',
        help='images per iteration (default 2)')
    parser.add_argument(
        '--crop',
        type=crop_side,
        default=512,
        metavar='SIDE',
        help='side of the square crops (default 512)')
    add_run_arguments(
        parser,
        repeat=3,
        out='work_dirs/train_cost.json',
        repeat_help='timed rounds of --parts time')
    return parser.parse_args(argv)


def train_segmentor(path: str, with_cp: bool, device: str) -> nn.Module:
    """A segmentor of ``path`` in training mode on ``device``, its
    backbone's ``with_cp`` set; random weights (the modules' own
    initialisation; no download)."""
    cfg = load_config(path)
    cfg.model.backbone.with_cp = with_cp
    cfg.model.backbone.init_cfg = None
    model = build_model(cfg)
    model.to(device)
    model.train()
    return model


def segmentation_batch(batch: int, size: int, num_classes: int, device: str):
    """Random images and label maps of one training batch (square crops)."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen)
    samples = []
    for _ in range(batch):
        sample = SegDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size)))
        labels = torch.randint(0, num_classes, (1, size, size), generator=gen)
        sample.gt_sem_seg = PixelData(data=labels)
        samples.append(sample.to(device))
    return images.to(device), samples


class TrainStep:
    """One training iteration of a segmentor, as a call: forward in loss
    mode, backward, an AdamW step (no layer decay).

    Args:
        model (nn.Module): An mmseg segmentor in training mode.
        batch (int): Images per iteration.
        size (int): Side of the square crops.
        device (str): Where the model is.
        amp (str, optional): Autocast dtype name of the forward, see
            ``--amp``; float32 without.
    """

    def __init__(self,
                 model: nn.Module,
                 batch: int,
                 size: int,
                 device: str,
                 amp: Optional[str] = None):
        self.model = model
        self.device = device
        self.amp = amp
        self.inputs, self.samples = segmentation_batch(
            batch, size, model.decode_head.num_classes, device)
        self.optimizer = torch.optim.AdamW(model.parameters(), **ADAMW)

    def forward(self) -> torch.Tensor:
        """The summed loss of one forward."""
        with autocast(self.device, self.amp):
            losses = self.model(self.inputs, self.samples, mode='loss')
        return self.model.parse_losses(losses)[0]

    def update(self) -> None:
        """Apply and clear the gradients."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def __call__(self) -> None:
        self.forward().backward()
        self.update()


def resident_mb(peak: bool) -> float:
    """Resident memory of this process, now or its peak, in MB.

    Linux: ``VmRSS`` / ``VmHWM`` of ``/proc/self/status``. The peak is not
    ``getrusage``'s ``ru_maxrss``: that one carries the peak of the process
    image an ``exec`` replaced, so a process spawned by a large parent
    starts at the parent's size. Elsewhere ``ru_maxrss`` for both.
    """
    try:
        with open('/proc/self/status') as file:
            fields = dict(line.split(':', 1) for line in file if ':' in line)
        return int(fields['VmHWM' if peak else 'VmRSS'].split()[0]) / 1024
    except (OSError, KeyError):
        value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return value / 2**20 if sys.platform == 'darwin' else value / 1024


def _train_memory_child(path, with_cp, batch, size, amp, threads, queue):
    torch.set_num_threads(threads)
    step = TrainStep(
        train_segmentor(path, with_cp, 'cpu'), batch, size, 'cpu', amp)
    built = resident_mb(peak=False)
    for _ in range(2):
        step()
    queue.put(dict(built_mb=built, peak_mb=resident_mb(peak=True)))


def train_memory(path: str, with_cp: bool, batch: int, size: int, device: str,
                 amp: Optional[str], threads: int) -> Dict[str, float]:
    """Memory of two training iterations of the segmentor of ``path``.

    CPU: a fresh process (spawned, so nothing of this one is in it) builds
    the model and the data, reads its resident memory, runs two iterations
    (the second one holds activations, gradients and AdamW's state at once)
    and reads its peak resident memory (see :func:`resident_mb`).
    CUDA: the allocator's figures in this process.

    Returns:
        dict: ``built_mb`` (after building), ``peak_mb`` (after the
        iterations) and ``train_mb``, their difference: what training
        adds.
    """
    if torch.device(device).type == 'cuda':
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        step = TrainStep(
            train_segmentor(path, with_cp, device), batch, size, device, amp)
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        built = torch.cuda.memory_allocated(device)
        for _ in range(2):
            step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        del step
        result = dict(
            built_mb=(built - before) / 2**20, peak_mb=(peak - before) / 2**20)
    else:
        context = mp.get_context('spawn')
        queue = context.Queue()
        process = context.Process(
            target=_train_memory_child,
            args=(path, with_cp, batch, size, amp, threads, queue))
        process.start()
        process.join()
        if process.exitcode != 0:
            raise RuntimeError(
                f'The memory measurement of {path} (with_cp={with_cp}) '
                f'failed in its subprocess (exit code {process.exitcode}); '
                f'its error is printed above.')
        result = queue.get()
    result['train_mb'] = result['peak_mb'] - result['built_mb']
    return result


class StageProfile:
    """Where a segmentor's training iteration spends time and keeps
    activations, by backbone stage.

    ``stage i`` is the backbone's ``downsample_layers[i - 1]`` and
    ``stages[i - 1]`` (FcaFormer and mmpretrain's ConvNeXt are laid out
    alike); ``outside`` is the rest: the output norms or projections, the
    decode and auxiliary heads, the losses.

    * forward: the clock is read by forward hooks at each stage's start
      and end;
    * backward: by gradient hooks on each stage's output (its backward
      starts when that gradient is complete) and input (it ends when that
      one is); the input image is made to require a gradient, so the first
      stage has one too. An output norm's backward is counted in the next
      stage's (it ends when the stage output's gradient is complete);
    * saved: bytes of the tensors autograd holds for the backward at the
      end of the forward (seen by ``torch.autograd.graph.saved_tensors_
      hooks``), each storage counted once, in the part that saved it
      first, parameters not counted.
      Activation checkpointing keeps the inputs of its regions by itself,
      out of sight of these hooks, so with ``with_cp`` the figures miss
      them.

    Args:
        model (nn.Module): An mmseg segmentor.
        device (str): Where it runs (its work is awaited at each reading
            of the clock).
    """

    OUTSIDE = 'outside'

    def __init__(self, model: nn.Module, device: str):
        self.model = model
        self.device = device
        backbone = model.backbone
        self.stages = list(zip(backbone.downsample_layers, backbone.stages))
        self.names = [f'stage {i + 1}' for i in range(len(self.stages))]

    def run(self, step: TrainStep) -> Dict[str, Dict[str, float]]:
        """One hooked iteration of ``step``.

        Returns:
            dict: Part -> ``forward_ms``, ``backward_ms``, ``saved_mb``.
        """
        marks: Dict[tuple, float] = {}
        packed: List[tuple] = []  # (weak reference to a saved tensor, part)
        current = [self.OUTSIDE]
        handles = []

        def grad_mark(key):

            def hook(grad):
                marks[key] = clock(self.device)

            return hook

        for name, (down, stage) in zip(self.names, self.stages):

            def begin(module, args, name=name):
                current[0] = name
                marks[name, 'forward start'] = clock(self.device)
                if args[0].requires_grad:
                    args[0].register_hook(grad_mark((name, 'backward end')))

            def end(module, args, output, name=name):
                marks[name, 'forward end'] = clock(self.device)
                current[0] = self.OUTSIDE
                if output.requires_grad:
                    output.register_hook(grad_mark((name, 'backward start')))

            handles += [
                down.register_forward_pre_hook(begin),
                stage.register_forward_hook(end)
            ]

        def pack(tensor):
            packed.append((weakref.ref(tensor), current[0]))
            return tensor

        step.inputs.requires_grad_(True)
        try:
            forward_start = clock(self.device)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = step.forward()
            forward_end = clock(self.device)
            saved = self._saved_bytes(packed, step.model)
            loss.backward()
            backward_end = clock(self.device)
            step.update()
        finally:
            step.inputs.requires_grad_(False)
            for handle in handles:
                handle.remove()
        parts = {}
        for name in self.names:
            parts[name] = dict(
                forward_ms=(marks[name, 'forward end'] -
                            marks[name, 'forward start']) * 1000,
                backward_ms=(marks[name, 'backward end'] -
                             marks[name, 'backward start']) * 1000)
        parts[self.OUTSIDE] = dict(
            forward_ms=(forward_end - forward_start) * 1000 -
            sum(p['forward_ms'] for p in parts.values()),
            backward_ms=(backward_end - forward_end) * 1000 -
            sum(p['backward_ms'] for p in parts.values()))
        for name, value in parts.items():
            value['saved_mb'] = saved.get(name, 0) / 2**20
        return parts

    @staticmethod
    def _saved_bytes(packed: List[tuple], model: nn.Module) -> Dict[str, int]:
        """Part -> bytes of the storages of the saved tensors that the
        graph still holds (a branch dropped during the forward freed its
        own), each storage once, parameters left out."""
        seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: Dict[str, int] = defaultdict(int)
        for ref, part in packed:
            tensor = ref()
            if tensor is None:
                continue
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                saved[part] += storage.nbytes()
        return saved


def report_memory(memory: Dict[str, dict], device: str,
                  reference: str) -> None:
    """Print each model's :func:`train_memory` and the ratio of what
    training adds to ``reference``'s."""
    how = ('allocator peak' if torch.device(device).type == 'cuda' else
           'peak resident memory of a fresh process, VmHWM')
    print(f'\nMemory of training ({how}; MB)')
    print(f'  {"":32s} {"built":>8s} {"peak":>8s} {"training":>9s}')
    for name, value in memory.items():
        print(
            f'  {name:32s} {value["built_mb"]:8.0f} '
            f'{value["peak_mb"]:8.0f} {value["train_mb"]:9.0f}  '
            f'{ratio_text(value["train_mb"], memory[reference]["train_mb"])}')


def report_stages(stages: Dict[str, dict], reference: str) -> None:
    """Print each model's per-stage time and saved activations, and the
    difference to ``reference``."""
    print('\nOne hooked training iteration per model, by stage (see '
          'StageProfile): forward ms, backward ms, saved MB; last column: '
          f'forward + backward ms and saved MB minus {reference}\'s')
    for name, parts in stages.items():
        print(f'  {name}')
        for part, value in parts.items():
            other = stages[reference].get(part)
            cells = (f'{value["forward_ms"]:9.0f} {value["backward_ms"]:9.0f}'
                     f' {value["saved_mb"]:8.0f}')
            if other is not None and name != reference:
                total = value['forward_ms'] + value['backward_ms'] - (
                    other['forward_ms'] + other['backward_ms'])
                cells += (f'   {total:+8.0f} ms '
                          f'{value["saved_mb"] - other["saved_mb"]:+7.0f} MB')
            print(f'    {part:10s} {cells}')


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    results = start(args)
    device, parts = args.device, set(args.parts)
    batch, size, cp = args.batch, args.crop, args.with_cp
    reference = list(SEGMENTORS)[-1]
    print(
        f'\nTraining iteration: batch {batch}, {size}x{size} crops, '
        f'with_cp={cp}, AdamW, {"float32" if args.amp is None else args.amp}')
    entry = dict(batch=batch, crop=size, with_cp=cp)
    # Memory first: the processes it spawns start from a small one.
    if 'memory' in parts:
        entry['memory'] = {
            name:
            train_memory(path, cp, batch, size, device, args.amp, args.threads)
            for name, path in SEGMENTORS.items()
        }
        report_memory(entry['memory'], device, reference)
    if parts & {'time', 'stages'}:
        steps = {
            name:
            TrainStep(
                train_segmentor(path, cp, device), batch, size, device,
                args.amp)
            for name, path in SEGMENTORS.items()
        }
    # The hooked iteration of each model is the timed rounds' warm-up.
    if 'stages' in parts:
        entry['stages'] = {
            name: StageProfile(step.model, device).run(step)
            for name, step in steps.items()
        }
        report_stages(entry['stages'], reference)
    if 'time' in parts:
        entry['time'] = summarize(
            time_rounds(
                steps,
                device,
                0 if 'stages' in parts else 1,
                args.repeat,
                inference=False), (reference, ))
        report(
            f'Training iteration, batch {batch}, {size}x{size}, '
            f'with_cp={cp}', entry['time'])
    results['training'] = entry
    save(results, args.out)
    return results


if __name__ == '__main__':
    main()
