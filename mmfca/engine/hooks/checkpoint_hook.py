"""Checkpoints that survive a crash while saving."""
import glob
import os
import os.path as osp

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from ...utils.versions import check_verified, require_attribute

require_attribute(CheckpointHook, '_save_checkpoint_with_step', 'mmengine')
require_attribute(CheckpointHook, '_save_best_checkpoint', 'mmengine')

TMP_MARK = '.tmp-'


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old or the new
    content, never a part of it."""
    tmp = f'{path}{TMP_MARK}{os.getpid()}'
    with open(tmp, 'w') as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def save_atomically(runner, out_dir: str, filename: str, **kwargs) -> str:
    """``runner.save_checkpoint(out_dir, filename, **kwargs)``, written to a
    temporary name and renamed to ``filename`` when complete.

    Returns:
        str: The checkpoint's path.
    """
    tmp_name = f'{filename}{TMP_MARK}{os.getpid()}'
    runner.save_checkpoint(out_dir, tmp_name, **kwargs)
    path = osp.join(out_dir, filename)
    # Runner.save_checkpoint writes on the main process only.
    if is_main_process():
        os.replace(osp.join(out_dir, tmp_name), path)
    return path


class _AtomicSaves:
    """Stands for the runner in mmengine's ``_save_best_checkpoint``: its
    ``save_checkpoint`` writes through :func:`save_atomically`, everything
    else is the runner's."""

    def __init__(self, runner):
        self.runner = runner

    def __getattr__(self, name: str):
        return getattr(self.runner, name)

    def save_checkpoint(self, out_dir: str, filename: str, **kwargs) -> None:
        save_atomically(self.runner, out_dir, filename, **kwargs)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's :class:`CheckpointHook`, with checkpoints that survive a
    crash while saving.

    The stock hook writes ``iter_N.pth`` in place, and with
    ``max_keep_ckpts`` deletes the oldest checkpoint *before* writing the
    new one, so a kill during the write can leave a truncated latest file
    and no intact one; ``save_best`` removes the previous best before
    writing the new one in the same way. Here, on a local disk, every
    checkpoint (periodic and best) is written to a temporary name and
    renamed when complete, ``last_checkpoint`` is replaced atomically after
    it, and old checkpoints (periodic and best) are removed only then.
    Leftover temporary files of a killed run are removed when the next run
    starts. Arguments are those of :class:`CheckpointHook`.
    """

    def __init__(self, *args, **kwargs) -> None:
        # Overrides CheckpointHook's private save methods.
        check_verified('mmengine', 'CheckpointHook._save_checkpoint_with_step')
        super().__init__(*args, **kwargs)

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and self._is_local():
            for path in glob.glob(osp.join(self.out_dir, f'*{TMP_MARK}*')):
                print_log(
                    f'Removing {path}, left by an interrupted save.',
                    logger='current')
                os.remove(path)

    def _is_local(self) -> bool:
        return self.file_client_args is None and isinstance(
            self.file_backend, LocalBackend)

    # Overrides a private method and reads the hook's state (keep_ckpt_ids,
    # filename_tmpl, args): verified with mmengine 0.10.7.
    def _save_checkpoint_with_step(self, runner, step, meta):
        if isinstance(runner, _AtomicSaves):
            # Called at the end of _save_best_checkpoint.
            runner = runner.runner
        if not self._is_local():
            return super()._save_checkpoint_with_step(runner, step, meta)
        expired = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and
                                            self.keep_ckpt_ids[-1] == step):
            self.keep_ckpt_ids.append(step)
            while len(self.keep_ckpt_ids) > self.max_keep_ckpts:
                expired.append(self.keep_ckpt_ids.popleft())
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        save_atomically(
            runner,
            self.out_dir,
            filename,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        atomic_write_text(
            osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in expired:
            path = osp.join(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.remove(path)

    def _best_paths(self) -> dict:
        """The current best checkpoints, by key indicator (mmengine keeps
        one path, or a dict for several indicators)."""
        if len(self.key_indicators) == 1:
            return {None: self.best_ckpt_path}
        return dict(self.best_ckpt_path_dict)

    def _set_best_paths(self, paths: dict) -> None:
        if len(self.key_indicators) == 1:
            self.best_ckpt_path = paths[None]
        else:
            self.best_ckpt_path_dict.update(paths)

    # Wraps a private method and sets the hook's best_ckpt_path(_dict):
    # verified with mmengine 0.10.7.
    def _save_best_checkpoint(self, runner, metrics) -> None:
        if not self.save_best or not self._is_local():
            return super()._save_best_checkpoint(runner, metrics)
        # mmengine removes the previous best before it writes the new one:
        # with the paths hidden it removes nothing, and writes atomically.
        previous = self._best_paths()
        self._set_best_paths(dict.fromkeys(previous))
        try:
            super()._save_best_checkpoint(_AtomicSaves(runner), metrics)
        finally:
            current = self._best_paths()
            self._set_best_paths(
                {key: current[key] or previous[key]
                 for key in previous})
        if not is_main_process():
            return
        for key, old in previous.items():
            if old and current[key] and current[key] != old and \
                    osp.isfile(old):
                os.remove(old)
                print_log(
                    f'The previous best checkpoint {old} is removed.',
                    logger='current')
