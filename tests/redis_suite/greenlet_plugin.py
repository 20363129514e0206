"""pytest plugin for running redis-py's own sync test suite with greenasync (see README.md).

Loaded by ``run.py`` into pytest runs of the suite (``-p greenlet_plugin``, with this
directory on ``PYTHONPATH``). Its options:

``--greenasync-green``
    Green mode. ``greenasync.patch("redis")`` is applied when the plugin loads, before the
    suite's conftest creates its first client, and the body of every sync test function runs
    in a greenasync worker greenlet: ``loop.run_until_complete(greenasync.run(test, **args))``
    on one asyncio event loop kept for the whole session (as an application keeps one loop;
    its worker greenlets are reused from test to test). Fixtures, setup and teardown run as
    plain sync code outside any greenlet, where greenasync's shims are the stdlib (hybrid):
    a client built by a fixture is then used inside the greenlet, which is exactly what a
    ``greenasync.wrap``-ped client does. Threads a test starts run plain sync code too.
    ``async def`` tests (redis.asyncio, only in the whole suite) are left to their own plugin.

``--greenasync-loop=uvloop``
    Green mode on a uvloop loop instead of asyncio's default loop.

``--greenasync-loop-scope=test``
    Green mode with a fresh event loop per test instead of one for the session.

``--greenasync-patch-tests``
    Green mode, also ``greenasync.patch("tests")``: the suite's own modules get the shims
    too, so a test body's ``time.sleep``, ``threading`` and ``queue`` waits park as well.

``--greenasync-no-tracemalloc``
    Both modes: the suite's session fixture ``enable_tracemalloc`` does nothing (it only adds
    allocation tracebacks to ResourceWarning reports, and doubles the CPU time of the run).

``--greenasync-results=PATH``
    Both modes: write every test's outcome to ``PATH`` as JSON, for ``run.py`` to compare.
    Outcomes: passed, failed, error (setup/teardown failed, or a collection error), skipped,
    xfailed, xpassed. A failure in teardown after a passed call counts as ``error``.

Without ``--greenasync-green`` the plugin changes nothing in how tests run (greenasync is
not even imported), so the plain run is redis-py's suite as its authors run it.
"""

import functools
import inspect
import json
import os
import sys
import time

import pytest

_state = {"green": False, "loop": None, "new_loop": None, "per_test": False, "results": None,
          "outcomes": {}, "started": None, "stats": None, "file_seconds": {}, "t0": None}


def pytest_addoption(parser):
    group = parser.getgroup("greenasync", "greenasync: redis-py's suite inside greenlets")
    group.addoption("--greenasync-green", action="store_true", default=False,
                    help="run each sync test body inside a greenasync greenlet (redis patched)")
    group.addoption("--greenasync-results", default=None, metavar="PATH",
                    help="write per-test outcomes to PATH as JSON")
    group.addoption("--greenasync-loop", default="asyncio", choices=("asyncio", "uvloop"),
                    help="the event loop of the green mode (default asyncio)")
    group.addoption("--greenasync-loop-scope", default="session", choices=("session", "test"),
                    help="green mode: one event loop for the session (default) or per test")
    group.addoption("--greenasync-patch-tests", action="store_true", default=False,
                    help="green mode: also patch the suite's own modules (package `tests`)")
    group.addoption("--greenasync-no-tracemalloc", action="store_true", default=False,
                    help="make the suite's enable_tracemalloc fixture a no-op (both modes)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    _state["results"] = config.getoption("--greenasync-results")
    _state["started"] = time.monotonic()
    if config.getoption("--greenasync-no-tracemalloc"):
        # The suite's session fixture `enable_tracemalloc` starts tracemalloc for the whole
        # run, which only adds allocation tracebacks to ResourceWarning reports and roughly
        # doubles the suite's CPU time. The fixture imports the module and calls start().
        import tracemalloc

        tracemalloc.start = lambda *args: None
    if config.getoption("--greenasync-green"):
        import asyncio

        import greenasync

        # tryfirst: before the suite's conftest hooks (pytest_sessionstart builds a client).
        greenasync.patch("redis")
        if config.getoption("--greenasync-patch-tests"):
            greenasync.patch("tests")
        _state["green"] = True
        if config.getoption("--greenasync-loop") == "uvloop":
            import uvloop

            _state["new_loop"] = uvloop.new_event_loop
        else:
            _state["new_loop"] = asyncio.new_event_loop
        _state["per_test"] = config.getoption("--greenasync-loop-scope") == "test"
        _state["loop"] = _state["new_loop"]()


def pytest_unconfigure(config):
    loop = _state["loop"]
    if loop is not None and not loop.is_closed():
        _add_statistics(loop)
        loop.close()
    stats = _state["stats"]
    if _state["results"]:
        with open(_state["results"], "w") as f:
            json.dump({
                "mode": "green" if _state["green"] else "plain",
                "python": sys.version.split()[0],
                "seconds": round(time.monotonic() - _state["started"], 2),
                "greenasync": stats,
                # Per file: wall time of its tests' setup+call+teardown (not collection).
                "file_seconds": {k: round(v, 2) for k, v in _state["file_seconds"].items()},
                "tests": _state["outcomes"],
            }, f, indent=1, sort_keys=True)


def _add_statistics(loop):
    # Proof that the bodies ran in greenlets, and how often they parked.
    import greenasync

    s = greenasync.statistics(loop)
    stats = _state["stats"]
    if stats is None:
        stats = _state["stats"] = {"calls": 0, "parks_by_kind": {}, "spawned": 0,
                                   "cancellations": 0}
    stats["calls"] += s.calls
    stats["spawned"] += s.spawned
    stats["cancellations"] += s.cancellations
    for kind, n in s.parks_by_kind.items():
        stats["parks_by_kind"][kind] = stats["parks_by_kind"].get(kind, 0) + n


def _in_greenlet(fn, loop):
    import asyncio

    import greenasync

    @functools.wraps(fn)
    def call(*args, **kwargs):
        task = loop.create_task(greenasync.run(fn, *args, **kwargs))
        try:
            return loop.run_until_complete(task)
        except BaseException:
            # The test failed, or the loop was interrupted (pytest-timeout, ^C) with the
            # greenlet still parked: cancel it so that nothing of this test lingers on the
            # session's loop (its finally blocks and redis-py's cleanup run now).
            if not task.done():
                task.cancel()
                try:
                    loop.run_until_complete(asyncio.wait([task], timeout=10))
                except BaseException:  # noqa: BLE001, S110 - the original error is what matters
                    pass
            raise

    # pytest's own pyfunc_call treats a coroutine function differently; `call` is a plain
    # function, and functools.wraps gives it the test's name for tracebacks and reports.
    return call


def _is_async(fn):
    # pytest-asyncio (whole suite only) hands pytest a sync wrapper that runs the coroutine
    # on its own loop (functools.wraps of the coroutine function): that is an async test
    # too, and must not run inside our loop.
    original = inspect.unwrap(fn)
    return any(f(x) for x in (fn, original)
               for f in (inspect.iscoroutinefunction, inspect.isasyncgenfunction))


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem):
    fn = pyfuncitem.obj
    if not _state["green"] or _is_async(fn):
        return (yield)
    # pytest's default implementation calls pyfuncitem.obj with the fixtures' values and
    # checks the return value; it calls our wrapper instead, which runs the test in a greenlet.
    loop = _state["loop"]
    if _state["per_test"]:
        # A fresh loop per test: what a test leaves on the loop (a timer of a background
        # task scheduled from the greenlet) cannot run during the next test. Its statistics
        # are added to the session's before it is closed.
        loop = _state["new_loop"]()
    pyfuncitem.obj = _in_greenlet(fn, loop)
    try:
        return (yield)
    finally:
        pyfuncitem.obj = fn
        if loop is not _state["loop"]:
            _add_statistics(loop)
            loop.close()


def _message(report):
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        return crash.message.splitlines()[0][:300] if crash.message else ""
    if isinstance(report.longrepr, tuple):  # a skip: (path, line, reason)
        return str(report.longrepr[2])[:300]
    text = str(report.longrepr or "")
    return text.strip().splitlines()[-1][:300] if text.strip() else ""


def pytest_runtest_logstart(nodeid, location):
    _state["t0"] = time.monotonic()


def pytest_runtest_logfinish(nodeid, location):
    if _state["t0"] is not None:
        name = nodeid.split("::")[0]
        seconds = _state["file_seconds"]
        seconds[name] = seconds.get(name, 0.0) + time.monotonic() - _state["t0"]
        _state["t0"] = None


def pytest_runtest_logreport(report):
    out = _state["outcomes"]
    entry = out.get(report.nodeid)
    if report.when == "setup":
        if report.passed:
            return
        if report.skipped:
            outcome = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        else:
            outcome = "error"
        out[report.nodeid] = {"outcome": outcome, "message": _message(report)}
    elif report.when == "call":
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        else:
            outcome = report.outcome  # passed / failed / skipped
        out[report.nodeid] = {"outcome": outcome, "seconds": round(report.duration, 3),
                              "message": "" if report.passed else _message(report)}
    elif report.failed and (entry is None or entry["outcome"] == "passed"):  # teardown
        out[report.nodeid] = {"outcome": "error", "message": "teardown: " + _message(report)}


def pytest_collectreport(report):
    if report.failed:
        _state["outcomes"][report.nodeid or os.path.basename(str(report.fspath))] = {
            "outcome": "error", "message": "collection: " + _message(report)}
