from .seeded_sampling import (SampleIndex, SeededDefaultSampler,
                              SeededInfiniteSampler, SeededSampleDataset)
from .transforms import LoadImageFromFileOrSkip

__all__ = [
    'LoadImageFromFileOrSkip', 'SampleIndex', 'SeededDefaultSampler',
    'SeededInfiniteSampler', 'SeededSampleDataset'
]
