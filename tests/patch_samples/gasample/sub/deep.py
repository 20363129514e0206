# ruff: noqa: F401  (the imports are what tests/test_patch.py looks at)

import time as t
from socket import create_connection as connect
from time import sleep

COUNTER = 0
COUNTER += 1  # importlib.reload() bumps it again
