"""mmengine's Runner, made safe to interrupt and usable without a GPU."""
import datetime
import logging
import os
import os.path as osp
import re
import zipfile
from typing import Optional, Sequence, Tuple

import torch.distributed as torch_dist
from mmengine.dist import is_distributed
from mmengine.logging import print_log
from mmengine.model import (MMDistributedDataParallel, is_model_wrapper,
                            revert_sync_batchnorm)
from mmengine.registry import RUNNERS
from mmengine.runner import Runner, find_latest_checkpoint
# Private in mmengine (verified with 0.10.7 and main at 25434293).
from mmengine.runner.checkpoint import _load_checkpoint_to_model

from ...datasets.checks import (check_dataloader_paths, check_not_empty,
                                explain_build_error)
from ...utils.serialization import (MapLocation, from_weights_only,
                                    load_checkpoint_file, to_weights_only)
from ...utils.versions import check_verified
from ..optimizers.amp_optim_wrapper import accelerator_available
from .loops import seeded_data_stream


def is_intact_checkpoint(path: str) -> bool:
    """Whether ``path`` is a complete torch zip checkpoint (central
    directory present, every member's CRC correct)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            return any(name.endswith('data.pkl') for name in names) and \
                archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def _step_of(path: str) -> int:
    found = re.findall(r'\d+', osp.basename(path))
    return int(found[-1]) if found else -1


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The latest intact checkpoint of a run.

    mmengine's :func:`~mmengine.runner.find_latest_checkpoint` reads it from
    ``work_dir/last_checkpoint``; when that file is missing, empty or names
    a damaged checkpoint, the newest intact ``*.pth`` next to it (or in
    ``work_dir``) is taken instead, with a warning.

    Args:
        work_dir (str): The run's work directory.

    Returns:
        str | None: A checkpoint path, or None if there is none.
    """
    recorded = find_latest_checkpoint(work_dir) or ''
    if recorded and is_intact_checkpoint(recorded):
        return recorded
    folder = osp.dirname(recorded) if recorded else work_dir
    candidates = sorted(
        (name for name in os.listdir(folder)
         if name.endswith('.pth') and not name.startswith('best')),
        key=lambda name: _step_of(name),
        reverse=True) if osp.isdir(folder) else []
    for name in candidates:
        path = osp.join(folder, name)
        if is_intact_checkpoint(path):
            if recorded:
                print_log(
                    f'The recorded latest checkpoint {recorded!r} is missing '
                    f'or damaged (a crash while saving?); resuming from '
                    f'{path!r} instead.',
                    logger='current',
                    level=logging.WARNING)
            return path
    return None


@RUNNERS.register_module()
class ReliableRunner(Runner):
    """:class:`mmengine.runner.Runner` for runs that can be killed, that
    run on CPU-only machines, and that refuse bad input early.

    In addition to the stock Runner:

    - ``--resume`` without a path skips a damaged latest checkpoint. With
      the hooks of ``configs/_base_/mmfca_runtime.py`` (atomic
      :class:`SafeCheckpointHook`, :class:`RNGStateHook`), a run killed at
      any moment and resumed ends as the uninterrupted run.
    - Checkpoints it writes hold tensors, numbers, strings and containers
      only (:func:`~mmfca.utils.serialization.to_weights_only`): they load
      with a plain ``torch.load(path, weights_only=True)``, in the
      codebases' own tools and inference APIs too, and resume exactly.
    - Checkpoints (``load_from``, ``resume``) are read with
      ``weights_only=True`` and mmfca's allow-list (for older files),
      whatever mmengine passes to ``torch.load``; a file holding other
      Python objects is refused with a clear message unless the config sets
      ``trust_checkpoint = True`` (``--trust-checkpoint``).
    - ``seeded_data_stream = True`` in the config: per-sample seeded
      augmentation and a resume that loads no batch again
      (:func:`~mmfca.engine.runner.loops.seeded_data_stream` says what it
      changes; the log lists it).
    - ``launcher='pytorch'`` on a machine without a GPU: the process group
      is created with the gloo backend (mmengine's launcher calls
      ``torch.cuda.set_device``), SyncBN layers become BN (SyncBN has no
      CPU kernel) and DDP wraps the model without device ids. On GPUs the
      stock path runs unchanged.
    - Datasets: missing paths (of the datasets the run reads: testing needs
      no training data), empty datasets and non-COCO annotation files are
      refused with the key to fix. mmfca's ``tools/train.py`` and
      ``tools/test.py`` check the paths before the runner exists; the
      runner checks them again for the codebases' own tools, which build
      it from the config without those checks.

    The hooks come from the config, not from the runner: mmfca's configs
    merge ``mmfca_hooks`` of ``configs/_base_/mmfca_runtime.py`` into
    ``default_hooks``.

    Arguments are those of :class:`~mmengine.runner.Runner`.
    """

    def __init__(self, *args, **kwargs):
        # Reads and sets private fields of Runner.
        check_verified('mmengine', 'private fields of Runner')
        super().__init__(*args, **kwargs)
        self.trust_checkpoint = bool(self.cfg.get('trust_checkpoint', False))

    def train(self):
        self._check_paths('train')
        return super().train()

    def val(self):
        self._check_paths('val')
        return super().val()

    def test(self):
        self._check_paths('test')
        return super().test()

    def _check_paths(self, mode: str) -> None:
        """Check the paths of the datasets ``mode`` reads, and only those
        (testing needs no training data). ``tools/train.py`` and
        ``tools/test.py`` run the same check before the runner exists, so
        that nothing is written for a run that cannot start."""
        # Runner's private fields (verified with mmengine 0.10.7).
        check_dataloader_paths(
            dict(
                train_dataloader=self._train_dataloader,
                val_dataloader=self._val_dataloader,
                val_cfg=self._val_loop,
                test_dataloader=self._test_dataloader), mode)

    def call_hook(self, fn_name: str, **kwargs) -> None:
        super().call_hook(fn_name, **kwargs)
        if fn_name == 'before_save_checkpoint':
            # Runner.save_checkpoint writes the dict right after these hooks
            # (verified with mmengine 0.10.7): what they added is included.
            checkpoint = kwargs['checkpoint']
            checkpoint.update(to_weights_only(checkpoint))

    def setup_env(self, env_cfg: dict) -> None:
        # mmengine's init_dist calls torch.cuda.set_device, which fails
        # without a GPU: the gloo group is created here, and the stock
        # setup_env sees it initialised.
        if self.distributed and not is_distributed() and \
                not accelerator_available():
            timeout = env_cfg.get('dist_cfg', {}).get('timeout', 1800)
            torch_dist.init_process_group(
                backend='gloo', timeout=datetime.timedelta(seconds=timeout))
            print_log(
                'No GPU: distributed training over the gloo backend on CPU.',
                logger='current')
        super().setup_env(env_cfg)

    def wrap_model(self, model_wrapper_cfg: Optional[dict], model):
        if not self.distributed or accelerator_available():
            return super().wrap_model(model_wrapper_cfg, model)
        had_sync_bn = any('SyncBatchNorm' in type(module).__name__
                          for module in model.modules())
        model = revert_sync_batchnorm(model)
        print_log(
            'No GPU: SyncBN layers run as BN (per-process statistics) and '
            'DDP wraps the CPU model.',
            logger='current')
        # Runner's private field (verified with mmengine 0.10.7).
        loader = self._train_dataloader
        batch_size = loader.get('batch_size', 2) if isinstance(loader,
                                                               dict) else 2
        if had_sync_bn and batch_size < 2:
            print_log(
                'train_dataloader.batch_size is 1 per process and the '
                'SyncBN layers now use per-process statistics: a BN layer '
                'that sees one value per channel (such as UperNet\'s pooled '
                '1x1 branch) fails with "Expected more than 1 value per '
                'channel". Use a batch of 2 or more per process on CPU.',
                logger='current',
                level=logging.WARNING)
        cfg = dict(model_wrapper_cfg or {})
        cfg.setdefault('broadcast_buffers', False)
        cfg.setdefault('find_unused_parameters',
                       self.cfg.get('find_unused_parameters', False))
        if cfg.pop('type', 'MMDistributedDataParallel') != \
                'MMDistributedDataParallel':
            raise ValueError(
                'On CPU, ReliableRunner wraps models in '
                'MMDistributedDataParallel; remove model_wrapper_cfg.type.')
        return MMDistributedDataParallel(module=model, **cfg)

    @staticmethod
    def build_dataloader(dataloader,
                         seed: Optional[int] = None,
                         diff_rank_seed: bool = False):
        if not isinstance(dataloader, dict):
            return Runner.build_dataloader(dataloader, seed, diff_rank_seed)
        # Paths were checked when the run started (train, val or test).
        dataset_cfg = dataloader.get('dataset')
        try:
            built = Runner.build_dataloader(dataloader, seed, diff_rank_seed)
        except Exception as err:
            clearer = explain_build_error(dataset_cfg, err) \
                if isinstance(dataset_cfg, dict) else None
            if clearer is None:
                raise
            raise clearer from err
        if isinstance(dataset_cfg, dict):
            check_not_empty(built.dataset, dataset_cfg)
        return built

    def build_train_loop(self, loop):
        # With seeded_data_stream (configs/_base_/mmfca_runtime.py): the
        # loop and data loader of mmfca.engine.runner.loops, logged.
        if isinstance(loop, dict) and self.cfg.get('seeded_data_stream'):
            # Runner's private field (verified with mmengine 0.10.7).
            loop, self._train_dataloader, notes = seeded_data_stream(
                loop, self._train_dataloader)
            print_log(
                'seeded_data_stream: ' + '; '.join(notes) + '.',
                logger='current')
        return super().build_train_loop(loop)

    def load_or_resume(self) -> None:
        # Runner's private resume fields (verified with mmengine 0.10.7).
        if self._resume and self._load_from is None and not self._has_loaded:
            found = find_resumable_checkpoint(self.work_dir)
            if found is None:
                self.logger.info(
                    f'No checkpoint to resume from in {self.work_dir}; '
                    f'training from the start.')
                self._resume = False
            else:
                self._load_from = found
        super().load_or_resume()

    def load_checkpoint(
        self,
        filename: str,
        map_location: MapLocation = 'cpu',
        strict: bool = False,
        revise_keys: Sequence[Tuple[str, str]] = ((r'^module.', ''), )
    ) -> dict:
        """mmengine's ``Runner.load_checkpoint`` (``load_from``, and
        ``resume`` through it), reading the file with
        :func:`~mmfca.utils.serialization.load_checkpoint_file`.

        The guard does not depend on what mmengine passes to
        :func:`torch.load` (its main branch passes ``weights_only=False``):
        the file is read with ``weights_only=True`` unless the config sets
        ``trust_checkpoint``. The numpy values and history buffers that
        :meth:`call_hook` stored as tensors are turned back first. The steps
        after reading are mmengine's 0.10.7 ones (the same on its main
        branch at 25434293).

        Args:
            filename (str): Local path, URL or mmengine storage URI.
            map_location: As in :func:`torch.load`. Defaults to 'cpu'.
            strict (bool): Require the checkpoint's keys to match the
                model's. Defaults to False.
            revise_keys (Sequence[tuple]): ``(pattern, replacement)`` pairs
                applied to the checkpoint's keys. Defaults to stripping
                ``module.``.

        Returns:
            dict: The checkpoint.
        """
        if not osp.isfile(filename) and '://' not in filename:
            raise FileNotFoundError(
                f'Checkpoint not found: {filename!r}. Check load_from / '
                f'--resume.')
        try:
            checkpoint = load_checkpoint_file(
                filename,
                map_location,
                trusted=self.trust_checkpoint,
                trust_option='pass --trust-checkpoint (or set '
                'trust_checkpoint = True in the config)')
        except RuntimeError as err:
            if osp.isfile(filename) and not is_intact_checkpoint(filename):
                raise RuntimeError(
                    f'Cannot read checkpoint {filename!r}: the file is '
                    f'truncated or damaged (a crash while saving, or an '
                    f'incomplete copy). Use an earlier checkpoint, or '
                    f'--resume without a path to pick the latest intact '
                    f'one.') from err
            raise
        checkpoint = from_weights_only(checkpoint)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(
            self.model) else self.model
        checkpoint = _load_checkpoint_to_model(
            model, checkpoint, strict, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint
