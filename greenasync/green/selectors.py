"""Hybrid ``selectors``: selectors whose ``select(timeout)`` parks a greenasync greenlet.

Each class subclasses the stdlib class of the same name (``isinstance`` keeps working), and
``DefaultSelector`` is the green counterpart of the stdlib's choice (epoll on Linux). In
green context ``select(timeout)`` asks the stdlib with a zero timeout; if nothing is ready
and the timeout is not <= 0, it waits through the bridge and asks again with a zero timeout.
What it waits on: a selector backed by a kernel object with a file descriptor (epoll,
kqueue, devpoll) is itself readable when one of its fds is ready, so the greenlet waits for
that one fd; poll and select selectors wait on every registered fd (``wait_any``). Outside
green context, and for timeouts <= 0, the stdlib method runs unchanged.
"""

import selectors as _std

from .._bridge import in_green_context as _in_green_context
from .select import _wait_ready

__greenasync_stdlib__ = _std


def __getattr__(name):
    return getattr(_std, name)


def __dir__():
    return sorted(set(dir(_std)) | set(globals()))


class _Cooperative:
    __slots__ = ()

    def select(self, timeout=None):
        if not _in_green_context() or (timeout is not None and timeout <= 0):
            return super().select(timeout)
        base_select = super().select
        ready = base_select(0)
        if ready:
            return ready
        if hasattr(self, "fileno"):  # epoll/kqueue/devpoll: one fd says "something ready"
            readers, writers = [self.fileno()], []
        else:
            keys = self.get_map().values()
            readers = [key.fd for key in keys if key.events & _std.EVENT_READ]
            writers = [key.fd for key in keys if key.events & _std.EVENT_WRITE]
        return _wait_ready(lambda: base_select(0), readers, writers, timeout)

    select.__doc__ = _std.BaseSelector.select.__doc__


def _green(base):
    return type(base.__name__, (_Cooperative, base), {
        "__module__": __name__,
        "__doc__": f"``selectors.{base.__name__}`` whose ``select()`` parks a greenasync "
                   "greenlet instead of blocking the loop.",
    })


SelectSelector = _green(_std.SelectSelector)
__greenasync_overrides__ = ("SelectSelector", "DefaultSelector")
if hasattr(_std, "PollSelector"):
    PollSelector = _green(_std.PollSelector)
    __greenasync_overrides__ += ("PollSelector",)
if hasattr(_std, "EpollSelector"):
    EpollSelector = _green(_std.EpollSelector)
    __greenasync_overrides__ += ("EpollSelector",)
if hasattr(_std, "DevpollSelector"):
    DevpollSelector = _green(_std.DevpollSelector)
    __greenasync_overrides__ += ("DevpollSelector",)
if hasattr(_std, "KqueueSelector"):
    KqueueSelector = _green(_std.KqueueSelector)
    __greenasync_overrides__ += ("KqueueSelector",)
# The green counterpart of the stdlib's choice for this platform.
DefaultSelector = globals()[_std.DefaultSelector.__name__]
