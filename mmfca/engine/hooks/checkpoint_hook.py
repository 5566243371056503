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

check_verified('mmengine', 'CheckpointHook._save_checkpoint_with_step')
require_attribute(CheckpointHook, '_save_checkpoint_with_step', 'mmengine')

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


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """mmengine's :class:`CheckpointHook`, with checkpoints that survive a
    crash while saving.

    The stock hook writes ``iter_N.pth`` in place, and with
    ``max_keep_ckpts`` deletes the oldest checkpoint *before* writing the
    new one, so a kill during the write can leave a truncated latest file
    and no intact one. Here, on a local disk, a checkpoint is written to a
    temporary name and renamed when complete, ``last_checkpoint`` is
    replaced atomically after it, and old checkpoints are removed only
    then. Leftover temporary files of a killed run are removed when the
    next run starts. Arguments are those of :class:`CheckpointHook`.
    """

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
        tmp_name = f'{filename}{TMP_MARK}{os.getpid()}'
        runner.save_checkpoint(
            self.out_dir,
            tmp_name,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        os.replace(osp.join(self.out_dir, tmp_name), self.last_ckpt)
        atomic_write_text(
            osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in expired:
            path = osp.join(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.remove(path)
