"""redis-py (unchanged, scoped-patched) driven by greenasync.run against a real Redis."""

import asyncio
import time
import uuid

import pytest
import redis

import greenasync
from helpers import start_sync_writers


@pytest.fixture(scope="module", autouse=True)
def patched_redis():
    greenasync.patch("redis")
    yield
    greenasync.unpatch("redis")


@pytest.fixture
def prefix(redis_url):
    """A key prefix private to one test; its keys are deleted afterwards (never FLUSHALL:
    the server may be shared)."""
    prefix = f"greenasync-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


async def warm(client, connections):
    """Open ``connections`` pooled connections before a test measures the loop.

    A connect and redis-py's handshake (HELLO, CLIENT SETINFO) cost ~0.3 ms of CPU each
    here; a burst of them in one loop iteration is CPU the ticker would see, while these
    tests are about waits never blocking the loop."""
    await asyncio.gather(*[greenasync.run(client.ping) for _ in range(connections)])


async def test_hundreds_of_concurrent_calls_never_stall_the_loop(redis_url, prefix, ticker):
    # 200 calls share 50 connections: the blocking pool parks callers until one is free
    # (its queue_class default argument is rebound by patch() to the hybrid queue).
    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=50, timeout=10)
    client = redis.Redis(connection_pool=pool)
    # Each loop iteration still runs one step of every ready call (~70 µs of redis-py CPU
    # each, measured here), so 200 calls make iterations of ~15 ms.
    await warm(client, 50)
    n = 200

    async def one(i):
        key = f"{prefix}{i}"
        await greenasync.run(client.set, key, i)
        await greenasync.run(client.incr, f"{prefix}counter")
        return int(await greenasync.run(client.get, key))

    async with ticker() as t:
        results = await asyncio.gather(*[one(i) for i in range(n)])
    assert results == list(range(n))
    assert int(client.get(f"{prefix}counter")) == n
    assert t.max_gap < 0.05, f"loop stalled {t.max_gap * 1000:.1f} ms"
    assert len(pool._connections) <= 50
    client.close()
    pool.disconnect()


async def test_blpop_parks_many_calls_at_once(redis_url, prefix, ticker):
    client = redis.Redis.from_url(redis_url, max_connections=100)
    await warm(client, 100)
    async with ticker() as t:
        start = time.monotonic()
        results = await asyncio.gather(
            *[greenasync.run(client.blpop, f"{prefix}empty:{i}", timeout=1) for i in range(100)]
        )
        elapsed = time.monotonic() - start
    assert results == [None] * 100
    assert 0.9 < elapsed < 2.5, f"100 parallel 1 s BLPOPs took {elapsed:.2f} s"
    assert t.max_gap < 0.05, f"loop stalled {t.max_gap * 1000:.1f} ms"
    client.close()


async def test_single_connection_client_returns_correct_replies(redis_url, prefix):
    # redis-py holds a thread-owned RLock across send and read; with greenlets sharing a
    # thread a naive adapter re-enters it and crosses replies (39/40 wrong, measured).
    setup = redis.Redis.from_url(redis_url)
    setup.mset({f"{prefix}{i}": f"value-{i}" for i in range(50)})
    setup.close()
    client = await greenasync.run(redis.Redis.from_url, redis_url, single_connection_client=True)
    replies = await asyncio.gather(*[greenasync.run(client.get, f"{prefix}{i}") for i in range(50)])
    assert replies == [f"value-{i}".encode() for i in range(50)]
    await greenasync.run(client.close)


async def test_socket_timeout_raises_redis_timeout_error_on_time(redis_url, prefix, ticker):
    client = redis.Redis.from_url(redis_url, socket_timeout=0.2, retry=None)
    async with ticker() as t:
        start = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            await greenasync.run(client.blpop, f"{prefix}empty", timeout=2)
        elapsed = time.monotonic() - start
    assert 0.18 < elapsed < 1.0, elapsed
    assert t.max_gap < 0.05
    client.close()


async def test_cancelled_call_leaves_the_client_consistent(redis_url, prefix):
    client = redis.Redis.from_url(redis_url, max_connections=5)
    await greenasync.run(client.set, f"{prefix}k", "v")
    for _ in range(20):
        task = asyncio.ensure_future(greenasync.run(client.blpop, f"{prefix}empty", timeout=5))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # No response of the cancelled request is ever read by a later call.
        assert await greenasync.run(client.get, f"{prefix}k") == b"v"
    client.close()


async def test_same_client_from_threads_and_coroutines(redis_url, prefix):
    pool = redis.BlockingConnectionPool.from_url(redis_url, max_connections=50, timeout=10)
    client = redis.Redis(connection_pool=pool)
    errors = []

    threads = start_sync_writers(client, prefix, errors)

    async def green_work(i):
        key = f"{prefix}g{i}"
        await greenasync.run(client.set, key, key)
        return await greenasync.run(client.get, key) == key.encode()

    results = await asyncio.gather(*[green_work(i) for i in range(200)])
    await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in threads])
    assert all(results)
    assert errors == []
    client.close()
    pool.disconnect()
