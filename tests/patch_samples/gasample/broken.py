"""Raises while importing: the error must reach the importer unchanged."""

# ruff: noqa: F401  (the imports are what tests/test_patch.py looks at)
import time


class BrokenLibraryError(Exception):
    pass


raise BrokenLibraryError("gasample.broken failed on purpose")
