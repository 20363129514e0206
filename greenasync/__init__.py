"""greenasync: turn blocking client libraries into coroutine APIs, without threads.

General layout
--------------
_bridge.py     run() and the worker greenlets; the one-shot Waiter every park goes through;
               wait_readable/wait_writable/sleep/to_thread/await_ for sync code in a greenlet.
green/         hybrid shims of socket, ssl, select, selectors, time, threading, queue: they
               cooperate inside a greenasync greenlet and are exactly the stdlib elsewhere.
_patch.py      scoped patching: rebinds, in one package's modules only, the names that refer
               to those stdlib modules/functions/classes to the shims. Reversible.
_wrap.py       the wrap() decorator: a declarative awaitable facade over a sync class.
_watchdog.py   watchdog(): reports loop stalls with the stack that stalled them; statistics().
_lifecycle.py  shutdown(): ends a loop's worker greenlets; closed loops' parked workers; fork.
pytest_plugin  a fixture/marker that fails a test whose loop stalls.
_errors.py     greenasync's own exceptions; a wrapped library's errors pass through unchanged.

A call flows: ``await run(fn)`` (coroutine, in the loop's greenlet) switches into a worker
greenlet, which runs ``fn`` (unchanged sync code). Where ``fn`` would block, a shim parks the
worker on a Waiter and switches back to the loop; readiness fires the Waiter, which switches
the worker back in. The worker resolves ``run``'s future when ``fn`` returns.
"""

from ._bridge import (
    TIMED_OUT,
    Waiter,
    await_,
    in_green_context,
    run,
    sleep,
    to_thread,
    wait_readable,
    wait_writable,
)
from ._errors import ConcurrentUseError, GreenasyncError, MissingGreenletError, NoRunningLoopError
from ._lifecycle import shutdown
from ._patch import PatchReport, Rebinding, patch, patch_all, patched, unpatch, unpatch_all
from ._watchdog import Stall, StallFrame, Statistics, Watchdog, statistics, watchdog
from ._wrap import (
    AsyncContextManager,
    AsyncIter,
    AsyncIterator,
    Chain,
    Property,
    SyncMethod,
    Wrapper,
    Wraps,
    wrap,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "wrap",
    "Wrapper",
    "SyncMethod",
    "Chain",
    "Property",
    "Wraps",
    "AsyncIter",
    "AsyncIterator",
    "AsyncContextManager",
    "patch",
    "unpatch",
    "patched",
    "patch_all",
    "unpatch_all",
    "PatchReport",
    "Rebinding",
    "watchdog",
    "Watchdog",
    "Stall",
    "StallFrame",
    "statistics",
    "Statistics",
    "shutdown",
    "run",
    "in_green_context",
    "sleep",
    "wait_readable",
    "wait_writable",
    "to_thread",
    "await_",
    "Waiter",
    "TIMED_OUT",
    "GreenasyncError",
    "NoRunningLoopError",
    "MissingGreenletError",
    "ConcurrentUseError",
]
