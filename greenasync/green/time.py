"""Hybrid ``time``: ``sleep`` parks a greenasync greenlet, and is ``time.sleep`` elsewhere."""

import time as _std

from .._bridge import sleep

__greenasync_stdlib__ = _std
__greenasync_overrides__ = ("sleep",)


def __getattr__(name):
    return getattr(_std, name)


def __dir__():
    return sorted(set(dir(_std)) | set(globals()))
