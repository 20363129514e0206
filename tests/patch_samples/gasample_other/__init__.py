"""A sibling whose name starts like gasample's: patching gasample must not touch it."""

# ruff: noqa: F401  (the imports are what tests/test_patch.py looks at)
import time
from time import sleep
