"""Bad input and misuse: a clear error, at once, never a hang.

Every call is bounded with ``asyncio.wait_for`` (or a thread join), so a hang fails with a
message instead of stalling the run. Covers wrong argument types and values (NaN and
infinite timeouts included: before the fixes in ``greenasync.sleep`` and the hybrid
``threading`` locks, ``greenasync.sleep(nan)`` and ``Lock.acquire(timeout=nan)`` parked
forever in a greenlet), closed clients, use after the loop closed, and calls from another
loop, thread or greenlet.
"""

import asyncio
import math
import threading
import uuid

import pymongo
import pytest

import greenasync
import greenasync.redis as gr
from greenasync.green import socket as green_socket
from greenasync.green import threading as green_threading

BOUND = 5  # seconds any single misuse may take to fail


async def outcome(awaitable):
    """'returned <value>' or the exception's class name; 'HANG' if it takes BOUND s."""
    try:
        return f"returned {await asyncio.wait_for(awaitable, BOUND)!r}"
    except asyncio.TimeoutError:
        return "HANG"
    except Exception as exc:  # the outcome is what is checked
        return type(exc).__name__


@pytest.fixture
def r(redis_url):
    client = gr.Redis.from_url(redis_url)
    yield client
    client.delegate.close()


async def test_wrong_arguments_raise_the_usual_errors_at_once(r):
    def contended_acquire(timeout):
        lock = green_threading.Lock()
        lock.acquire()
        return lock.acquire(True, timeout)

    results = {
        "run(42)": await outcome(greenasync.run(42)),
        "redis set(object())": await outcome(r.set(object(), 1)),
        "redis get() without key": await outcome(r.get()),
        "redis incrby(k, 'x')": await outcome(r.incrby(f"greenasync-bad:{uuid.uuid4()}", "x")),
        "sleep(nan)": await outcome(greenasync.run(greenasync.sleep, math.nan)),
        "sleep(inf)": await outcome(greenasync.run(greenasync.sleep, math.inf)),
        "sleep(-1)": await outcome(greenasync.run(greenasync.sleep, -1)),
        "sleep('1')": await outcome(greenasync.run(greenasync.sleep, "1")),
        "Lock.acquire(timeout=nan)": await outcome(greenasync.run(contended_acquire, math.nan)),
        "Lock.acquire(timeout=inf)": await outcome(greenasync.run(contended_acquire, math.inf)),
        "Event.wait(nan)": await outcome(greenasync.run(green_threading.Event().wait, math.nan)),
        "wait_readable('x')": await outcome(greenasync.run(greenasync.wait_readable, "x", 1)),
        "to_thread(42)": await outcome(greenasync.run(greenasync.to_thread, 42)),
        "await_(42)": await outcome(greenasync.run(greenasync.await_, 42)),
        "Waiter().wait('x')": await outcome(greenasync.run(lambda: greenasync.Waiter().wait("x"))),
    }
    expected = {
        "run(42)": "TypeError",
        "redis set(object())": "DataError",
        "redis get() without key": "TypeError",
        "redis incrby(k, 'x')": "ResponseError",
        "sleep(nan)": "ValueError",  # as time.sleep
        "sleep(inf)": "OverflowError",  # as time.sleep
        "sleep(-1)": "ValueError",
        "sleep('1')": "TypeError",
        "Lock.acquire(timeout=nan)": "ValueError",  # as threading.Lock
        "Lock.acquire(timeout=inf)": "OverflowError",
        "Event.wait(nan)": "returned False",  # as threading.Event: polls once
        "wait_readable('x')": "AttributeError",
        "to_thread(42)": "TypeError",
        "await_(42)": "TypeError",
        "Waiter().wait('x')": "TypeError",
    }
    assert results == expected, f"outcomes: {results}"
    # Nothing was left behind by all that: a timed wait still times out on time.
    assert await outcome(greenasync.run(greenasync.sleep, 0.01)) == "returned None"
    stats = greenasync.statistics()
    assert stats.busy_workers == 0 and sum(stats.parked.values()) == 0, stats


async def test_closed_clients_fail_clearly_or_reconnect(r, redis_url):
    key = f"greenasync-bad:{uuid.uuid4()}"
    await r.set(key, "v")
    await r.close()  # redis-py: a closed client reconnects on its next command
    assert await outcome(r.get(key)) == "returned b'v'"
    await r.delete(key)

    mongo = pymongo.MongoClient("mongodb://127.0.0.1:1/?directConnection=true", connect=False)
    await greenasync.run(mongo.close)
    assert await outcome(greenasync.run(mongo.db.c.find_one)) == "InvalidOperation"

    a, b = green_socket.socketpair()
    a.close()
    b.close()
    assert await outcome(greenasync.run(a.recv, 1)) == "OSError"  # EBADF, at once


def test_use_after_the_loop_closed(loop_kind, redis_url):
    from conftest import run_on

    r = gr.Redis.from_url(redis_url)
    key = f"greenasync-bad:{uuid.uuid4()}"

    async def first():
        await r.set(key, "one")
        # A waiter of this loop, to be woken from a thread after the loop closed.
        box = {}

        def park():
            box["waiter"] = greenasync.Waiter()
            return box["waiter"].wait()

        task = asyncio.ensure_future(greenasync.run(park))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return box["waiter"]

    waiter = run_on(loop_kind, first)
    try:
        # The loop is closed: a late wake-up from another thread is ignored, not an error.
        errors = []
        thread = threading.Thread(target=lambda: errors.append(waiter.wake("late") or "ok"))
        thread.start()
        thread.join(BOUND)
        assert errors == ["ok"], errors
        # No loop now: a clear error, not a hang.
        with pytest.raises(greenasync.NoRunningLoopError):
            coro = greenasync.run(lambda: None)
            try:
                coro.send(None)
            finally:
                coro.close()

        # The same client on a new loop: its pooled connections were made on the old one.
        async def second():
            value = await asyncio.wait_for(r.get(key), BOUND)
            await r.delete(key)
            return value

        assert run_on(loop_kind, second) == b"one"
        assert asyncio.run(asyncio.wait_for(r.echo("from sync code"), BOUND)) == \
            b"from sync code"
    finally:
        r.delegate.close()


def test_one_client_from_two_loops_in_two_threads(redis_url):
    # A wrapped client shared by two event loops in two threads (and a plain thread): its
    # pool and, with single_connection_client, its one connection's RLock are hybrid, so
    # each side parks or blocks in turn. Every reply must be the caller's own.
    shared = gr.Redis.from_url(redis_url)
    single = gr.Redis.from_url(redis_url, single_connection_client=True)
    results, errors = [], []

    async def calls(tag):
        for client in (shared, single):
            for i in range(100):
                token = f"{tag}:{i}"
                got = await asyncio.wait_for(client.echo(token), BOUND)
                if got != token.encode():
                    errors.append((token, got))
        results.append(tag)

    def loop_thread(tag):
        try:
            asyncio.run(calls(tag))
        except Exception as exc:  # reported through `errors`
            errors.append((tag, repr(exc)))

    def plain_thread():
        for i in range(100):
            token = f"plain:{i}"
            if single.delegate.echo(token) != token.encode():
                errors.append((token, "wrong"))
        results.append("plain")

    threads = [threading.Thread(target=loop_thread, args=(f"loop{n}",)) for n in range(2)]
    threads.append(threading.Thread(target=plain_thread))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        alive = [thread.name for thread in threads if thread.is_alive()]
        assert not alive and not errors, f"hung: {alive}; errors: {errors[:5]}"
        assert sorted(results) == ["loop0", "loop1", "plain"], results
    finally:
        shared.delegate.close()
        single.delegate.close()


async def test_driving_run_outside_the_loops_greenlet_is_a_clear_error():
    # A run() coroutine stepped by hand inside a worker greenlet (not awaited on the loop).
    def step_run_by_hand():
        coro = greenasync.run(lambda: None)
        try:
            coro.send(None)
        finally:
            coro.close()

    assert await outcome(greenasync.run(step_run_by_hand)) == "RuntimeError"
    # ...while the supported way, await_() from a worker, works.
    assert await outcome(greenasync.run(greenasync.await_, greenasync.run(lambda: 7))) == \
        "returned 7"
    # asyncio.run() inside a worker: asyncio's own error.
    async def nothing():
        return None

    coro = nothing()
    assert await outcome(greenasync.run(asyncio.run, coro)) == "RuntimeError"
    coro.close()
