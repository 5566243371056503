"""``import mmfca`` where only torch and timm can be imported: the timm
models work, and every OpenMMLab entry point names what is missing.

Each case runs in a fresh interpreter whose import system refuses the
OpenMMLab packages (a meta-path finder raising ModuleNotFoundError, as for
a package that is not installed)."""
import os
import subprocess
import sys
import textwrap

import pytest

# Each case starts an interpreter.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPENMMLAB = ('mmengine', 'mmcv', 'mmseg', 'mmdet', 'mmpretrain')

REFUSE = """
import sys


class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ModuleNotFoundError(f'No module named {{name!r}}')
        return None


sys.meta_path.insert(0, Refuse())
"""


def run_without(blocked, body: str) -> str:
    """Run ``body`` in a new interpreter that cannot import ``blocked``;
    return its output, failing the test on a non-zero exit."""
    script = REFUSE.format(blocked=tuple(blocked)) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, '-c', script],
                            cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=REPO),
                            capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_timm_models_build_run_and_load_with_torch_and_timm_alone(tmp_path):
    path = str(tmp_path / 'l1.pth')
    out = run_without(
        OPENMMLAB, f"""
        import torch, timm, mmfca
        from mmfca.utils import load_checkpoint_file
        for name in ('fcaformer_l0', 'fcaformer_l2'):
            model = timm.create_model(name).eval()
            with torch.no_grad():
                assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        model = timm.create_model('fcaformer_l1')
        torch.save({{'state_dict': model.state_dict()}}, {path!r})
        again = timm.create_model(
            'fcaformer_l1', pretrained=True,
            pretrained_cfg_overlay=dict(file={path!r}))
        for key, value in model.state_dict().items():
            assert torch.equal(again.state_dict()[key], value), key
        assert 'state_dict' in load_checkpoint_file({path!r})
        loaded = sorted(m for m in sys.modules if m.split('.')[0] in
                        {OPENMMLAB!r})
        assert not loaded, loaded
        print('ok')
        """)
    assert out.strip() == 'ok'


def test_openmmlab_entry_points_name_the_missing_packages():
    out = run_without(
        OPENMMLAB, """
        import mmfca
        for get in (lambda: mmfca.models.FcaFormer,
                    lambda: mmfca.ReliableRunner):
            try:
                get()
            except ImportError as err:
                print(err)
            else:
                raise SystemExit('no ImportError')
        """)
    lines = out.strip().splitlines()
    assert len(lines) == 2
    assert 'mmfca.models.FcaFormer needs mmengine and mmcv' in lines[0]
    assert 'mmfca.ReliableRunner needs mmengine and mmcv' in lines[1]
    assert all('tools/setup_env.sh' in line for line in lines)


def test_a_config_naming_our_modules_without_mmcv_says_mmcv_is_missing():
    """mmengine alone: a config's ``type='FcaFormer'`` or image loader
    fails when it is built, naming mmcv, instead of being skipped."""
    out = run_without(('mmcv', 'mmseg', 'mmdet', 'mmpretrain'), """
        import mmfca
        from mmengine.registry import MODELS, TRANSFORMS
        for registry, type_ in ((MODELS, 'FcaFormer'),
                                (TRANSFORMS, 'LoadImageFromFileOrSkip'),
                                (TRANSFORMS, 'CheckAnnotationSize')):
            try:
                registry.build(dict(type=type_))
            except ImportError as err:
                print(err)
            else:
                raise SystemExit('built without mmcv')
        """)
    lines = out.strip().splitlines()
    assert len(lines) == 3
    assert "type='FcaFormer'" in lines[0]
    assert "type='LoadImageFromFileOrSkip'" in lines[1]
    assert "type='CheckAnnotationSize'" in lines[2]
    assert all('needs mmcv, which is not installed' in line for line in lines)
