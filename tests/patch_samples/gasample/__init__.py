"""A fake library importing the stdlib every way real ones do (redis, pymongo, PyMySQL)."""

# ruff: noqa: F401  (the imports are what tests/test_patch.py looks at)

import functools
import json  # not shimmed: must never change
import queue
import select
import selectors
import socket
import ssl
import threading
import time
import time as mod_time
from _thread import allocate_lock  # the very object threading.Lock: matched by identity
from functools import partial
from queue import LifoQueue
from select import poll
from selectors import DefaultSelector
from socket import create_connection
from socket import socket as Socket
from ssl import SSLContext
from threading import Condition, Lock, RLock
from time import monotonic, sleep  # monotonic is not overridden by the time shim
from time import sleep as nap

from . import decoy

# Only reported: rebinding inside a container would mutate shared data.
SLEEPERS = (time.sleep, len)
POLICY = {"sleep": time.sleep, "name": "sleep"}
delayed = partial(time.sleep, 0)


def pause(seconds, _sleep=time.sleep, *, clock=time.monotonic, make_lock=threading.Lock):
    _sleep(seconds)
    return clock()


def lazy_time():
    import time  # function-local import: reported

    return time


def relative_import():
    from . import decoy as d  # relative import: not reported

    return d


def _make_closure():
    s = time.sleep

    def closed():
        return s

    return closed


closed = _make_closure()


def load_later():
    from gasample import later  # a submodule imported only when called

    return later


def _decorator(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


@_decorator
def wrapped(seconds, _sleep=time.sleep):
    return _sleep


class Client:
    sleep = time.sleep  # builtin on a class: stored as staticmethod(shim)
    queue_class = LifoQueue  # a class on a class
    socket_module = socket  # a module on a class
    still = staticmethod(time.sleep)
    annotated: threading.Lock = None  # __annotations__ holds a hint: ignored

    def __init__(self, queue_class=LifoQueue, *, lock_class=RLock):
        self.queue = queue_class()
        self.lock = lock_class()

    def nap(self, seconds):
        self.sleep(seconds)

    @staticmethod
    def static_default(fn=time.sleep):
        return fn

    @classmethod
    def class_default(cls, fn=time.sleep):
        return fn

    @property
    def prop(self, _unused=time.sleep):  # noqa: PLR0206 - a default on a property's fget
        return _unused

    class Inner:
        sleep = time.sleep


class StdSocket(socket.socket):  # a stdlib base class: reported
    pass
