"""The modules of tools/analysis, for the tests of the benchmark tools."""
import importlib
import os
import sys
from types import ModuleType

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The folder of the analysis tools.
ANALYSIS = os.path.join(REPO, 'tools', 'analysis')


def analysis_tool(name: str) -> ModuleType:
    """A module of tools/analysis, imported as its tools import each other
    (tools/analysis on sys.path)."""
    sys.path.insert(0, ANALYSIS)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)
