from .reliable_runner import ReliableRunner, find_resumable_checkpoint

__all__ = ['ReliableRunner', 'find_resumable_checkpoint']
