"""The bridge: run(), worker reuse, fairness, contextvars, the green helpers, cancellation."""

import asyncio
import contextvars
import gc
import socket
import threading
import time
import traceback
import warnings
import weakref

import pytest

import greenasync
from greenasync._bridge import _hub_for


def hub():
    return _hub_for(asyncio.get_running_loop())


async def park_once():
    """A call that parks, which also resets the fairness streak."""
    await greenasync.run(greenasync.sleep, 0)


# -- results and errors ---------------------------------------------------------------------


async def test_run_returns_result_with_args_and_kwargs():
    assert await greenasync.run(lambda a, b=0: a + b, 1, b=2) == 3


async def test_run_raises_original_exception_with_traceback():
    def fails():
        raise KeyError("boom")

    with pytest.raises(KeyError) as info:
        await greenasync.run(fails)
    assert info.value.args == ("boom",)
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "fails" in names


async def test_run_of_a_coroutine_function_is_a_type_error():
    async def not_sync():
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError, match="is a coroutine function: await it directly"):
            await greenasync.run(not_sync)
        gc.collect()
    # The coroutine it made was closed: no "never awaited" warning on top of the error.
    assert [w for w in caught if issubclass(w.category, RuntimeWarning)] == []


async def test_a_sync_function_may_return_a_coroutine():
    async def later():
        return 2

    def factory():
        return later()

    coro = await greenasync.run(factory)
    assert await coro == 2


async def test_exception_after_park_keeps_class_and_traceback():
    def parks_then_fails():
        greenasync.sleep(0.001)
        raise ValueError("late")

    with pytest.raises(ValueError, match="late") as info:
        await greenasync.run(parks_then_fails)
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "parks_then_fails" in names


async def test_stop_iteration_becomes_runtime_error_like_in_a_coroutine():
    def stops():
        raise StopIteration

    with pytest.raises(RuntimeError):
        await greenasync.run(stops)

    def parks_then_stops():
        greenasync.sleep(0)
        raise StopIteration

    with pytest.raises(RuntimeError, match="StopIteration"):
        await greenasync.run(parks_then_stops)


def test_run_without_running_loop_raises_clear_error():
    coro = greenasync.run(int)
    with pytest.raises(greenasync.NoRunningLoopError, match="running asyncio event loop"):
        coro.send(None)


# -- worker reuse and fairness ----------------------------------------------------------------


async def test_sequential_calls_reuse_one_worker():
    await park_once()
    before = hub().spawned
    for _ in range(10_000):
        await greenasync.run(int)
    for _ in range(100):
        await greenasync.run(greenasync.sleep, 0)
    assert hub().spawned == before


async def test_concurrent_calls_create_at_most_peak_concurrency_workers():
    h = hub()
    before = h.spawned
    for _ in range(20):
        await asyncio.gather(*[greenasync.run(greenasync.sleep, 0.001) for _ in range(50)])
    assert h.spawned - before <= 50


@pytest.mark.parametrize("nargs", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("keywords", [False, True])
async def test_an_idle_worker_keeps_nothing_of_its_last_call(nargs, keywords):
    # Every way _main calls a job (a fixed count of 0-3 arguments, or *args/**kwargs).
    class Thing:
        pass

    def fn(*args, **kwargs):
        return Thing()

    args = [Thing() for _ in range(nargs)]
    kwargs = {"key": Thing()} if keywords else {}
    result = await greenasync.run(fn, *args, **kwargs)
    refs = [weakref.ref(x) for x in [fn, result, *args, *kwargs.values()]]
    del fn, result, args, kwargs
    assert len(hub().idle) == 1  # the worker is idle, not ended
    assert [ref() for ref in refs] == [None] * len(refs)


async def test_call_that_never_waits_completes_without_a_loop_iteration(monkeypatch):
    # A streak of such calls yields after _FAIR_SLICE seconds: long enough here for any
    # machine, so the two calls below cannot reach it.
    monkeypatch.setattr(greenasync._bridge, "_FAIR_SLICE", 60.0)
    await park_once()  # start a fresh fairness streak
    loop = asyncio.get_running_loop()
    ran = []
    # A zero-delay timer runs at the next loop iteration, whatever the loop kind.
    loop.call_later(0, ran.append, True)
    assert await greenasync.run(lambda: list(ran)) == []
    assert await greenasync.run(lambda: 42) == 42
    assert ran == []  # neither call let the loop iterate
    await asyncio.sleep(0.01)
    assert ran == [True]


async def test_never_waiting_calls_do_not_starve_the_loop(ticker):
    async with ticker() as t:
        deadline = time.monotonic() + 0.3
        calls = 0
        while time.monotonic() < deadline:
            await greenasync.run(int)
            calls += 1
    assert calls > 1000
    assert t.ticks >= 10, f"ticker ticked {t.ticks} times in 0.3 s"
    assert t.max_gap < 0.05, f"loop stalled {t.max_gap * 1000:.1f} ms"


# -- contextvars ------------------------------------------------------------------------------

request_id = contextvars.ContextVar("request_id", default=None)


async def test_caller_context_is_copied_in_and_writes_do_not_leak_back():
    def sync_code():
        seen = request_id.get()
        request_id.set("changed-inside")
        greenasync.sleep(0.001)
        return seen, request_id.get()

    request_id.set("req-1")
    assert await greenasync.run(sync_code) == ("req-1", "changed-inside")
    assert request_id.get() == "req-1"


async def test_reused_worker_does_not_carry_context_between_calls():
    await greenasync.run(request_id.set, "first")
    assert await greenasync.run(request_id.get) is None


# -- green helpers, inside and outside green context ----------------------------------------


async def test_in_green_context():
    assert greenasync.in_green_context() is False
    assert await greenasync.run(greenasync.in_green_context) is True


def test_helpers_outside_green_context_behave_like_the_stdlib():
    assert greenasync.in_green_context() is False
    start = time.monotonic()
    greenasync.sleep(0.05)
    assert time.monotonic() - start >= 0.05
    a, b = socket.socketpair()
    with a, b:
        start = time.monotonic()
        assert greenasync.wait_readable(a, 0.05) is False
        assert time.monotonic() - start >= 0.045
        assert greenasync.wait_writable(a, 0.05) is True
        b.send(b"x")
        assert greenasync.wait_readable(a.fileno(), 1) is True
    assert greenasync.to_thread(lambda x: x * 2, 21) == 42
    with pytest.raises(ValueError):
        greenasync.sleep(-1)


def test_await_outside_green_context_raises_clear_error():
    async def coro():
        return 1

    with pytest.raises(greenasync.MissingGreenletError, match="outside a greenasync greenlet"):
        greenasync.await_(coro())


def test_waiter_outside_green_context_raises():
    with pytest.raises(greenasync.MissingGreenletError):
        greenasync.Waiter()


async def test_sleep_parks_without_blocking_the_loop(ticker):
    async with ticker() as t:
        start = time.monotonic()
        await asyncio.gather(*[greenasync.run(greenasync.sleep, 0.2) for _ in range(100)])
        elapsed = time.monotonic() - start
    assert 0.2 <= elapsed < 1.0
    assert t.max_gap < 0.05, f"loop stalled {t.max_gap * 1000:.1f} ms"
    with pytest.raises(ValueError):
        await greenasync.run(greenasync.sleep, -1)


async def test_wait_readable_parks_until_data_and_times_out(ticker):
    a, b = socket.socketpair()
    with a, b:
        async with ticker() as t:
            start = time.monotonic()
            assert await greenasync.run(greenasync.wait_readable, a, 0.1) is False
            assert time.monotonic() - start >= 0.095
            task = asyncio.ensure_future(greenasync.run(greenasync.wait_readable, a, 5))
            await asyncio.sleep(0.05)
            assert not task.done()
            b.send(b"x")
            assert await task is True
        assert t.max_gap < 0.05
        assert await greenasync.run(greenasync.wait_writable, a.fileno(), 1) is True
        assert hub().readers == {} and hub().writers == {}


async def test_second_waiter_on_same_fd_and_direction_is_an_error():
    a, b = socket.socketpair()
    with a, b:
        first = asyncio.ensure_future(greenasync.run(greenasync.wait_readable, a, 5))
        await asyncio.sleep(0.01)
        with pytest.raises(greenasync.ConcurrentUseError, match="already waiting"):
            await greenasync.run(greenasync.wait_readable, a, 5)
        # The other direction is independent; the first waiter still gets its wake-up.
        assert await greenasync.run(greenasync.wait_writable, a, 5) is True
        b.send(b"x")
        assert await first is True


async def test_wait_any_reports_readiness_of_any_fd():
    from greenasync._bridge import wait_any

    a, b = socket.socketpair()
    c, d = socket.socketpair()
    with a, b, c, d:
        task = asyncio.ensure_future(greenasync.run(wait_any, [a, c], [], 5))
        await asyncio.sleep(0.01)
        d.send(b"x")
        assert await task is True
        assert await greenasync.run(wait_any, [a], [], 0.02) is False
        assert hub().readers == {}


async def test_to_thread_parks_while_a_thread_runs(ticker):
    loop_thread = threading.get_ident()

    def blocking():
        time.sleep(0.2)
        return threading.get_ident()

    async with ticker() as t:
        thread_id = await greenasync.run(greenasync.to_thread, blocking)
    assert thread_id != loop_thread
    assert t.max_gap < 0.05


async def test_await_runs_a_coroutine_on_the_loop_from_sync_code():
    async def add(a, b):
        await asyncio.sleep(0.01)
        return a + b

    async def fails():
        raise LookupError("from coroutine")

    assert await greenasync.run(lambda: greenasync.await_(add(1, 2))) == 3
    with pytest.raises(LookupError, match="from coroutine"):
        await greenasync.run(lambda: greenasync.await_(fails()))


async def test_waiter_woken_from_another_thread(ticker):
    def sync_code():
        waiter = greenasync.Waiter()
        threading.Timer(0.1, waiter.wake, args=("from-thread",)).start()
        return waiter.wait(5)

    async with ticker() as t:
        assert await greenasync.run(sync_code) == "from-thread"
    assert t.max_gap < 0.05


async def test_waiter_first_wake_wins_and_timeout_returns_timed_out():
    def sync_code():
        waiter = greenasync.Waiter()
        waiter.wake(1)
        waiter.wake(2)
        first = waiter.wait(5)
        late = greenasync.Waiter()
        return first, late.wait(0.01)

    first, late = await greenasync.run(sync_code)
    assert first == 1
    assert late is greenasync.TIMED_OUT and not late


# -- cancellation ----------------------------------------------------------------------------


async def test_cancel_throws_into_the_wait_and_unregisters_the_fd():
    a, b = socket.socketpair()
    cleanup = []

    def blocked_read():
        try:
            greenasync.wait_readable(a, None)
        except BaseException as exc:  # the library's own cleanup path
            cleanup.append(type(exc))
            raise
        finally:
            cleanup.append("finally")

    with a, b:
        task = asyncio.ensure_future(greenasync.run(blocked_read))
        await asyncio.sleep(0.01)
        assert a.fileno() in hub().readers
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert cleanup == [asyncio.CancelledError, "finally"]
        assert hub().readers == {}
        # The fd is usable again by a later call.
        b.send(b"x")
        assert await greenasync.run(greenasync.wait_readable, a, 1) is True


async def test_cancel_while_yielding_is_raised_at_the_next_yield():
    # A yield (sleep(0), turnaround) is over before the task's next step, so a cancellation
    # that arrives during it cannot be thrown in there: the worker gets its yield back and
    # the next wait raises, as for a wait whose wake-up had already come.
    yields = []

    def spins():
        try:
            while True:
                greenasync.sleep(0)
                yields.append(1)
        except asyncio.CancelledError:
            yields.append("cancelled")
            raise

    task = asyncio.ensure_future(greenasync.run(spins))
    for _ in range(3):
        await asyncio.sleep(0)
    assert greenasync.statistics().parked["sleep"] == 1  # between two rounds, yielding
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert yields[-2:] == [1, "cancelled"]  # resumed once, then cancelled at its next yield
    assert greenasync.statistics().parked["sleep"] == 0
    assert hub().active == 0 and len(hub().idle) == 1


async def test_wait_for_timeout_cancels_the_greenlet_and_its_timer():
    finished = []

    def slow():
        try:
            greenasync.sleep(10)
        finally:
            finished.append(True)

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(greenasync.run(slow), 0.05)
    assert finished == [True]
    assert hub().cancels >= 1


async def test_cancelled_worker_is_not_reused_while_unwinding():
    workers = {}

    def slow_cleanup():
        workers["cancelled"] = greenasync._bridge.getcurrent()
        try:
            greenasync.sleep(10)
        finally:
            greenasync.sleep(0.05)  # cleanup that itself waits, after the cancel
            workers["unwound"] = True

    task = asyncio.ensure_future(greenasync.run(slow_cleanup))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "unwound" not in workers  # still unwinding, and the task did not wait for it
    other = await greenasync.run(greenasync._bridge.getcurrent)
    assert other is not workers["cancelled"]
    await asyncio.sleep(0.1)
    assert workers["unwound"] is True
    assert workers["cancelled"] in hub().idle


async def test_cancel_of_a_wait_on_a_thread_does_not_wait_for_the_thread():
    release = threading.Event()

    def waits_on_thread():
        return greenasync.to_thread(release.wait, 5)

    task = asyncio.ensure_future(greenasync.run(waits_on_thread))
    await asyncio.sleep(0.01)
    task.cancel()
    start = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - start < 0.5
    release.set()


async def test_cancel_of_await_cancels_the_inner_task():
    inner_cancelled = asyncio.Event()

    async def inner():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            inner_cancelled.set()
            raise

    task = asyncio.ensure_future(greenasync.run(lambda: greenasync.await_(inner())))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(inner_cancelled.wait(), 1)


async def test_many_random_cancellations_leave_no_registrations():
    a, b = socket.socketpair()
    with a, b:
        tasks = [asyncio.ensure_future(greenasync.run(greenasync.sleep, 0.01 * (i % 5))) for i in range(200)]
        await asyncio.sleep(0.015)
        for task in tasks[::3]:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        cancelled = sum(isinstance(r, asyncio.CancelledError) for r in results)
        assert 0 < cancelled <= len(tasks[::3])
        assert hub().readers == {} and hub().writers == {}
        assert len(hub().idle) == hub().spawned


def test_idle_workers_of_closed_loops_are_not_leaked():
    import gc

    from greenasync import _bridge

    async def burst():
        await asyncio.gather(*[greenasync.run(greenasync.sleep, 0.001) for _ in range(200)])

    counts = []
    for _ in range(4):
        asyncio.run(burst())
        gc.collect()
        counts.append(sum(type(obj) is _bridge._Worker for obj in gc.get_objects()))
    # Each new loop ends the previous loop's idle workers: the count does not grow.
    assert counts[-1] <= counts[0] <= 200 + 50, counts
