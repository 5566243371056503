"""Training samples whose random augmentation depends only on (seed,
position in the sample stream), so that a resumed run draws what the
uninterrupted one drew, whatever the data-loader workers did before.

mmcv's, mmseg's, mmdet's and mmpretrain's transforms draw from the global
Python, numpy and torch generators of the process that runs the pipeline
(a data-loader worker, or the main process with ``num_workers=0``). Seeded
once per worker, those draws depend on everything that worker loaded
before, which a resume cannot replay exactly (persistent workers keep their
state across epochs; a resumed run starts new ones). Here the samplers
yield :class:`SampleIndex` values that carry the position of the sample in
the run's global stream and the sampler's seed, and
:class:`SeededSampleDataset` seeds the three generators from them just
before the pipeline runs, then puts the previous states back (so that, in
the main process, the model's own draws are untouched).

The global position of a sample already tells the ranks apart (rank ``r``
of ``W`` takes positions ``r, r + W, ...``), so two ranks never draw the
same augmentation for their samples, and a sample keeps its position, index
and draws when the number of processes changes.
"""
import random
from typing import Any, Iterator, Optional, Sized, Union

import numpy as np
import torch
from mmengine.dataset import DefaultSampler, InfiniteSampler
from mmengine.registry import DATA_SAMPLERS, DATASETS

from ..utils.versions import check_verified

#: What the seeded samplers rely on: they restate the index streams of
#: mmengine's samplers.
SAMPLER_STREAMS = 'the index streams of DefaultSampler and InfiniteSampler'


class SampleIndex(int):
    """A dataset index (an ``int`` to every dataset and batch sampler) that
    also carries where the sample stands in the run's stream.

    Args:
        index (int): The index in the dataset.
        seed (int): The sampler's seed (the run's seed).
        position (int): The sample's position in the global stream of the
            run (all ranks, all epochs).
    """

    def __new__(cls, index: int, seed: int, position: int) -> 'SampleIndex':
        value = super().__new__(cls, index)
        value.seed = int(seed)
        value.position = int(position)
        return value

    def __reduce__(self):
        # Sent to the data-loader workers by pickling.
        return SampleIndex, (int(self), self.seed, self.position)

    def __repr__(self) -> str:
        return (f'SampleIndex({int(self)}, seed={self.seed}, '
                f'position={self.position})')


def sample_generator_seeds(seed: int, position: int) -> np.ndarray:
    """Four 32-bit words derived from ``(seed, position)`` with numpy's
    :class:`~numpy.random.SeedSequence` (well mixed: neighbouring
    positions give unrelated streams)."""
    return np.random.SeedSequence([seed % 2**64, position]).generate_state(4)


class seeded_generators:
    """Context manager: the global Python, numpy and torch (CPU)
    generators seeded from ``(seed, position)`` inside, their previous
    states back outside.

    Args:
        seed (int): The run's seed.
        position (int): The sample's position in the stream.
    """

    def __init__(self, seed: int, position: int):
        self._words = sample_generator_seeds(seed, position)
        self._saved: Optional[tuple] = None

    def __enter__(self) -> None:
        self._saved = (random.getstate(), np.random.get_state(),
                       torch.get_rng_state())
        words = [int(word) for word in self._words]
        random.seed(words[0] << 32 | words[1])
        np.random.seed(self._words)
        torch.manual_seed(words[2] << 32 | words[3])

    def __exit__(self, *exc_info) -> None:
        python, numpy, torch_state = self._saved
        random.setstate(python)
        np.random.set_state(numpy)
        torch.set_rng_state(torch_state)


@DATASETS.register_module()
class SeededSampleDataset:
    """A dataset whose samples are augmented with generators seeded from
    their :class:`SampleIndex` (see the module docstring).

    ``ReliableRunner`` wraps the training dataset in it when the config sets
    ``seeded_data_stream = True`` (``configs/_base_/mmfca_runtime.py``),
    together with a sampler of this module. A plain ``int`` index (from
    another sampler, or a tool that reads samples) loads the sample with the
    generators as they are. Other attributes are read from the wrapped
    dataset.

    Args:
        dataset (Dataset | dict): The dataset, or its config.
    """

    def __init__(self, dataset: Union[dict, Any]):
        if isinstance(dataset, dict):
            dataset = DATASETS.build(dataset)
        self.dataset = dataset

    @property
    def metainfo(self) -> dict:
        return self.dataset.metainfo

    def full_init(self) -> None:
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()

    def get_data_info(self, idx: int) -> dict:
        return self.dataset.get_data_info(int(idx))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> Any:
        if not isinstance(idx, SampleIndex):
            return self.dataset[idx]
        with seeded_generators(idx.seed, idx.position):
            return self.dataset[int(idx)]

    def __getattr__(self, name: str) -> Any:
        # Only called for names this wrapper lacks; private names are not
        # forwarded (unpickling looks some up before ``dataset`` is set).
        if name.startswith('_'):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.dataset!r})'


@DATA_SAMPLERS.register_module()
class SeededDefaultSampler(DefaultSampler):
    """mmengine's :class:`~mmengine.dataset.DefaultSampler` (same indices,
    same order) yielding :class:`SampleIndex` values: position
    ``epoch * total_size + i`` for the ``i``-th index of the epoch's padded
    list, before it is split between the ranks.

    Arguments are those of :class:`~mmengine.dataset.DefaultSampler`.
    """

    def __init__(self, *args, **kwargs) -> None:
        check_verified('mmengine', SAMPLER_STREAMS)
        super().__init__(*args, **kwargs)

    def __iter__(self) -> Iterator[SampleIndex]:
        base = self.epoch * self.total_size
        for offset, index in enumerate(super().__iter__()):
            position = base + self.rank + offset * self.world_size
            yield SampleIndex(index, self.seed, position)


@DATA_SAMPLERS.register_module()
class SeededInfiniteSampler(InfiniteSampler):
    """mmengine's :class:`~mmengine.dataset.InfiniteSampler` (the same
    endless stream of shuffled passes, split between the ranks) that can
    start at any position of the stream without producing what comes
    before, and yields :class:`SampleIndex` values.

    :class:`~mmfca.engine.runner.ResumableIterBasedTrainLoop` holds it
    (:meth:`hold`) while mmengine's loop creates its data iterator, then
    starts it (:meth:`start_at`) at ``iteration x batch size x world
    size``: a resume costs one shuffle per pass over the data set skipped,
    not a decoded batch per iteration.

    Args:
        dataset (Sized): The dataset.
        shuffle (bool): Shuffle each pass. Defaults to True.
        seed (int, optional): The stream's seed, the same on every rank.
            Defaults to None (a seed shared by the ranks).
    """

    def __init__(self,
                 dataset: Sized,
                 shuffle: bool = True,
                 seed: Optional[int] = None) -> None:
        check_verified('mmengine', SAMPLER_STREAMS)
        super().__init__(dataset, shuffle=shuffle, seed=seed)
        self._start: Optional[int] = 0

    def hold(self) -> None:
        """Yield nothing until :meth:`start_at` is called."""
        self._start = None

    def start_at(self, position: int) -> None:
        """Begin the next iteration over this sampler at ``position`` of
        the global stream (the first position of this rank at or after
        it)."""
        if position < 0:
            raise ValueError(f'position must be >= 0, got {position}.')
        self._start = int(position)

    def skip(self, num_samples: int) -> None:
        """Start after the first ``num_samples`` indices of this rank (at
        position ``num_samples x world size`` of the global stream): the
        resume contract of ``InfiniteSampler.skip`` in onedl-mmengine
        0.10.12, whose ``IterBasedTrainLoop`` resumes through it."""
        if num_samples < 0:
            raise ValueError(f'num_samples must be >= 0, got {num_samples}.')
        self.start_at(num_samples * self.world_size)

    def _passes(self) -> Iterator[torch.Tensor]:
        # The order of InfiniteSampler._infinite_indices: one generator
        # seeded once, a permutation per pass (mmengine 0.10.7).
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        while True:
            if self.shuffle:
                yield torch.randperm(self.size, generator=generator)
            else:
                yield torch.arange(self.size)

    def __iter__(self) -> Iterator[SampleIndex]:
        if self._start is None:
            return
        # First position of this rank at or after the start.
        position = self._start + (self.rank - self._start) % self.world_size
        skipped = position // self.size
        for pass_index, order in enumerate(self._passes()):
            if pass_index < skipped:
                continue
            base = pass_index * self.size
            offset = position - base
            indices = order.tolist()
            while offset < self.size:
                yield SampleIndex(indices[offset], self.seed, base + offset)
                offset += self.world_size
            position = base + offset
