from .loops import ResumableIterBasedTrainLoop, seeded_data_stream
from .reliable_runner import ReliableRunner, find_resumable_checkpoint

__all__ = [
    'ReliableRunner', 'ResumableIterBasedTrainLoop',
    'find_resumable_checkpoint', 'seeded_data_stream'
]
