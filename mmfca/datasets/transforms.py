"""Image loading that skips files it cannot read or decode."""
import logging
from collections import deque
from typing import Optional

import cv2
from mmcv.transforms import LoadImageFromFile
from mmengine.logging import print_log
from mmengine.registry import TRANSFORMS

from ..utils.versions import check_verified

# What reading or decoding a broken file raises: the file backends raise
# OSError (FileNotFoundError, PermissionError, ...); Pillow's decoder raises
# OSError too (UnidentifiedImageError, truncated files); OpenCV's raises
# cv2.error on an empty file and returns None on bytes it cannot decode
# (see DECODE_FAILED). A wrong argument (an unknown color_type or
# imdecode_backend) raises KeyError or ValueError and is not one of them.
UNREADABLE_ERRORS = (OSError, cv2.error)
# mmcv's message when the decoder returned no image (an assert in
# LoadImageFromFile.transform; verified with mmcv 2.1.0).
DECODE_FAILED = 'failed to load image: {}'


@TRANSFORMS.register_module()
class LoadImageFromFileOrSkip(LoadImageFromFile):
    """mmcv's :class:`LoadImageFromFile`, returning None for an image that
    cannot be read or decoded, with a warning that names it.

    In training, mmengine's datasets replace a sample whose pipeline returns
    None by another one, so a few broken files cost a few samples instead of
    the run. In testing, mmengine refuses a None sample, after the warning
    has named the file. mmfca's configs name this transform in their
    training pipelines (their test pipelines keep ``LoadImageFromFile``).

    Only read and decode failures are skipped (:data:`UNREADABLE_ERRORS`, or
    a decoder that returns no image): a wrong argument or a bug raises as in
    ``LoadImageFromFile``. When ``max_failures_in_a_row`` images in a row
    fail, the data as a whole is broken (a wrong directory, an unmounted
    disk, files of another format), not a few files: the transform raises,
    naming the last files and the count, instead of letting the dataset
    re-sample until its own generic error.

    Args:
        max_failures_in_a_row (int): Consecutive failures (in this process)
            that stop the run. A few broken files never get there: even
            with 80% of the images broken, a run of failures reaches 100
            with a chance of 0.8**100 (2e-10). Keep it below the dataset's
            ``max_refetch`` (mmengine's default: 1000). Defaults to 100.
        **kwargs: As :class:`LoadImageFromFile`, except ``ignore_empty``:
            unreadable images are always skipped, and mmcv's
            ``ignore_empty=True`` would also turn every other error into a
            silent skip, so it is refused.
    """

    skipped = 0
    """Images skipped so far in this process (a data-loader worker counts
    its own)."""

    def __init__(self, max_failures_in_a_row: int = 100, **kwargs):
        check_verified('mmcv',
                       "LoadImageFromFile's message for an undecodable image")
        if kwargs.get('ignore_empty'):
            raise ValueError(
                'LoadImageFromFileOrSkip skips the images that cannot be '
                'read or decoded, and only those; ignore_empty=True would '
                'also skip images on any other error. Remove ignore_empty.')
        super().__init__(**kwargs)
        if max_failures_in_a_row < 1:
            raise ValueError(f'max_failures_in_a_row must be at least 1, '
                             f'got {max_failures_in_a_row}.')
        self.max_failures_in_a_row = max_failures_in_a_row
        self._failed = deque(maxlen=3)
        self._failures_in_a_row = 0

    def transform(self, results: dict) -> Optional[dict]:
        filename = results['img_path']
        try:
            results = super().transform(results)
        except UNREADABLE_ERRORS as err:
            # One line: OpenCV's messages end with a newline.
            message = ' '.join(str(err).split())
            return self._skip(filename, f'{type(err).__name__}: {message}')
        except AssertionError as err:
            if str(err) != DECODE_FAILED.format(filename):
                raise
            return self._skip(filename,
                              f'{self.imdecode_backend} cannot decode it')
        self._failures_in_a_row = 0
        return results

    def _skip(self, filename: str, reason: str) -> None:
        type(self).skipped += 1
        self._failures_in_a_row += 1
        self._failed.append(f'{filename!r} ({reason})')
        if self._failures_in_a_row >= self.max_failures_in_a_row:
            raise RuntimeError(
                f'The last {self._failures_in_a_row} images could not be '
                f'read or decoded (the latest: {"; ".join(self._failed)}); '
                f'{type(self).skipped} image(s) skipped so far in this '
                f'process. So many failures in a row mean that the data is '
                f'broken, not a few files: check data_root and data_prefix, '
                f'that the files are images, and the file backend '
                f'(backend_args).')
        print_log(
            f'Skipping {filename!r}: it cannot be read as an image '
            f'({reason}). {type(self).skipped} image(s) skipped so far in '
            f'this process.',
            logger='current',
            level=logging.WARNING)
        return None
