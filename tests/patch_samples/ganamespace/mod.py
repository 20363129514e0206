# ruff: noqa: F401  (the imports are what tests/test_patch.py looks at)

import time
from time import sleep
