"""Build entry point for tools that still call ``setup.py``.

pyproject.toml holds all of mmfca's metadata (name, version, dependencies,
extras, package discovery); setuptools reads it from there, so this file
adds nothing of its own.
"""
from setuptools import setup

setup()
