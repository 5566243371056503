"""Image loading that skips files it cannot decode."""
import logging
from typing import Optional

from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log


class LoadImageFromFileOrSkip(LoadImageFromFile):
    """mmcv's :class:`LoadImageFromFile`, returning None for an image that
    cannot be read or decoded, with a warning that names it.

    In training, mmengine's datasets replace a sample whose pipeline returns
    None by another one, so a few broken files cost a few samples instead of
    the run. In testing, mmengine refuses a None sample, after the warning
    has named the file. :class:`~mmfca.engine.ReliableRunner` puts this
    transform in place of ``LoadImageFromFile`` in training pipelines.

    Args:
        **kwargs: As :class:`LoadImageFromFile`.
    """

    skipped = 0
    """Images skipped so far in this process (a data-loader worker counts
    its own)."""

    def transform(self, results: dict) -> Optional[dict]:
        try:
            return super().transform(results)
        except Exception as err:  # noqa: B902  any decoder or I/O failure
            type(self).skipped += 1
            print_log(
                f'Skipping {results.get("img_path")!r}: it cannot be read as '
                f'an image ({type(err).__name__}: {err}). '
                f'{type(self).skipped} image(s) skipped so far in this '
                f'process.',
                logger='current',
                level=logging.WARNING)
            return None
