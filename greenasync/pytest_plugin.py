"""pytest plugin: fail a test whose event loop stalls (greenasync's blocking watchdog).

Enable it in a ``conftest.py``::

    pytest_plugins = ["greenasync.pytest_plugin"]

(or ``pytest -p greenasync.pytest_plugin``). It is opt-in per test:

* ``@pytest.mark.no_loop_stall`` or ``@pytest.mark.no_loop_stall(threshold=0.05)`` on a test,
  class or module (``pytestmark = pytest.mark.no_loop_stall``);
* or request the ``no_loop_stall`` fixture (a :class:`LoopStallGuard`).

For an ``async def`` test, whichever runner drives it (this project's harness,
pytest-asyncio, anyio...), a :func:`greenasync.watchdog` watches the loop that runs the test
from its first step to its last. Each stall longer than the threshold fails the test, and the
failure message holds every stall's cause and stack. A sync test that runs its own loop
requests the fixture and opens ``with no_loop_stall.watch():`` in a coroutine on that loop.

Threshold: the marker's ``threshold`` (or its first argument), else the ini option
``greenasync_stall_threshold`` (default 0.1 s: a loaded CI machine can stall a healthy loop
for tens of milliseconds). Not counted: stalls whose sampled stack shows the loop idle in its
selector with a mostly idle CPU (the process was not scheduled; no code stalled the loop),
and interim reports of a stall still in progress (its final report counts).
"""

import functools
import inspect
import threading

import pytest

from ._watchdog import watchdog

_DEFAULT_THRESHOLD = 0.1
_MARKER = "no_loop_stall"


def pytest_addoption(parser):
    parser.addini(
        "greenasync_stall_threshold",
        "default threshold in seconds of the no_loop_stall marker/fixture (greenasync)",
        default=str(_DEFAULT_THRESHOLD),
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        f"{_MARKER}(threshold=None): fail the test if the event loop running it stalls longer "
        "than threshold seconds (default: ini greenasync_stall_threshold); greenasync watchdog",
    )


class LoopStallGuard:
    """What the ``no_loop_stall`` fixture gives: a threshold and the stalls collected.

    ``threshold``: seconds (may be changed before the test's loop starts).
    ``stalls``: the :class:`greenasync.Stall` records that fail the test.
    ``ignored``: reports that do not (idle-loop stalls, interim reports).
    ``watch(loop=None)``: a started :class:`greenasync.Watchdog` feeding this guard; use it
    as ``with guard.watch(): ...`` on the loop of a sync test.
    """

    def __init__(self, threshold):
        self.threshold = threshold
        self.stalls = []
        self.ignored = []
        self._lock = threading.Lock()
        self._watchdogs = []

    def watch(self, loop=None):
        dog = watchdog(self.threshold, loop=loop, callback=self._collect)
        self._watchdogs.append(dog)
        return dog

    def _collect(self, stall):  # runs in the watchdog's thread
        with self._lock:
            (self.ignored if stall.ongoing or stall.idle else self.stalls).append(stall)

    def _stop_all(self):
        while self._watchdogs:
            self._watchdogs.pop().stop()

    def failure_message(self):
        with self._lock:
            stalls = list(self.stalls)
        if not stalls:
            return None
        times = "once" if len(stalls) == 1 else f"{len(stalls)} times"
        parts = [f"greenasync no_loop_stall: the event loop stalled {times} for longer than "
                 f"{self.threshold:g} s"]
        for i, stall in enumerate(stalls, 1):
            parts.append(f"\n[stall {i} of {len(stalls)}] {stall}")
        return "\n".join(parts)

    def __repr__(self):
        return f"<LoopStallGuard threshold={self.threshold:g}s stalls={len(self.stalls)}>"


def _threshold(item):
    marker = item.get_closest_marker(_MARKER)
    if marker is not None:
        value = marker.kwargs.get("threshold", marker.args[0] if marker.args else None)
        if value is not None:
            return float(value)
    return float(item.config.getini("greenasync_stall_threshold"))


@pytest.fixture
def no_loop_stall(request):
    """Fail this test if its event loop stalls longer than the threshold (see the module
    docstring); gives the :class:`LoopStallGuard`."""
    guard = LoopStallGuard(_threshold(request.node))
    yield guard
    guard._stop_all()


def _guarded(test_fn, guard):
    @functools.wraps(test_fn)
    async def guarded(*args, **kwargs):
        # Runs in the test's own loop, so the watchdog binds to whatever loop the runner
        # chose; stopping it on the loop thread closes a stall the test's last step is in.
        with guard.watch():
            return await test_fn(*args, **kwargs)

    return guarded


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    guard = pyfuncitem.funcargs.get(_MARKER) if hasattr(pyfuncitem, "funcargs") else None
    if not isinstance(guard, LoopStallGuard):
        if pyfuncitem.get_closest_marker(_MARKER) is None:
            return (yield)
        guard = LoopStallGuard(_threshold(pyfuncitem))
    original = pyfuncitem.obj
    if inspect.iscoroutinefunction(original):
        # Every runner calls item.obj inside its loop; hand it a coroutine function that
        # watches that loop around the real test.
        pyfuncitem.obj = _guarded(original, guard)
    try:
        result = yield
    except BaseException as exc:
        guard._stop_all()
        message = guard.failure_message()
        if message is not None and hasattr(exc, "add_note"):
            exc.add_note(message)  # keep the test's own failure first
        raise
    finally:
        pyfuncitem.obj = original
    guard._stop_all()
    message = guard.failure_message()
    if message is not None:
        pytest.fail(message, pytrace=False)
    return result
