"""Puts the tool folders whose modules these tests import on sys.path (the tools are scripts, not a package)."""
import os
import sys

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for folder in ("gpu-host", "harness", "build"):
    path = os.path.join(TOOLS, folder)
    if path not in sys.path:
        sys.path.insert(0, path)
