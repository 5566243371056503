"""Image loading that skips files it cannot read or decode."""
import logging
from collections import deque
from typing import Optional

import cv2
import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
from mmengine.logging import print_log
from mmengine.registry import TRANSFORMS

# What reading or decoding a broken file raises: the file backends raise
# OSError (FileNotFoundError, PermissionError, ...); Pillow's decoder raises
# OSError too (UnidentifiedImageError, truncated files); OpenCV's raises
# cv2.error on an empty file and returns None on bytes it cannot decode.
# A wrong argument (an unknown color_type or imdecode_backend) raises
# KeyError or ValueError and is not one of them.
UNREADABLE_ERRORS = (OSError, cv2.error)


@TRANSFORMS.register_module()
class LoadImageFromFileOrSkip(LoadImageFromFile):
    """mmcv's :class:`LoadImageFromFile`, returning None for an image that
    cannot be read or decoded, with a warning that names it.

    In training, mmengine's datasets replace a sample whose pipeline returns
    None by another one, so a few broken files cost a few samples instead of
    the run. In testing, mmengine refuses a None sample, after the warning
    has named the file. :class:`~mmfca.engine.ReliableRunner` puts this
    transform in place of ``LoadImageFromFile`` in training pipelines.

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
        **kwargs: As :class:`LoadImageFromFile`. ``ignore_empty`` has no
            effect: unreadable images are always skipped.
    """

    skipped = 0
    """Images skipped so far in this process (a data-loader worker counts
    its own)."""

    def __init__(self, max_failures_in_a_row: int = 100, **kwargs):
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
            img_bytes = self._read(filename)
            img = mmcv.imfrombytes(
                img_bytes, flag=self.color_type, backend=self.imdecode_backend)
        except UNREADABLE_ERRORS as err:
            # One line: OpenCV's messages end with a newline.
            message = ' '.join(str(err).split())
            return self._skip(filename, f'{type(err).__name__}: {message}')
        if img is None:
            return self._skip(filename,
                              f'{self.imdecode_backend} cannot decode it')
        self._failures_in_a_row = 0
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def _read(self, filename: str) -> bytes:
        """The file's bytes, as :class:`LoadImageFromFile` reads them."""
        if self.file_client_args is not None:
            return fileio.FileClient.infer_client(self.file_client_args,
                                                  filename).get(filename)
        return fileio.get(filename, backend_args=self.backend_args)

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
