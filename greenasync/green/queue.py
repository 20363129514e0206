"""Hybrid ``queue``: the stdlib queues over hybrid locks, so a blocking get/put parks a greenlet.

``Queue``, ``LifoQueue``, ``PriorityQueue`` and ``SimpleQueue`` are subclasses of the stdlib
classes whose internal mutex and conditions are swapped for ``greenasync.green.threading``
ones; all queue logic (timeouts, ``Empty``/``Full``, ``task_done``/``join``) stays the
stdlib's. In green context a blocking ``get``/``put``/``join`` parks the greenlet and a
``put``/``get``/``task_done`` from any greenlet or thread wakes it; elsewhere they block
as the stdlib's do. ``Empty``, ``Full`` and every other name are the stdlib's own objects,
so ``except queue.Empty`` catches what these raise.

``SimpleQueue`` is hybrid too (a pass-through would block the loop in ``get``): it is the
stdlib's pure-Python ``_PySimpleQueue`` over a hybrid ``Semaphore``. Unlike the C
``queue.SimpleQueue`` it is not reentrant (do not ``put`` from a ``__del__`` or a signal
handler that may interrupt a ``put`` in the same thread), and it is not an instance of
``queue.SimpleQueue``.
"""

import queue as _std

from . import threading as _threading

__greenasync_stdlib__ = _std
__greenasync_overrides__ = ("Queue", "LifoQueue", "PriorityQueue", "SimpleQueue")


def __getattr__(name):
    return getattr(_std, name)


def __dir__():
    return sorted(set(dir(_std)) | set(globals()))


class Queue(_std.Queue):
    """A hybrid ``queue.Queue``."""

    def __init__(self, maxsize=0):
        super().__init__(maxsize)
        # The stdlib's three conditions share one mutex; keep that shape. Every queue
        # method holds it only briefly (never across a wait), so waiting for it is not a
        # cancellation point: a CancelledError inside put()/task_done() would lose an item
        # count and hang join(). A cancellation there is raised at the job's next park.
        self.mutex = _threading._InternalLock()
        self.not_empty = _threading.Condition(self.mutex)
        self.not_full = _threading.Condition(self.mutex)
        self.all_tasks_done = _threading.Condition(self.mutex)


# Our Queue first in the MRO for __init__, then the stdlib subclass for _init/_put/_get.
class LifoQueue(Queue, _std.LifoQueue):
    """A hybrid ``queue.LifoQueue``."""


class PriorityQueue(Queue, _std.PriorityQueue):
    """A hybrid ``queue.PriorityQueue``."""


class SimpleQueue(_std._PySimpleQueue):
    """A hybrid ``queue.SimpleQueue`` (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self._count = _threading.Semaphore(0)
