"""Shared fixtures: official-layout checkpoints written once per session."""
import argparse
import os

import pytest
import torch
from reference import official_shapes, random_official_state_dict

import mmfca  # noqa: F401  registers FcaFormer

L2_DENSE_WIDTHS = (96, 192, 384, 768)


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """Undo a test's ``torch.set_num_threads`` (the benchmark tools set it):
    CPU reductions depend on the thread count, so the bit-for-bit resume
    tests compare runs that must use the same count as the shared runs."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='session')
def synthetic_ade(tmp_path_factory):
    """Synthetic ADE20K: 16 training and 4 validation images."""
    from mmfca.testing import make_synthetic_ade20k
    root = str(tmp_path_factory.mktemp('synthetic_ade'))
    make_synthetic_ade20k(root, num_train=16, num_val=4, size=128)
    return root


@pytest.fixture(scope='session')
def synthetic_coco(tmp_path_factory):
    """Synthetic COCO: 10 training and 4 validation images."""
    from mmfca.testing import make_synthetic_coco
    root = str(tmp_path_factory.mktemp('synthetic_coco'))
    make_synthetic_coco(root, num_train=10, num_val=4, size=128)
    return root


@pytest.fixture(scope='session')
def synthetic_imagenet(tmp_path_factory):
    """Synthetic ImageNet: 32 training and 8 validation images of 96x96."""
    from mmfca.testing import make_synthetic_imagenet
    root = str(tmp_path_factory.mktemp('synthetic_imagenet'))
    make_synthetic_imagenet(root, num_train=32, num_val=8, size=96)
    return root


@pytest.fixture(scope='session')
def ckpt_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('checkpoints')


@pytest.fixture(scope='session')
def official_cls(ckpt_dir):
    """Official-style ImageNet checkpoints for L1 and L2: ``model`` and a
    different ``model_ema``, plus the rest the official script saves."""
    files = {}
    for arch in ('l1', 'l2'):
        shapes = official_shapes(arch)
        model = random_official_state_dict(shapes, seed=1)
        ema = random_official_state_dict(shapes, seed=2)
        path = str(ckpt_dir / f'official_{arch}.pth')
        torch.save(
            dict(
                model=model,
                model_ema=ema,
                optimizer={
                    'state': {},
                    'param_groups': []
                },
                epoch=299,
                scaler={'scale': 65536.0},
                args=argparse.Namespace(
                    model=f'fcaformer_{arch}', lr=2e-3, drop_path=0.1)), path)
        files[arch] = dict(path=path, model=model, ema=ema)
    return files


@pytest.fixture(scope='session')
def official_dense_l2(ckpt_dir):
    """An official-style segmentation checkpoint of L2 (backbone under
    ``backbone.``, widened outputs)."""
    shapes = official_shapes('l2', head_dims=L2_DENSE_WIDTHS)
    weights = random_official_state_dict(shapes, seed=3)
    state = {f'backbone.{k}': v for k, v in weights.items()}
    state['decode_head.conv_seg.weight'] = torch.zeros(150, 512, 1, 1)
    path = str(ckpt_dir / 'official_upernet_l2.pth')
    torch.save(dict(meta=dict(iter=160000), state_dict=state), path)
    return dict(path=path, weights=weights)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC_SEG = os.path.join(
    REPO, 'configs/synthetic/upernet_fcaformer_l2_synthetic_ade20k.py')
SYNTHETIC_MASK_RCNN = os.path.join(
    REPO, 'configs/synthetic/mask_rcnn_fcaformer_l2_fpn_synthetic_coco.py')


@pytest.fixture(scope='session')
def seg_reference(synthetic_ade, tmp_path_factory):
    """An uninterrupted UperNet + small L1 run (``small_run`` of
    mmfca.testing.runs): 6 iterations, checkpoints at 2, 4 and 6."""
    from mmfca import apis
    from mmfca.testing.runs import small_run
    work_dir = str(tmp_path_factory.mktemp('reference'))
    apis.train([SYNTHETIC_SEG, '--work-dir', work_dir, '--cfg-options'] +
               small_run(synthetic_ade))
    return work_dir


@pytest.fixture(scope='session')
def mask_rcnn_run(synthetic_coco, tmp_path_factory):
    """The synthetic Mask R-CNN config for 2 epochs, a checkpoint after
    each."""
    from mmfca import apis
    from mmfca.testing import synthetic_data_overrides
    work_dir = str(tmp_path_factory.mktemp('mask_rcnn'))
    # Deterministic algorithms: without them two CPU runs of Mask R-CNN
    # differ by about 1e-5 after a few iterations.
    apis.train([SYNTHETIC_MASK_RCNN, '--work-dir', work_dir, '--cfg-options'] +
               synthetic_data_overrides('coco', synthetic_coco) +
               ['randomness.deterministic=True'])
    return dict(
        work_dir=work_dir,
        root=synthetic_coco,
        checkpoint=os.path.join(work_dir, 'epoch_2.pth'))
