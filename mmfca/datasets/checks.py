"""Clear errors for datasets that point nowhere, hold nothing or are not
what their class reads.

The codebases fail late and cryptically on such input (a ``KeyError:
'categories'`` from pycocotools, an endless loop of an infinite sampler over
zero samples); these checks name the file or directory and the setting to
fix. They cost nothing on good input.
"""
import json
import os.path as osp
from typing import Iterator, Optional

COCO_KEYS = ('images', 'annotations', 'categories')


def _dataset_cfgs(cfg) -> Iterator[dict]:
    """A dataset config and those it wraps (RepeatDataset, ConcatDataset,
    ClassBalancedDataset ...)."""
    if not isinstance(cfg, dict):
        return
    yield cfg
    yield from _dataset_cfgs(cfg.get('dataset'))
    for inner in cfg.get('datasets', None) or []:
        yield from _dataset_cfgs(inner)


def _under_root(cfg: dict, path: str) -> str:
    root = cfg.get('data_root') or ''
    if not path or osp.isabs(path) or '://' in path or not root:
        return path
    return osp.join(root, path)


def _prefixes(cfg: dict) -> dict:
    """``data_prefix`` as a dict (mmpretrain also takes a plain string)."""
    prefixes = cfg.get('data_prefix') or {}
    if isinstance(prefixes, str):
        return {'prefix': prefixes}
    return dict(prefixes)


def _is_local(path: str) -> bool:
    return '://' not in path


def check_dataset_paths(cfg: dict) -> None:
    """Check that a dataset config's root, prefixes and annotation file
    exist, before the dataset is built.

    Args:
        cfg (dict): A dataset config (``train_dataloader.dataset``).

    Raises:
        FileNotFoundError: Naming the missing path and the setting.
    """
    for dataset in _dataset_cfgs(cfg):
        name = dataset.get('type', 'dataset')
        root = dataset.get('data_root')
        if root and _is_local(root) and not osp.isdir(root):
            raise FileNotFoundError(
                f'{name}: data_root {root!r} does not exist. Put the data '
                f'there (see the README section on data) or set '
                f'data_root, e.g. --cfg-options '
                f'train_dataloader.dataset.data_root=PATH.')
        ann_file = _under_root(dataset, dataset.get('ann_file') or '')
        if ann_file and _is_local(ann_file) and not osp.isfile(ann_file):
            raise FileNotFoundError(
                f'{name}: annotation file {ann_file!r} (data_root + '
                f'ann_file) does not exist. Check ann_file and data_root.')
        for key, prefix in _prefixes(dataset).items():
            folder = _under_root(dataset, prefix)
            if folder and _is_local(folder) and not osp.isdir(folder):
                raise FileNotFoundError(
                    f'{name}: data_prefix.{key} directory {folder!r} '
                    f'(data_root + data_prefix.{key}) does not exist. Check '
                    f'data_root and data_prefix.')


def coco_problem(ann_file: str) -> Optional[str]:
    """Why ``ann_file`` is not a COCO annotation file, or None if it is
    one."""
    if not ann_file.endswith('.json') or not osp.isfile(ann_file):
        return None
    try:
        with open(ann_file) as file:
            content = json.load(file)
    except (ValueError, UnicodeDecodeError) as err:
        return f'it is not valid JSON ({err})'
    if not isinstance(content, dict):
        return (f'it holds a JSON {type(content).__name__}, not an object '
                f'with the keys {list(COCO_KEYS)}')
    missing = [key for key in COCO_KEYS if key not in content]
    if missing:
        return (f'it lacks the top-level key(s) {missing}; COCO files hold '
                f'{list(COCO_KEYS)}')
    return None


def explain_build_error(cfg: dict, error: Exception) -> Optional[Exception]:
    """A clearer error for a failed dataset build, or None when the cause
    is not one of the known ones.

    Args:
        cfg (dict): The dataset config that failed to build.
        error (Exception): What the dataset class raised.
    """
    for dataset in _dataset_cfgs(cfg):
        ann_file = _under_root(dataset, dataset.get('ann_file') or '')
        problem = coco_problem(ann_file)
        if problem:
            return ValueError(
                f'{dataset.get("type", "dataset")}: {ann_file!r} is not a '
                f'COCO annotation file: {problem}. Convert the annotations '
                f'to COCO format or point ann_file at the COCO JSON file '
                f'(the dataset class raised {type(error).__name__}: '
                f'{error}).')
    # mmengine's BaseDataset serialises its samples with np.concatenate,
    # which is what fails first when there are none.
    if isinstance(error, ValueError) and 'at least one array' in str(error):
        return empty_dataset_error(cfg)
    return None


def empty_dataset_error(cfg: dict) -> ValueError:
    """The error for a dataset without samples, naming where they were
    looked for."""
    places = []
    for inner in _dataset_cfgs(cfg):
        if inner.get('ann_file'):
            places.append(
                f'ann_file={_under_root(inner, inner["ann_file"])!r}')
        for key, prefix in _prefixes(inner).items():
            places.append(
                f'data_prefix.{key}={_under_root(inner, prefix)!r}')
    where = ', '.join(places) or f'data_root={cfg.get("data_root")!r}'
    return ValueError(
        f'{cfg.get("type", "The dataset")} found no samples ({where}). '
        f'The directory is empty, the file suffixes do not match '
        f'(img_suffix / seg_map_suffix), or every image was filtered out '
        f'(filter_cfg). Check the data and those settings.')


def check_not_empty(dataset, cfg: dict) -> None:
    """Refuse a dataset with no samples (an infinite sampler would loop
    forever over it).

    Args:
        dataset: The built dataset.
        cfg (dict): Its config, for the message.

    Raises:
        ValueError: Naming where the samples were looked for.
    """
    if len(dataset) == 0:
        raise empty_dataset_error(cfg)
