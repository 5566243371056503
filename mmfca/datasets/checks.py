"""Clear errors for datasets that point nowhere, hold nothing or are not
what their class reads.

The codebases fail late and cryptically on such input (a ``KeyError:
'categories'`` from pycocotools, an endless loop of an infinite sampler over
zero samples); these checks name the file or directory and the setting to
fix. They cost nothing on good input.
"""
import json
import os.path as osp
from typing import Iterator, Optional, Tuple

COCO_KEYS = ('images', 'annotations', 'categories')


def _dataset_cfgs(cfg) -> Iterator[dict]:
    """A dataset config and those it wraps (RepeatDataset, ConcatDataset,
    ClassBalancedDataset ...)."""
    for _, dataset in _keyed_dataset_cfgs(cfg, 'dataset'):
        yield dataset


def _keyed_dataset_cfgs(cfg, key: str) -> Iterator[Tuple[str, dict]]:
    """``(config key, dataset config)`` for a dataset config and those it
    wraps, e.g. ``train_dataloader.dataset.dataset`` for the dataset inside
    a RepeatDataset."""
    if not isinstance(cfg, dict):
        return
    yield key, cfg
    yield from _keyed_dataset_cfgs(cfg.get('dataset'), f'{key}.dataset')
    for index, inner in enumerate(cfg.get('datasets', None) or []):
        yield from _keyed_dataset_cfgs(inner, f'{key}.datasets.{index}')


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


def check_dataset_paths(cfg: dict, key: Optional[str] = None) -> None:
    """Check that a dataset config's root, prefixes and annotation file
    exist, before the dataset is built.

    Args:
        cfg (dict): A dataset config (``train_dataloader.dataset``).
        key (str, optional): Where ``cfg`` sits in the config, e.g.
            ``'test_dataloader.dataset'``, so that the message names the
            exact key to override (``--cfg-options KEY.data_root=PATH``).
            Defaults to None (the message names the setting only).

    Raises:
        FileNotFoundError: Naming the missing path and the setting.
    """
    for where, dataset in _keyed_dataset_cfgs(cfg, key or ''):
        name = dataset.get('type', 'dataset')
        setting = f'{where}.' if key else ''
        root = dataset.get('data_root')
        if root and _is_local(root) and not osp.isdir(root):
            where_to_set = (f'--cfg-options {where}.data_root=PATH'
                            if key else 'data_root in the dataset config')
            raise FileNotFoundError(
                f'{name}: data_root {root!r} does not exist. Put the data '
                f'there (the Data section of docs/classification.md, '
                f'docs/segmentation.md or docs/detection.md) or set '
                f'{where_to_set}.')
        ann_file = _under_root(dataset, dataset.get('ann_file') or '')
        if ann_file and _is_local(ann_file) and not osp.isfile(ann_file):
            raise FileNotFoundError(
                f'{name}: annotation file {ann_file!r} (data_root + '
                f'ann_file) does not exist. Check {setting}ann_file and '
                f'{setting}data_root.')
        for prefix_key, prefix in _prefixes(dataset).items():
            folder = _under_root(dataset, prefix)
            if folder and _is_local(folder) and not osp.isdir(folder):
                raise FileNotFoundError(
                    f'{name}: data_prefix.{prefix_key} directory '
                    f'{folder!r} (data_root + data_prefix.{prefix_key}) '
                    f'does not exist. Check {setting}data_root and '
                    f'{setting}data_prefix.')


def dataloaders_used(cfg, mode: str) -> Tuple[str, ...]:
    """The dataloaders a run reads: ``'train'`` reads the training loader
    and, when validation is on (``val_cfg`` and ``val_dataloader`` set),
    the validation loader; ``'val'`` and ``'test'`` read their own.

    Args:
        cfg: The config (or a dict with the runner's loader settings).
        mode (str): ``'train'``, ``'val'`` or ``'test'``.
    """
    if mode not in ('train', 'val', 'test'):
        raise ValueError(
            f"mode must be 'train', 'val' or 'test', got {mode!r}.")
    if mode != 'train':
        return (f'{mode}_dataloader', )
    if cfg.get('val_cfg') is not None and \
            cfg.get('val_dataloader') is not None:
        return ('train_dataloader', 'val_dataloader')
    return ('train_dataloader', )


def check_dataloader_paths(cfg, mode: str) -> None:
    """:func:`check_dataset_paths` for the dataloaders a run reads (see
    :func:`dataloaders_used`), so that testing does not ask for the
    training data.

    Args:
        cfg: The config (or a dict with the runner's loader settings).
        mode (str): ``'train'``, ``'val'`` or ``'test'``.

    Raises:
        FileNotFoundError: Naming the missing path and the key to set.
    """
    for name in dataloaders_used(cfg, mode):
        loader = cfg.get(name)
        if isinstance(loader, dict) and isinstance(
                loader.get('dataset'), dict):
            check_dataset_paths(loader['dataset'], f'{name}.dataset')


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
            places.append(f'data_prefix.{key}={_under_root(inner, prefix)!r}')
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
