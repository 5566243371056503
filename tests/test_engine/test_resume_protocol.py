"""The two ways mmengine's IterBasedTrainLoop resumes, and mmfca's side of
each: mmengine 0.10.7 fetches (and discards) a batch per finished
iteration; onedl-mmengine 0.10.12 calls ``dataloader_iterator.skip_iter``
once, which fast-forwards the sampler through its ``skip``. The end-to-end
resumes (tests/test_engine/test_resume.py) run whichever is installed."""
import random
from itertools import islice

import pytest
from mmengine.dataset import InfiniteSampler

from mmfca.datasets import SeededInfiniteSampler
from mmfca.engine.hooks.rng_state_hook import (_RestoreAfterReplay,
                                               capture_rng_states)
from mmfca.engine.runner.loops import resumes_by_skip_iter
from mmfca.utils.versions import installed


def test_the_installed_mmengine_is_known_to_resume_one_way():
    """onedl-mmengine 0.10.12 has ``skip_iter``; mmengine 0.10.7 has not."""
    onedl = installed('mmengine').distribution == 'onedl-mmengine'
    assert resumes_by_skip_iter() == onedl


def ranks(world_size: int, size: int = 7):
    samplers = []
    for rank in range(world_size):
        sampler = SeededInfiniteSampler(list(range(size)), seed=3)
        sampler.rank, sampler.world_size = rank, world_size
        samplers.append(sampler)
    return samplers


@pytest.mark.parametrize('world_size', [1, 2, 3])
@pytest.mark.parametrize('skipped', [0, 1, 6, 7, 20])
def test_skip_follows_mmengines_contract(world_size, skipped):
    """``skip(n)`` (per rank, absolute, as onedl-mmengine's
    ``InfiniteSampler.skip`` documents) continues each rank's stream of an
    uninterrupted run after its first ``n`` indices; that stream is
    mmengine's own InfiniteSampler's, index for index."""
    for sampler in ranks(world_size):
        stock = InfiniteSampler(list(range(7)), seed=3)
        stock.rank, stock.world_size = sampler.rank, world_size
        stock.indices = stock._indices_of_rank()
        uninterrupted = list(islice(iter(stock), skipped + 30))
        assert [int(i) for i in islice(iter(sampler), skipped + 30)] == \
            uninterrupted
        sampler.skip(skipped)
        assert [int(i) for i in islice(iter(sampler), 30)] == \
            uninterrupted[skipped:]
    with pytest.raises(ValueError, match='num_samples must be >= 0'):
        ranks(1)[0].skip(-1)


class SkippingIterator:
    """A data iterator of onedl-mmengine's kind: ``skip_iter`` moves it
    on without loading, drawing from the global generator as a sampler
    without its own generator would, and the data-loader iterator it then
    creates at the next batch draws a base seed from it too."""

    def __init__(self):
        self.position = 0
        self.created = False

    def _ensure_iterator(self):
        if not self.created:
            self.created = True
            random.random()

    def __iter__(self):
        return self

    def __next__(self):
        self._ensure_iterator()
        self.position += 1
        return random.random()

    def skip_iter(self, num_iters: int) -> None:
        for _ in range(num_iters):
            random.random()
        self.position += num_iters
        self.created = False


def test_restore_after_a_skip_iter_resume():
    """The first batch after ``skip_iter`` is drawn with the saved states,
    as in the uninterrupted run (which created its data-loader iterator
    long before)."""
    random.seed(0)
    saved = capture_rng_states()
    expected = random.random()
    random.seed(123)
    wrapped = _RestoreAfterReplay(SkippingIterator(), 4, saved)
    wrapped.skip_iter(4)
    assert wrapped._iterator.position == 4
    assert next(wrapped) == expected
    assert next(wrapped) != expected
