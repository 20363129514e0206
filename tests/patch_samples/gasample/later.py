"""Imported lazily by gasample.load_later(), after patch()."""

# ruff: noqa: F401  (the imports are what tests/test_patch.py looks at)
import socket
from time import sleep

LOADER_DURING_IMPORT = __loader__
SPEC_LOADER_DURING_IMPORT = __spec__.loader
