"""Where the time of an FcaFormer backbone forward goes, by block type.

    python tools/analysis/profile_blocks.py [--arch l2] [--shape 224 224]
        [--batch 1] [--threads 2] [--repeat 30] [--window-size 14 7]
        [--ops 15]

One forward records the input of every part; then each part is called on
its recorded input, all parts in turn each round (round-robin, so load
changes on a shared machine hit every part alike), and the median per call
is summed per part type:

* stem: the conv stem (stage-0 downsampling);
* ConvNeXt stages: the two convolutional stages (mmpretrain's blocks);
* downsample: the three stage transitions;
* attention: LayerNorm, forward cross attention (cross-token scaling and
  norm, qkv, attention with the bias mask, projection), layer scale and
  the residual addition;
* TME: token merging and enhancement (the token <-> map views, the 7x7
  stride-4 cross-token conv and the 3x3 depthwise conv);
* FFN: LayerNorm, FeedForward, layer scale and the residual addition;
* stage glue: what an FcaStage spends outside its blocks (padding, window
  partition and reverse, concatenating cross tokens), measured as the
  stage's time minus its blocks' parts, so it carries their noise;
* output norms.

The whole backbone and mmpretrain's ConvNeXt-T backbone are timed in the
same rounds for the total and a ratio. The model is in deploy mode (conv-BN
folded, masks precomputed) with random weights, eval, no grad. ``--ops``
also prints torch.profiler's most expensive operators over a few forwards.
"""
import argparse
import statistics
import time
from collections import defaultdict

import torch

from mmfca.models import FcaFormer
from mmfca.models.backbones.fcaformer import FcaStage

PARTS = ('stem', 'ConvNeXt stages', 'downsample', 'attention', 'TME', 'FFN',
         'stage glue', 'output norms')


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--arch', default='l2')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeat', type=int, default=30)
    parser.add_argument('--window-size', type=int, nargs='+',
                        help='attention windows of the FcaFormer stages')
    parser.add_argument('--ops', type=int, default=0,
                        help='also list this many top torch.profiler ops')
    return parser.parse_args()


def record_inputs(model, x):
    """The positional inputs of the stem, stages, downsampling layers,
    blocks and output modules in one forward, by module."""
    inputs = {}
    modules = list(model.downsample_layers) + list(model.stages) + [
        model.output_module(i) for i in model.out_indices
    ]
    for stage in model.stages:
        if isinstance(stage, FcaStage):
            modules += list(stage.blocks)
    handles = [
        m.register_forward_pre_hook(
            lambda module, args: inputs.setdefault(module, args))
        for m in modules
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return inputs


def block_calls(block, x, cross):
    """Callables for the attention, TME and FFN parts of one block."""
    with torch.no_grad():
        after_attn = x + block.ls1(block.attn(block.norm1(x), cross))
        merged, _ = block.merge_and_enhance(after_attn)
    return {
        'attention':
        lambda: x + block.ls1(block.attn(block.norm1(x), cross)),
        'TME': lambda: block.merge_and_enhance(after_attn),
        'FFN': lambda: merged + block.ls2(block.ffn(block.norm2(merged))),
    }


def calls(model, x):
    """(part, key, callable) for every timed call, in forward order."""
    inputs = record_inputs(model, x)
    result = [('stem', 'stem',
               lambda: model.downsample_layers[0](*inputs[
                   model.downsample_layers[0]]))]
    for i, stage in enumerate(model.stages):
        if i > 0:
            layer = model.downsample_layers[i]
            result.append(('downsample', f'down{i}',
                           lambda m=layer: m(*inputs[m])))
        if not isinstance(stage, FcaStage):
            result.append(('ConvNeXt stages', f'stage{i}',
                           lambda m=stage: m(*inputs[m])))
            continue
        result.append(('_stage', f'stage{i}', lambda m=stage: m(*inputs[m])))
        for j, block in enumerate(stage.blocks):
            args = inputs[block]
            cross = args[1] if len(args) > 1 else None
            for part, fn in block_calls(block, args[0], cross).items():
                result.append((part, f'stage{i}.{j}.{part}', fn))
    for i in model.out_indices:
        module = model.output_module(i)
        result.append(('output norms', f'out{i}',
                       lambda m=module: m(*inputs[m])))
    return result


def convnext_t():
    from mmpretrain.models import ConvNeXt
    model = ConvNeXt('tiny', out_indices=(0, 1, 2, 3),
                     gap_before_final_norm=False)
    model.eval()
    return model


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = FcaFormer(args.arch, out_indices=(0, 1, 2, 3),
                      window_size=args.window_size)
    model.init_weights()
    model.switch_to_deploy()
    baseline = convnext_t()
    x = torch.randn(args.batch, 3, *args.shape)
    timed = calls(model, x)
    timed += [('_whole', 'whole', lambda: model(x)),
              ('_convnext', 'convnext', lambda: baseline(x))]
    times = defaultdict(list)
    with torch.no_grad():
        for _ in range(3):
            for _, _, fn in timed:
                fn()
        for _ in range(args.repeat):
            for _, key, fn in timed:
                start = time.perf_counter()
                fn()
                times[key].append((time.perf_counter() - start) * 1000)
    medians = {key: statistics.median(values) for key, values in times.items()}
    parts = defaultdict(float)
    for part, key, _ in timed:
        parts[part] += medians[key]
    blocks = parts['attention'] + parts['TME'] + parts['FFN']
    parts['stage glue'] = parts['_stage'] - blocks
    total = sum(parts[p] for p in PARTS)
    print(f'FcaFormer-{args.arch.upper()} backbone, deploy mode, batch '
          f'{args.batch}, {args.shape[0]}x{args.shape[1]}, {args.threads} '
          f'threads, medians of {args.repeat} interleaved rounds')
    print(f'  whole forward {parts["_whole"]:.1f} ms, ConvNeXt-T backbone '
          f'{parts["_convnext"]:.1f} ms (ratio '
          f'{parts["_whole"] / parts["_convnext"]:.2f}); sum of parts '
          f'{total:.1f} ms')
    print(f'  {"part":16s} {"ms":>7s} {"share":>6s}')
    for name in PARTS:
        print(f'  {name:16s} {parts[name]:7.2f} {parts[name] / total:6.1%}')
    if args.ops:
        from torch.profiler import ProfilerActivity, profile
        with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) \
                as prof:
            for _ in range(5):
                model(x)
        print(prof.key_averages().table(
            sort_by='self_cpu_time_total', row_limit=args.ops))


if __name__ == '__main__':
    main()
