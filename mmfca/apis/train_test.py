"""The train and test entry points behind ``tools/train.py`` and
``tools/test.py``, for mmpretrain, mmseg and mmdet configs alike.

They follow the codebases' own tools (flags, work-dir rules, resume,
visualisation, TTA, result dumps); the config's ``default_scope`` decides
which codebase's modules are registered. Being functions of an argument
list, they also run in-process (the tests use them that way).
"""
import argparse
import json
import os
import os.path as osp
import uuid
from copy import deepcopy
from typing import Dict, List, Optional

from mmengine.config import ConfigDict, DictAction
from mmengine.logging import print_log

from ..datasets.checks import check_dataloader_paths
from ..engine.optimizers.amp_optim_wrapper import accelerator_available
from .config import load_config, register_scope

AMP_WRAPPERS = ('AmpOptimWrapper', 'AnyDeviceAmpOptimWrapper')
LAUNCHERS = ['none', 'pytorch', 'slurm', 'mpi']


def _common_arguments(parser: argparse.ArgumentParser):
    parser.add_argument(
        '--work-dir', help='directory for logs, checkpoints and metrics')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, key=value (lists: key="[a,b]")')
    parser.add_argument(
        '--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    parser.add_argument(
        '--trust-checkpoint',
        action='store_true',
        help='allow checkpoints that hold arbitrary Python objects (only for '
        'files you trust: unpickling them can run code)')
    # torch.distributed.launch passes --local-rank (older: --local_rank).
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Train a model (mmpretrain, mmseg or mmdet config).')
    parser.add_argument('config', help='config file')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from CKPT, or without a value from the latest '
        'checkpoint in the work dir')
    parser.add_argument(
        '--amp', action='store_true', help='automatic mixed precision')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by the actual total batch size')
    _common_arguments(parser)
    return parser


def test_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Test a checkpoint (mmpretrain, mmseg or mmdet config).')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out',
        help='dump results: a .pkl file (mmdet, mmpretrain) or a directory '
        'of predicted label maps (mmseg)')
    parser.add_argument(
        '--show', action='store_true', help='show predictions in a window')
    parser.add_argument(
        '--show-dir', help='directory to save drawn predictions in')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='seconds per --show')
    parser.add_argument(
        '--tta', action='store_true', help='test-time augmentation')
    _common_arguments(parser)
    return parser


def _set_work_dir(cfg, config_path: str, work_dir: Optional[str]):
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(config_path))[0])


def _prepare(args) -> 'Config':  # noqa: F821
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    cfg = load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.trust_checkpoint:
        cfg.trust_checkpoint = True
    # mmfca's configs name ReliableRunner (configs/_base_/mmfca_runtime.py);
    # the codebases' own configs get it too, for CPU distributed training
    # and the checkpoint-loading guards.
    cfg.setdefault('runner_type', 'ReliableRunner')
    _set_work_dir(cfg, args.config, args.work_dir)
    if 'visualizer' in cfg:
        # The codebases name their visualizer 'visualizer', and mmengine
        # hands out one instance per name per process: a second run in the
        # same process would log into the first run's directory.
        cfg.visualizer.name = f'visualizer_{uuid.uuid4().hex}'
    register_scope(cfg)
    return cfg


def _build_runner(cfg):
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


def configure_training(cfg, args):
    """Apply ``--amp``, ``--auto-scale-lr`` and ``--resume`` to ``cfg``."""
    if args.amp and cfg.default_scope == 'mmdet' and \
            not accelerator_available():
        raise ValueError(
            '--amp on a machine without a GPU: mmcv\'s CPU RoIAlign and NMS '
            'have no bfloat16 kernels, so detectors cannot train in mixed '
            'precision here. Train without --amp (the detection configs '
            'then run in float32 on CPU) or on a GPU.')
    if args.amp:
        wrapper = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if wrapper in AMP_WRAPPERS:
            print_log(
                f'AMP is already on in the config ({wrapper}).',
                logger='current')
        else:
            cfg.optim_wrapper.type = 'AnyDeviceAmpOptimWrapper'
            cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError(
                'The config has no auto_scale_lr.base_batch_size, so '
                '--auto-scale-lr cannot scale the learning rate. Add '
                'auto_scale_lr = dict(base_batch_size=<total batch size of '
                'the recipe>) to the config.')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(
                f'--resume checkpoint not found: {args.resume!r}.')
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def _close_process_group():
    """Shut the process group down after a finished run (gloo can abort a
    process that exits with its group alive, or whose peer left first)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        # Every rank arrives before any tears its connections down.
        dist.barrier()
        dist.destroy_process_group()


def train(argv: Optional[List[str]] = None):
    """Train as ``tools/train.py`` does; returns the trained model."""
    args = train_parser().parse_args(argv)
    cfg = configure_training(_prepare(args), args)
    # Before the runner writes its work dir; only the data training reads.
    check_dataloader_paths(cfg, 'train')
    runner = _build_runner(cfg)
    model = runner.train()
    _close_process_group()
    return model


def _enable_visualization(cfg, scope: str, args):
    hooks = cfg.get('default_hooks', {})
    if 'visualization' not in hooks:
        raise RuntimeError(
            'The config has no default_hooks.visualization, so --show and '
            '--show-dir cannot draw predictions.')
    hook = hooks['visualization']
    if scope == 'mmpretrain':
        hook.enable = True
        hook.show = args.show
        hook.wait_time = args.wait_time
        hook.out_dir = args.show_dir
        return
    hook.draw = True
    hook.interval = 1
    if args.show:
        hook.show = True
        hook.wait_time = args.wait_time
    if args.show_dir:
        if scope == 'mmdet':
            hook.test_out_dir = args.show_dir
        else:
            cfg.visualizer.save_dir = args.show_dir


def _enable_tta(cfg, scope: str):
    if 'tta_pipeline' not in cfg:
        raise ValueError('--tta needs a tta_pipeline in the config.')
    if 'tta_model' not in cfg:
        if scope != 'mmpretrain':
            raise ValueError('--tta needs a tta_model in the config.')
        cfg.tta_model = dict(type='AverageClsScoreTTA')
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = deepcopy(cfg.tta_pipeline)


def configure_testing(cfg, scope: str, args):
    """Apply the checkpoint, ``--show``/``--show-dir``, ``--tta`` and the
    mmseg form of ``--out`` to ``cfg``."""
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'Checkpoint not found: {args.checkpoint!r}.')
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        _enable_visualization(cfg, scope, args)
    if args.tta:
        _enable_tta(cfg, scope)
    if args.out and scope == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    return cfg


def _add_result_dump(runner, scope: str, out: str):
    if not out.endswith(('.pkl', '.pickle')):
        raise ValueError(f'--out must name a .pkl file for {scope} '
                         f'configs, got {out!r}.')
    if scope == 'mmdet':
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=out))
    else:
        from mmengine.evaluator import DumpResults
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=out))


def _plain(value):
    if hasattr(value, 'tolist'):
        return value.tolist()
    return value


def test(argv: Optional[List[str]] = None) -> Dict[str, float]:
    """Test as ``tools/test.py`` does: print the metrics, save them as JSON
    in the work dir, and return them."""
    args = test_parser().parse_args(argv)
    cfg = _prepare(args)
    scope = cfg.default_scope
    configure_testing(cfg, scope, args)
    # Before the runner writes its work dir; the training data is not read.
    check_dataloader_paths(cfg, 'test')
    runner = _build_runner(cfg)
    if args.out and scope != 'mmseg':
        _add_result_dump(runner, scope, args.out)
    metrics = runner.test()
    _close_process_group()
    metrics = {k: _plain(v) for k, v in (metrics or {}).items()}
    path = osp.join(runner.log_dir, 'test_metrics.json')
    with open(path, 'w') as file:
        json.dump(
            dict(
                config=args.config,
                checkpoint=args.checkpoint,
                metrics=metrics),
            file,
            indent=2)
    for key, value in metrics.items():
        print(f'{key}: {value}')
    print(f'metrics saved to {path}')
    return metrics
