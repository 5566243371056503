"""A training loop that resumes without loading the data already trained
on, and the config changes that give a run the seeded data stream."""
import copy
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from mmengine.logging import print_log
from mmengine.registry import LOOPS
from mmengine.runner import IterBasedTrainLoop
from mmengine.runner.base_loop import BaseLoop
from torch.utils.data import BatchSampler, DataLoader

from ...datasets.seeded_sampling import SeededInfiniteSampler
from ...utils.versions import check_verified

#: What the loop and RNGStateHook rely on.
RESUME_PROTOCOL = 'how IterBasedTrainLoop resumes'


def resumes_by_skip_iter() -> bool:
    """Whether mmengine's ``IterBasedTrainLoop.run`` resumes with one
    ``dataloader_iterator.skip_iter(iter)`` call, which fast-forwards the
    sampler through its ``skip`` before the lazily created data iterator
    loads anything (onedl-mmengine 0.10.12), instead of fetching and
    discarding every batch already trained on (mmengine 0.10.7)."""
    # A private class of mmengine (verified with 0.10.7 and 0.10.12).
    from mmengine.runner.loops import _InfiniteDataloaderIterator
    return hasattr(_InfiniteDataloaderIterator, 'skip_iter')


class _SkipReplay:
    """The data iterator of :class:`ResumableIterBasedTrainLoop` on
    mmengine 0.10.7: returns None, without loading anything, for the
    ``skip`` batches mmengine's ``run`` fetches and discards on resume,
    then iterates the data loader (created at the first real batch, after
    the ``before_train`` hooks)."""

    def __init__(self, dataloader: DataLoader, skip: int):
        self._dataloader = dataloader
        self._skip = skip
        self._iterator = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._skip > 0:
            self._skip -= 1
            return None
        if self._iterator is None:
            self._iterator = iter(self._dataloader)
        return next(self._iterator)


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(IterBasedTrainLoop):
    """mmengine's :class:`~mmengine.runner.IterBasedTrainLoop` that resumes
    by starting the sampler where the run stopped, instead of loading (and
    discarding) every batch already trained on.

    The stock loop calls ``next()`` on the data iterator once per iteration
    done, which decodes and augments every one of those batches again:
    tens of minutes late in a 160k-iteration recipe. Here the sampler, a
    :class:`~mmfca.datasets.SeededInfiniteSampler`, starts at sample
    ``iteration x batch size x world size`` of the run's stream, and the
    skipped ``next()`` calls return without loading. Where mmengine's loop
    resumes by itself without loading (onedl-mmengine's ``skip_iter``, see
    :func:`resumes_by_skip_iter`), its own data iterator is kept and its
    ``skip_iter`` starts the sampler at that same position
    (:meth:`~mmfca.datasets.SeededInfiniteSampler.skip`). With the samplers'
    per-sample seeding (:class:`~mmfca.datasets.SeededSampleDataset`) the
    batches that follow are those of the uninterrupted run, whatever the
    number of workers. The time to the first new iteration does not grow
    with the iteration count.

    Arguments are those of :class:`~mmengine.runner.IterBasedTrainLoop`;
    ``train_dataloader`` needs ``sampler=dict(type='SeededInfiniteSampler')``
    and no ``batch_sampler`` (``ReliableRunner`` sets both when the config
    sets ``seeded_data_stream = True``).
    """

    def __init__(self, runner, dataloader: Union[DataLoader, Dict],
                 max_iters: int, **kwargs) -> None:
        check_verified('mmengine', RESUME_PROTOCOL)
        # mmengine's __init__ creates the data iterator, and with workers
        # they start loading at once, before a resume says where to start:
        # the loader is built first (BaseLoop) and its sampler held.
        BaseLoop.__init__(self, runner, dataloader)
        self._sampler = self._seeded_sampler(self.dataloader)
        self._sampler.hold()
        super().__init__(runner, self.dataloader, max_iters, **kwargs)

    @staticmethod
    def _seeded_sampler(dataloader: DataLoader) -> SeededInfiniteSampler:
        if not isinstance(dataloader.sampler, SeededInfiniteSampler):
            raise TypeError(
                f'ResumableIterBasedTrainLoop needs '
                f'train_dataloader.sampler of type SeededInfiniteSampler, '
                f'got {type(dataloader.sampler).__name__}. Set '
                f'seeded_data_stream = True in the config (ReliableRunner '
                f'then sets it), or use IterBasedTrainLoop.')
        if type(dataloader.batch_sampler) is not BatchSampler:
            raise TypeError(
                f'ResumableIterBasedTrainLoop finds the resume position as '
                f'iteration x batch size, which holds for consecutive '
                f'batches only; train_dataloader.batch_sampler is '
                f'{type(dataloader.batch_sampler).__name__}. Remove '
                f'train_dataloader.batch_sampler, or use IterBasedTrainLoop.')
        return dataloader.sampler

    @property
    def samples_per_iteration(self) -> int:
        """Samples the whole run (all ranks) takes per iteration."""
        return self.dataloader.batch_size * self._sampler.world_size

    def run(self) -> None:
        position = self._iter * self.samples_per_iteration
        self._sampler.start_at(position)
        if self._iter > 0:
            print_log(
                f'Resuming at iteration {self._iter}: the sampler starts at '
                f'sample {position} of the stream, and no batch is loaded '
                f'again (ResumableIterBasedTrainLoop; mmengine\'s "Advance '
                f'dataloader" message that follows skips without loading).',
                logger='current')
        if not resumes_by_skip_iter():
            # IterBasedTrainLoop.run (mmengine 0.10.7) calls next() on
            # dataloader_iterator self._iter times on resume and discards
            # the batches: _SkipReplay returns None for those.
            self.dataloader_iterator = _SkipReplay(self.dataloader, self._iter)
        return super().run()


def _type_name(value: Any) -> Optional[str]:
    """The class name a config's ``type`` refers to (scope dropped)."""
    if isinstance(value, str):
        return value.split('.')[-1]
    return getattr(value, '__name__', None)


def seeded_data_stream(loop_cfg: dict,
                       dataloader_cfg: Any) -> Tuple[dict, Any, List[str]]:
    """The training loop and data-loader configs of a run with the seeded
    data stream, and what was changed (for the log).

    - ``IterBasedTrainLoop`` (or ``by_epoch=False``) becomes
      :class:`ResumableIterBasedTrainLoop`, when the sampler is an
      ``InfiniteSampler`` and no ``batch_sampler`` is set;
    - ``InfiniteSampler`` and ``DefaultSampler`` become
      :class:`~mmfca.datasets.SeededInfiniteSampler` and
      :class:`~mmfca.datasets.SeededDefaultSampler` (same indices, same
      order), and the dataset is wrapped in
      :class:`~mmfca.datasets.SeededSampleDataset`;
    - the data loader gets its own ``torch.Generator``, so that creating a
      data iterator (every epoch, or once with persistent workers) does not
      draw from the global torch generator, whose states
      :class:`~mmfca.engine.hooks.RNGStateHook` saves for the model.

    Args:
        loop_cfg (dict): ``train_cfg``.
        dataloader_cfg (dict | DataLoader): ``train_dataloader``; a built
            DataLoader is returned unchanged.

    Returns:
        tuple: The new ``train_cfg``, the new ``train_dataloader`` and the
        list of changes (or of reasons for keeping a part as it is).
    """
    notes: List[str] = []
    if not isinstance(dataloader_cfg, dict):
        notes.append('train_dataloader is a built DataLoader: kept as it is '
                     '(augmentation draws depend on the workers\' history)')
        return loop_cfg, dataloader_cfg, notes
    loop = copy.deepcopy(loop_cfg)
    loader = copy.deepcopy(dataloader_cfg)
    sampler = loader.get('sampler') or {}
    sampler_type = _type_name(sampler.get('type'))
    seeded = dict(
        InfiniteSampler='SeededInfiniteSampler',
        DefaultSampler='SeededDefaultSampler')
    if sampler_type in seeded:
        sampler['type'] = seeded[sampler_type]
        loader['sampler'] = sampler
        notes.append(f'train_dataloader.sampler: {sampler_type} -> '
                     f'{seeded[sampler_type]}')
        sampler_type = seeded[sampler_type]
    elif sampler_type not in seeded.values():
        notes.append(f'train_dataloader.sampler {sampler_type} kept: '
                     f'augmentation draws depend on the workers\' history')
        return loop, loader, notes
    dataset = loader.get('dataset')
    if isinstance(dataset, dict) and \
            _type_name(dataset.get('type')) != 'SeededSampleDataset':
        loader['dataset'] = dict(type='SeededSampleDataset', dataset=dataset)
        notes.append('train_dataloader.dataset wrapped in '
                     'SeededSampleDataset (per-sample seeds)')
    loader['generator'] = torch.Generator()
    notes.append('train_dataloader.generator: a private torch.Generator')

    loop_type = _type_name(loop.get('type'))
    iter_based = loop_type == 'IterBasedTrainLoop' or (
        loop_type is None and loop.get('by_epoch') is False)
    if iter_based:
        if sampler_type != 'SeededInfiniteSampler' or \
                loader.get('batch_sampler') is not None:
            notes.append('train_cfg IterBasedTrainLoop kept (it needs an '
                         'InfiniteSampler and no batch_sampler to resume '
                         'without replay)')
        else:
            loop.pop('by_epoch', None)
            loop['type'] = 'ResumableIterBasedTrainLoop'
            notes.append(
                'train_cfg: IterBasedTrainLoop -> ResumableIterBasedTrainLoop')
    return loop, loader, notes
