"""A pipeline step that refuses annotations made for another size than
their image's.

Such samples train without an error in the codebases: mmseg's resizes
scale an image and its label map each to the target size on its own, and
mmdet draws the boxes and polygons of the annotation file on the image as
it is, so labels silently land on pixels they were not made for.
:class:`CheckAnnotationSize` compares the sizes as the sample is loaded and
stops the run, naming the files and the fix.
"""
from typing import Tuple

from mmcv.transforms import BaseTransform
from mmengine.registry import TRANSFORMS

Size = Tuple[int, int]


def _size_text(size: Size) -> str:
    return f'{size[0]} x {size[1]} (height x width)'


def image_size(results: dict) -> Size:
    """The size of the image as decoded (``ori_shape``, which
    ``LoadImageFromFile`` sets and the resizes keep).

    Raises:
        ValueError: The image has not been loaded yet.
    """
    if 'ori_shape' not in results:
        raise ValueError(
            f'CheckAnnotationSize needs the size of the decoded image '
            f'(ori_shape) of {results.get("img_path")!r}, which '
            f'LoadImageFromFile sets: place CheckAnnotationSize after the '
            f'image loading step of the pipeline.')
    height, width = results['ori_shape'][:2]
    return int(height), int(width)


def check_label_map_size(results: dict, size: Size) -> None:
    """Refuse a loaded label map (``gt_seg_map``) whose size is not the
    image's.

    Args:
        results (dict): The sample, after ``LoadAnnotations``.
        size (tuple[int, int]): The image's (height, width).

    Raises:
        ValueError: Naming both files, both sizes and the fix.
    """
    label_map = results.get('gt_seg_map')
    if label_map is None:
        return
    label_size = tuple(int(side) for side in label_map.shape[:2])
    if label_size == size:
        return
    raise ValueError(
        f'The label map {results.get("seg_map_path")!r} is '
        f'{_size_text(label_size)} but its image {results.get("img_path")!r} '
        f'is {_size_text(size)}; the resizes would scale each to the target '
        f'size on its own, stretching labels over pixels they were not made '
        f'for. Re-save the label map '
        f'at the size of its image with nearest-neighbour interpolation '
        f'(which keeps the label values; e.g. PIL: '
        f'label.resize(({size[1]}, {size[0]}), Image.NEAREST)), or check '
        f'that it belongs to this image (data_prefix, img_suffix, '
        f'seg_map_suffix).')


def check_recorded_size(results: dict, size: Size) -> None:
    """Refuse an image whose size is not the one the annotation file
    records for it (``height`` and ``width``, which mmdet's COCO-style
    datasets read from the file's ``images`` entry).

    Args:
        results (dict): The sample, after the image is loaded.
        size (tuple[int, int]): The image's (height, width).

    Raises:
        ValueError: Naming the image, its annotation entry, both sizes and
            the fix.
    """
    if 'height' not in results or 'width' not in results:
        return
    recorded = int(results['height']), int(results['width'])
    if recorded == size:
        return
    raise ValueError(
        f'The annotation file (the dataset\'s ann_file) records the image '
        f'{results.get("img_path")!r} (its images entry with id '
        f'{results.get("img_id")}) as {_size_text(recorded)}, but the file '
        f'is {_size_text(size)}. Its boxes and masks are in the coordinates '
        f'of the recorded size and would not line up with the pixels. If '
        f'they were drawn on this file, set height to {size[0]} and width '
        f'to {size[1]} in that entry; if the image was resized after it was '
        f'annotated, put back the image at the recorded size (or scale the '
        f'coordinates of its annotations to the new size).')


@TRANSFORMS.register_module()
class CheckAnnotationSize(BaseTransform):
    """Raise a ValueError when a sample's annotations are not the size of
    its image; pass the sample on unchanged otherwise.

    It compares the decoded image (``ori_shape``) with:

    - the label map (``gt_seg_map``) that ``LoadAnnotations`` loaded: in
      segmentation pipelines, place it right after ``LoadAnnotations``;
    - the image size the annotation file records (``height`` and ``width``
      of mmdet's COCO-style datasets): in detection pipelines, place it
      right after the image loading step, before ``LoadAnnotations``,
      which on such a sample may already fail with numpy's error (it
      decodes RLE masks at their recorded size and stacks them with the
      polygon masks it draws at the image's).

    A sample without these keys passes. A mismatch raises rather than
    skips: ``LoadImageFromFileOrSkip`` skips images that cannot be read,
    and the datasets then load another sample, but a label map saved at
    the wrong size is a data error to fix, usually in many files.
    """

    def transform(self, results: dict) -> dict:
        size = image_size(results)
        check_label_map_size(results, size)
        check_recorded_size(results, size)
        return results
