"""Install mmfca: FcaFormer for mmpretrain, mmsegmentation and mmdetection."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def read_version():
    text = (HERE / 'mmfca' / 'version.py').read_text()
    return re.search(r"__version__ = '([^']+)'", text).group(1)


def read_requirements(name):
    lines = (HERE / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith('#')]


setup(
    name='mmfca',
    version=read_version(),
    description='FcaFormer (forward cross attention) backbones for OpenMMLab',
    long_description=(HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmfca', 'mmfca.*']),
    python_requires='>=3.9',
    install_requires=[
        r for r in read_requirements('requirements.txt')
        if not r.startswith(('mmcv', 'pytest', 'matplotlib', 'onnx'))
    ],
    extras_require={
        'tests': ['pytest', 'matplotlib'],
        'deploy': ['onnx', 'onnxscript', 'onnxruntime'],
    },
    license='Apache-2.0',
)
