"""Hybrid ``select``: ``select()`` and ``poll()`` that park a greenasync greenlet.

In green context each call first asks the stdlib with a zero timeout; if nothing is ready
and the timeout is not 0, it waits through the bridge (``wait_any``: the greenlet parks,
the loop watches the fds) and asks again with a zero timeout, until something is ready or
the timeout expires. Results, argument checking and errors are the stdlib's own (every
answer comes from a real ``select``/``poll`` call). Outside green context the stdlib is
called directly.

Not overridden (they pass through): ``epoll``, ``devpoll``, ``kqueue`` objects: they are
pollable file descriptors themselves, ``selectors`` wraps them cooperatively, and code that
uses them directly is event-loop code, not the blocking client code greenasync runs.
Approximations, in green context only: the loop can only watch readability and
writability, so ``select``'s exceptional-condition list and poll masks without read/write
bits (``POLLPRI``, error-only) are watched as "readable" (hang-ups and errors wake readers),
and a wake-up that finds nothing ready is followed by a 10 ms pause before waiting again.
A timeout too large for the stdlib (``OverflowError`` there) is simply waited for.
"""

import select as _std
from math import ceil as _ceil
from operator import index as _index
from time import monotonic as _monotonic

from .._bridge import in_green_context as _in_green_context, sleep as _sleep
from .._bridge import _fileno
from .._bridge import wait_any as _wait_any

__greenasync_stdlib__ = _std
__greenasync_overrides__ = ("select", "poll")

_READ = _std.POLLIN | _std.POLLPRI | _std.POLLRDNORM | _std.POLLRDBAND
_WRITE = _std.POLLOUT | _std.POLLWRNORM | _std.POLLWRBAND


def __getattr__(name):
    return getattr(_std, name)


# The stdlib's integer constants as globals, so that reading ``select.POLLIN`` does not go
# through __getattr__ (redis-py's hiredis parser reads it for its can_read() probe before
# every command).
globals().update((k, v) for k, v in vars(_std).items() if k.isupper() and type(v) is int)


def __dir__():
    return sorted(set(dir(_std)) | set(globals()))


def _number(value, type_message):
    """Check a timeout as the C code does (float, or anything with ``__index__``)."""
    if isinstance(value, float):
        if value != value:
            raise ValueError("Invalid value NaN (not a number)")
        return value
    try:
        return _index(value)
    except TypeError:
        raise TypeError(type_message) from None


def _wait_ready(check, readers, writers, timeout):
    """Park until ``check()`` returns something truthy or ``timeout`` seconds pass (None:
    no limit); return the last ``check()`` result. ``check`` must not block."""
    deadline = None if timeout is None else _monotonic() + timeout
    readers, writers = set(readers), set(writers)  # one watch per fd and direction
    while True:
        remaining = None if deadline is None else deadline - _monotonic()
        if remaining is not None and remaining <= 0:
            return check()
        woke = _wait_any(readers, writers, remaining)
        ready = check()
        if ready:
            return ready
        if woke:
            # Ready by the loop's account, not by ours (an error-only poll mask, an
            # exceptional condition): poll again shortly instead of spinning.
            _sleep(0.01 if remaining is None else min(0.01, max(remaining, 0)))


def select(rlist, wlist, xlist, timeout=None):
    if not _in_green_context():
        return _std.select(rlist, wlist, xlist, timeout)
    if timeout is not None:
        timeout = _number(timeout, "timeout must be a float or None")
        if timeout < 0:
            raise ValueError("timeout must be non-negative")
    ready = _std.select(rlist, wlist, xlist, 0)  # also validates the lists
    if ready[0] or ready[1] or ready[2] or timeout == 0:
        return ready
    readers = [_fileno(f) for f in rlist] + [_fileno(f) for f in xlist]
    writers = [_fileno(f) for f in wlist]
    found = _wait_ready(lambda: _any(_std.select(rlist, wlist, xlist, 0)), readers, writers,
                       timeout)
    return found or ([], [], [])


def _any(ready):
    return ready if ready[0] or ready[1] or ready[2] else None


class poll:
    """``select.poll()`` whose ``poll(timeout)`` parks a greenasync greenlet.

    It delegates to a real poll object and remembers the masks, to know what to watch.
    """

    __slots__ = ("_poll", "_masks")

    def __init__(self):
        self._poll = _std.poll()
        self._masks = {}

    def register(self, fd, eventmask=_std.POLLIN | _std.POLLPRI | _std.POLLOUT):
        self._poll.register(fd, eventmask)
        self._masks[_fileno(fd)] = eventmask

    def modify(self, fd, eventmask):
        self._poll.modify(fd, eventmask)
        self._masks[_fileno(fd)] = eventmask

    def unregister(self, fd):
        self._poll.unregister(fd)
        del self._masks[_fileno(fd)]

    def poll(self, timeout=None):
        # A zero timeout never waits (the stdlib call as is, arguments and all): that is the
        # can_read() probe redis-py makes before every command.
        if timeout == 0 or not _in_green_context():
            return self._poll.poll(timeout)
        if timeout is not None:
            timeout = _number(timeout, "timeout must be an integer or None")
            # Milliseconds, rounded up like the C code; a negative timeout waits forever.
            timeout = None if timeout < 0 else _ceil(timeout) / 1000
        ready = self._poll.poll(0)
        if ready or timeout == 0:
            return ready
        masks = self._masks
        readers = [fd for fd, mask in masks.items() if mask & _READ or not mask & _WRITE]
        writers = [fd for fd, mask in masks.items() if mask & _WRITE]
        return _wait_ready(lambda: self._poll.poll(0), readers, writers, timeout)

    for _name in ("register", "modify", "unregister", "poll"):
        locals()[_name].__doc__ = getattr(_std.poll(), _name).__doc__
    del _name
