"""Every exception greenasync raises itself.

Errors of a wrapped library are never translated: they pass through with their own
class, message and traceback. The ones below are greenasync's own::

    Exception
     └── GreenasyncError
          ├── NoRunningLoopError      run()/a wrapped method called with no running event loop
          ├── MissingGreenletError    await_() or a green-only helper called outside a greenasync greenlet
          └── ConcurrentUseError      a second greenlet waits on the same fd in the same direction
"""

__all__ = [
    "GreenasyncError",
    "NoRunningLoopError",
    "MissingGreenletError",
    "ConcurrentUseError",
]


class GreenasyncError(Exception):
    """Base class of every exception raised by greenasync itself."""


class NoRunningLoopError(GreenasyncError, RuntimeError):
    """A coroutine API was used where no asyncio event loop is running."""


class MissingGreenletError(GreenasyncError, RuntimeError):
    """A helper that needs a greenasync worker greenlet was called outside one."""


class ConcurrentUseError(GreenasyncError, RuntimeError):
    """Two greenlets waited on one file descriptor in the same direction at once.

    asyncio's ``add_reader`` would silently replace the first waiter, which then never
    wakes up; this is almost always two coroutines sharing one connection.
    """
