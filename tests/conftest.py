"""Test harness: every ``async def`` test runs once per event loop kind.

The kinds are plain asyncio, uvloop, and Tornado's IOLoop (which runs on asyncio; we drive
it through ``IOLoop.run_sync`` so Tornado's own integration is exercised). A test that needs
the kind can take the ``loop_kind`` argument.
"""

import asyncio
import gc
import inspect
import os
import sys

import pytest

pytest_plugins = ["greenasync.pytest_plugin"]

LOOP_KINDS = ["asyncio", "uvloop", "tornado"]

sys.path.insert(0, os.path.dirname(__file__))  # tests/servers.py and other test helpers


def pytest_generate_tests(metafunc):
    # Async tests take loop_kind implicitly, so each runs once per loop kind; a sync test
    # may ask for loop_kind by name to get the same parametrization.
    if inspect.iscoroutinefunction(metafunc.function) or "loop_kind" in metafunc.fixturenames:
        if "loop_kind" not in metafunc.fixturenames:
            metafunc.fixturenames.append("loop_kind")
        metafunc.parametrize("loop_kind", LOOP_KINDS)


def run_on(loop_kind, coro_fn, *args, **kwargs):
    """Run ``coro_fn(*args, **kwargs)`` to completion on a fresh loop of the given kind."""
    if loop_kind == "asyncio":
        return asyncio.run(coro_fn(*args, **kwargs))
    if loop_kind == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro_fn(*args, **kwargs))
    if loop_kind == "tornado":
        from tornado.ioloop import IOLoop

        io_loop = IOLoop(make_current=False)
        try:
            return io_loop.run_sync(lambda: coro_fn(*args, **kwargs))
        finally:
            io_loop.close(all_fds=False)
    raise ValueError(loop_kind)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    run_on(pyfuncitem.callspec.params["loop_kind"], pyfuncitem.obj, **kwargs)
    return True


@pytest.fixture
def ticker():
    """A 10 ms ticker: ``async with ticker() as t`` records the gaps between ticks.

    ``t.max_gap`` is the longest stall of the loop seen while it ran; ``t.ticks`` the count.
    """
    return Ticker


class Ticker:
    def __init__(self, interval=0.01):
        self.interval = interval
        self.ticks = 0
        self.max_gap = 0.0
        self._task = None

    async def _run(self):
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        while True:
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.max_gap = max(self.max_gap, now - self._last)
            self.ticks += 1
            self._last = now

    async def __aenter__(self):
        # Collect the garbage earlier tests left, so a full collection (tens of ms late in
        # a long run) does not land inside the measurement: that is not the loop blocking.
        gc.collect()
        self._task = asyncio.ensure_future(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc):
        # The gap still open at the end counts too: a loop blocked for the whole measurement
        # never ticks at all, and would otherwise report no stall.
        self.max_gap = max(self.max_gap, asyncio.get_running_loop().time() - self._last)
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass




@pytest.fixture(scope="session")
def redis_url():
    """URL of a real Redis (REDIS_URL, else the machine's, else a private redis-server)."""
    from servers import redis_url as find

    url, private = find()
    yield url
    if private is not None:
        private.stop()


@pytest.fixture(scope="session")
def mysql_params():
    """Connection parameters of a real MariaDB/MySQL (MYSQL_HOST/MYSQL_PORT/...)."""
    from servers import mysql_params as find

    return find()
