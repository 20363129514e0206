# ruff: noqa: F401  (the imports are what tests/test_patch.py looks at)

from threading import Event


def relative_time():
    from .time import VALUE  # a relative import of a submodule named like the stdlib's

    return VALUE
