"""greenasync.redis (the ready-made redis-py wrapper) against a real Redis."""

import asyncio
import inspect
import socket
import threading
import time
import uuid

import pytest
import redis
import redis._parsers
import redis.utils
from redis.backoff import ConstantBackoff
from redis.retry import Retry

import greenasync
import greenasync.redis as gr
from helpers import start_sync_writers

STALL = 0.1  # longest loop stall tolerated where a test waits >= 0.3 s (2 shared cores)


@pytest.fixture(scope="module", autouse=True)
def repatch():
    # Another module's teardown may have called greenasync.unpatch("redis") (not reference-
    # counted); importing greenasync.redis patched it once, make sure it still is.
    greenasync.patch("redis")
    yield


@pytest.fixture
def prefix(redis_url):
    """A key prefix private to one test; its keys are deleted afterwards (never FLUSHALL)."""
    prefix = f"greenasync-wrapper-test:{uuid.uuid4().hex}:"
    yield prefix
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def closing():
    """``closing(obj)`` registers a wrapped client or pool to close after the test."""
    objs = []
    yield lambda obj: objs.append(obj) or obj
    for obj in reversed(objs):
        d = obj.delegate
        if isinstance(d, redis.Redis):
            d.close()
            d.connection_pool.disconnect()
        else:
            d.disconnect()


@pytest.fixture
def r(redis_url, closing):
    return closing(gr.Redis.from_url(redis_url))


# --- commands ------------------------------------------------------------------------------


async def test_commands_are_coroutines_returning_redis_replies(r, prefix):
    assert inspect.iscoroutinefunction(gr.Redis.get)
    assert isinstance(r.delegate, redis.Redis)
    k = f"{prefix}k"
    assert await r.set(k, "v") is True
    assert await r.get(k) == b"v"
    assert await r.incr(f"{prefix}n", 5) == 5
    assert await r.hset(f"{prefix}h", mapping={"a": 1, "b": 2}) == 2
    assert await r.hgetall(f"{prefix}h") == {b"a": b"1", b"b": b"2"}
    assert await r.mget([k, f"{prefix}missing"]) == [b"v", None]
    assert await r.expire(k, 100) is True
    assert 0 < await r.ttl(k) <= 100
    assert await r.delete(k, f"{prefix}n") == 2
    assert await r.exists(k) == 0
    with pytest.raises(redis.ResponseError):
        await r.incr(f"{prefix}h")  # WRONGTYPE: redis-py's own error, unchanged
    assert r.get_encoder().encode("x") == b"x"  # SyncMethod: no await


async def test_from_url_module_function_and_decoded_responses(redis_url, prefix, closing):
    r = closing(gr.from_url(redis_url, decode_responses=True))
    assert type(r) is gr.Redis
    await r.set(f"{prefix}k", "é")
    assert await r.get(f"{prefix}k") == "é"
    client = closing(await r.client())  # a new wrapped single-connection Redis
    assert type(client) is gr.Redis and await client.get(f"{prefix}k") == "é"
    async with gr.Redis.from_url(redis_url) as scoped:  # __aexit__ closes it
        assert await scoped.ping() is True
        pool = scoped.delegate.connection_pool
        conns = pool._available_connections + list(pool._in_use_connections)
        assert [c._sock is not None for c in conns] == [True]
    assert conns[0]._sock is None  # disconnected by close()


async def test_monitor_sees_commands_of_another_client(r, prefix):
    monitor = await r.monitor()
    assert type(monitor) is gr.Monitor
    async with monitor as m:
        async def later():
            await asyncio.sleep(0.2)
            await r.set(f"{prefix}seen", "1")

        task = asyncio.ensure_future(later())
        async for command in m.listen():
            if prefix in command["command"]:
                break
        await task
    assert command["command"] == f"SET {prefix}seen 1"


# --- pipelines and transactions ------------------------------------------------------------


async def test_pipeline_buffers_chained_commands_and_executes(r, prefix):
    k = f"{prefix}k"
    async with r.pipeline() as p:
        assert type(p) is gr.Pipeline
        assert p.set(k, 1).incr(k).get(k) is p  # buffered: plain calls, chained
        assert await p.incrby(k, 10) is p  # a pipeline is awaitable, as in redis.asyncio
        assert len(p) == 4
        assert await p.execute() == [True, 2, b"2", 12]
        assert len(p) == 0
    async with r.pipeline(transaction=False) as p:
        p.get(k).hset(f"{prefix}h", "f", "v").incr(k)
        assert await p.execute() == [b"12", 1, 13]


async def test_pipeline_after_watch_runs_commands_immediately(r, prefix):
    k = f"{prefix}k"
    await r.set(k, 5)
    async with r.pipeline() as p:
        await p.watch(k)
        call = p.get(k)
        assert inspect.isawaitable(call) and call is not p
        assert await call == b"5"  # immediate mode: sent at once
        p.multi()
        assert p.set(k, 6) is p  # buffered again after MULTI
        await r.set(k, 100)  # another connection changes the watched key
        with pytest.raises(redis.WatchError):
            await p.execute()
    assert await r.get(k) == b"100"


async def test_transaction_retries_after_a_concurrent_write(r, prefix, closing, redis_url):
    k = f"{prefix}counter"
    await r.set(k, 1)
    other = closing(gr.Redis.from_url(redis_url))
    calls = []
    read, written = asyncio.Event(), asyncio.Event()

    async def interferer():
        await read.wait()
        await other.incr(k)  # once: after the first read, before EXEC
        written.set()

    async def add_ten(pipe):
        value = int(await pipe.get(k))
        calls.append(value)
        if len(calls) == 1:
            read.set()
            await written.wait()
        pipe.multi()
        pipe.set(k, value + 10)
        return value

    task = asyncio.ensure_future(interferer())
    result = await r.transaction(add_ten, k, value_from_callable=True, watch_delay=0.01)
    await task
    assert calls == [1, 2]  # the first attempt hit WatchError, redis-py retried
    assert result == 2
    assert await r.get(k) == b"12"

    # A plain function works too (buffered commands only).
    assert await r.transaction(lambda pipe: pipe.multi().incr(k), k) == [13]


# --- pub/sub -------------------------------------------------------------------------------

PARSERS = {
    "hiredis": {},  # the default when hiredis is installed (it polls the fd with select.poll)
    "resp3-python": {"parser_class": redis._parsers._RESP3Parser, "protocol": 3},
    "resp2-python": {"parser_class": redis._parsers._RESP2Parser, "protocol": 2},
}


@pytest.mark.parametrize("parser", list(PARSERS))
async def test_pubsub_get_message_timeout_and_listen(redis_url, prefix, closing, ticker, parser):
    r = closing(gr.Redis.from_url(redis_url, **PARSERS[parser]))
    channel = f"{prefix}ch"
    async with r.pubsub() as p:
        assert type(p) is gr.PubSub
        await p.subscribe(channel)
        msg = await p.get_message(timeout=1)
        assert msg["type"] == "subscribe" and msg["channel"] == channel.encode()
        expected = "_HiredisParser" if parser == "hiredis" else PARSERS[parser]["parser_class"].__name__
        if parser == "hiredis":
            assert redis.utils.HIREDIS_AVAILABLE, "hiredis must be installed for this case"
        assert type(p.delegate.connection._parser).__name__ == expected

        async with ticker() as t:
            start = time.monotonic()
            assert await p.get_message(timeout=0.5) is None
            elapsed = time.monotonic() - start
        assert 0.45 < elapsed < 1.5, elapsed
        assert t.max_gap < STALL, f"loop stalled {t.max_gap * 1000:.0f} ms in get_message"
        assert t.ticks >= 20, t.ticks

        async def publish_later():
            await asyncio.sleep(0.1)
            for i in range(3):
                await r.publish(channel, f"m{i}")

        task = asyncio.ensure_future(publish_later())
        msg = await p.get_message(ignore_subscribe_messages=True, timeout=2)
        assert msg["data"] == b"m0"
        received = []
        async for msg in p.listen():
            received.append(msg["data"])
            if len(received) == 2:
                break
        await task
        assert received == [b"m1", b"m2"]


async def test_pubsub_listen_parks_while_waiting(r, prefix, ticker):
    p = r.pubsub(ignore_subscribe_messages=True)
    await p.subscribe(f"{prefix}ch")
    await p.get_message(timeout=1)

    async def collect():
        out = []
        async for msg in p.listen():
            if msg is not None and msg["type"] == "message":
                out.append(msg["data"])
                if len(out) == 2:
                    return out

    async with ticker() as t:
        task = asyncio.ensure_future(collect())
        await asyncio.sleep(0.4)
        assert not task.done()
        await r.publish(f"{prefix}ch", "a")
        await r.publish(f"{prefix}ch", "b")
        assert await asyncio.wait_for(task, 5) == [b"a", b"b"]
    assert t.max_gap < STALL and t.ticks >= 20, (t.max_gap, t.ticks)
    await p.close()


# --- locks ---------------------------------------------------------------------------------


async def test_lock_acquire_extend_release(r, prefix):
    name = f"{prefix}lock"
    lock = r.lock(name, timeout=5)
    assert type(lock) is gr.Lock
    assert await lock.acquire() is True
    assert await lock.owned() is True and await lock.locked() is True
    assert await lock.extend(10) is True
    assert 10_000 < await r.pttl(name) <= 15_000
    assert await lock.reacquire() is True
    assert await r.pttl(name) <= 5_000
    await lock.release()
    assert await lock.locked() is False
    with pytest.raises(redis.exceptions.LockError):
        await lock.release()
    async with r.lock(name, timeout=5) as held:
        assert await held.owned() is True
    assert await r.exists(name) == 0


async def test_contended_lock_parks_the_second_acquirer(r, prefix, ticker):
    name = f"{prefix}lock"
    first = r.lock(name, timeout=10)
    second = r.lock(name, timeout=10, sleep=0.05)
    assert await first.acquire()
    async with ticker() as t:
        start = time.monotonic()
        assert await second.acquire(blocking_timeout=0.5) is False
        elapsed = time.monotonic() - start
    assert 0.45 < elapsed < 1.5, elapsed
    assert t.max_gap < STALL and t.ticks >= 20, (t.max_gap, t.ticks)

    # Released while the second waits (in another task, which then owns it): it gets it.
    async def second_holder():
        assert await second.acquire(blocking_timeout=5) is True
        owned = await second.owned()
        await second.release()
        return owned

    task = asyncio.ensure_future(second_holder())
    await asyncio.sleep(0.2)
    assert not task.done()
    await first.release()
    assert await asyncio.wait_for(task, 5) is True
    assert await first.owned() is False


async def test_lock_token_is_per_task_like_redis_py_per_thread(r, prefix):
    # thread_local=True (default): one Lock object shared by two tasks behaves as one shared
    # by two threads in redis-py: only the acquiring task owns (and can release) it.
    lock = r.lock(f"{prefix}lock", timeout=10)
    acquired, checked = asyncio.Event(), asyncio.Event()
    seen = {}

    async def owner():
        assert await lock.acquire()
        acquired.set()
        await checked.wait()
        seen["owner_owned"] = await lock.owned()
        await lock.release()

    async def other():
        await acquired.wait()
        seen["other_owned"] = await lock.owned()
        seen["other_try"] = await lock.acquire(blocking=False)
        with pytest.raises(redis.exceptions.LockError):
            await lock.release()
        checked.set()

    await asyncio.gather(owner(), other())
    assert seen == {"owner_owned": True, "other_owned": False, "other_try": False}
    assert await lock.locked() is False

    # The same in redis-py with two threads, as the reference.
    sync_lock = r.delegate.lock(f"{prefix}lock2", timeout=10)
    results = {}

    def thread_a():
        results["a"] = sync_lock.acquire()

    def thread_b():
        try:
            results["b_owned"] = sync_lock.owned()
        except AttributeError:  # redis-py: the thread-local token was never set here
            results["b_owned"] = False

    for fn in (thread_a, thread_b):
        th = threading.Thread(target=fn)
        th.start()
        await asyncio.get_running_loop().run_in_executor(None, th.join)
    assert results == {"a": True, "b_owned": False}
    r.delegate.delete(f"{prefix}lock2")

    # thread_local=False: the token is shared, so another task may release.
    shared = r.lock(f"{prefix}lock3", timeout=10, thread_local=False)
    assert await asyncio.ensure_future(shared.acquire())
    assert await asyncio.ensure_future(shared.owned())
    await asyncio.ensure_future(shared.release())
    assert await shared.locked() is False


# --- scan iterators ------------------------------------------------------------------------


async def test_scan_iterators_are_async_iterators(r, prefix):
    keys = {f"{prefix}k{i}".encode() for i in range(500)}
    await r.mset({k: b"1" for k in keys})
    it = r.scan_iter(match=f"{prefix}k*", count=50)  # no await: an async iterator at once
    assert isinstance(it, greenasync.AsyncIterator)
    seen = [k async for k in it]
    assert set(seen) == keys and len(seen) >= 500

    await r.hset(f"{prefix}h", mapping={f"f{i}": i for i in range(300)})
    fields = {f async for f, _ in r.hscan_iter(f"{prefix}h", count=20)}
    assert fields == {f"f{i}".encode() for i in range(300)}
    await r.sadd(f"{prefix}s", *range(200))
    assert {int(m) async for m in r.sscan_iter(f"{prefix}s", count=20)} == set(range(200))
    await r.zadd(f"{prefix}z", {f"m{i}": i for i in range(200)})
    assert sorted([int(s) async for _, s in r.zscan_iter(f"{prefix}z", count=20)]) == \
        list(range(200))


# --- pools ---------------------------------------------------------------------------------


async def test_exhausted_blocking_pool_parks_callers(redis_url, prefix, closing, ticker):
    pool = closing(gr.BlockingConnectionPool.from_url(redis_url, max_connections=2, timeout=10))
    assert type(pool) is gr.BlockingConnectionPool
    r = closing(gr.Redis(connection_pool=pool))

    async def one(i):
        assert await r.blpop(f"{prefix}empty{i}", timeout=0.1) is None  # holds a connection
        await r.set(f"{prefix}k{i}", i)
        return int(await r.get(f"{prefix}k{i}"))

    async with ticker() as t:
        start = time.monotonic()
        results = await asyncio.gather(*[one(i) for i in range(20)])
        elapsed = time.monotonic() - start
    assert results == list(range(20))
    assert elapsed > 0.9, f"20 x 0.1 s BLPOP over 2 connections took only {elapsed:.2f} s"
    assert t.max_gap < STALL and t.ticks >= 30, (t.max_gap, t.ticks)
    assert len(pool.delegate._connections) <= 2


async def test_blocking_pool_timeout_raises_while_the_loop_runs(redis_url, prefix, closing,
                                                               ticker):
    pool = closing(gr.BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=0.4))
    r = closing(gr.Redis(connection_pool=pool))
    holder = asyncio.ensure_future(r.blpop(f"{prefix}empty", timeout=1.5))
    await asyncio.sleep(0.1)
    async with ticker() as t:
        start = time.monotonic()
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            await r.get(f"{prefix}k")
        elapsed = time.monotonic() - start
    assert 0.35 < elapsed < 1.2, elapsed
    assert t.max_gap < STALL and t.ticks >= 15, (t.max_gap, t.ticks)
    assert await holder is None


async def test_single_connection_client_under_50_concurrent_calls(redis_url, prefix, closing):
    setup = closing(gr.Redis.from_url(redis_url))
    await setup.mset({f"{prefix}{i}": f"value-{i}" for i in range(50)})
    pool = redis.ConnectionPool.from_url(redis_url)  # a sync pool is accepted as is
    r = closing(await gr.Redis.create(connection_pool=pool, single_connection_client=True))
    assert r.delegate.connection is not None
    replies = await asyncio.gather(*[r.get(f"{prefix}{i}") for i in range(50)])
    assert replies == [f"value-{i}".encode() for i in range(50)]
    values = await asyncio.gather(*[r.incr(f"{prefix}n") for _ in range(50)])
    assert sorted(values) == list(range(1, 51))
    pool.disconnect()


# --- timeouts and failures -----------------------------------------------------------------


async def test_blpop_timeout_and_wakeup(r, prefix, ticker):
    async with ticker() as t:
        start = time.monotonic()
        assert await r.blpop(f"{prefix}q", timeout=0.5) is None
        elapsed = time.monotonic() - start
    assert 0.45 < elapsed < 1.5, elapsed
    assert t.max_gap < STALL and t.ticks >= 20, (t.max_gap, t.ticks)

    async def push_later():
        await asyncio.sleep(0.2)
        await r.rpush(f"{prefix}q", "x")

    task = asyncio.ensure_future(push_later())
    start = time.monotonic()
    assert await r.blpop(f"{prefix}q", timeout=5) == (f"{prefix}q".encode(), b"x")
    assert time.monotonic() - start < 2
    await task


async def test_socket_timeout_raises_timeout_error_on_time(redis_url, prefix, closing, ticker):
    r = closing(gr.Redis.from_url(redis_url, socket_timeout=0.3, retry=None))
    async with ticker() as t:
        start = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            await r.blpop(f"{prefix}q", timeout=3)
        elapsed = time.monotonic() - start
    assert 0.28 < elapsed < 1.2, elapsed
    assert t.max_gap < STALL and t.ticks >= 12, (t.max_gap, t.ticks)
    assert await r.ping() is True  # the client recovers (the timed-out connection is dropped)


async def test_socket_connect_timeout_raises_timeout_error_on_time(closing, ticker):
    # A listener that never accepts, its backlog full: further connects get no SYN-ACK.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                fillers.append(filler)
                filler.settimeout(0.2)
                try:
                    filler.connect(("127.0.0.1", port))
                except TimeoutError:
                    break
            else:
                pytest.skip("could not fill the listen backlog on this kernel")
            r = closing(gr.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.3,
                                 retry=None))
            async with ticker() as t:
                start = time.monotonic()
                with pytest.raises(redis.TimeoutError, match="Timeout connecting"):
                    await r.ping()
                elapsed = time.monotonic() - start
            assert 0.28 < elapsed < 1.2, elapsed
            assert t.max_gap < STALL and t.ticks >= 12, (t.max_gap, t.ticks)
        finally:
            for filler in fillers:
                filler.close()


async def test_retry_backoff_sleeps_cooperatively(redis_url, prefix, closing, ticker):
    # 3 attempts x 0.2 s socket timeout + 2 x 0.15 s backoff (redis.retry's time.sleep).
    r = closing(gr.Redis.from_url(redis_url, socket_timeout=0.2,
                                  retry=Retry(ConstantBackoff(0.15), 2)))
    async with ticker() as t:
        start = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            await r.blpop(f"{prefix}q", timeout=5)
        elapsed = time.monotonic() - start
    assert 0.85 < elapsed < 2.5, elapsed
    assert t.max_gap < STALL and t.ticks >= 40, (t.max_gap, t.ticks)


async def test_redis_restart_mid_traffic(closing):
    import servers

    server = servers.PrivateRedis()
    port = server.port
    try:
        r = closing(gr.Redis.from_url(server.url, retry=None, socket_connect_timeout=2))
        await r.set("k", "v")
        blocked = [asyncio.ensure_future(r.blpop(f"q{i}", timeout=10)) for i in range(10)]
        stop = asyncio.Event()
        errors, done = [], []

        async def traffic(i):
            while not stop.is_set():
                try:
                    await r.set(f"t{i}", i)
                    assert await r.get(f"t{i}") == str(i).encode()
                    done.append(i)
                except redis.ConnectionError as exc:
                    errors.append(exc)
                    return
                await asyncio.sleep(0.005)

        workers = [asyncio.ensure_future(traffic(i)) for i in range(10)]
        await asyncio.sleep(0.3)
        assert done, "no traffic before the restart"
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        await loop.run_in_executor(None, server.stop)
        results = await asyncio.wait_for(
            asyncio.gather(*blocked, return_exceptions=True), 5)
        assert all(isinstance(x, redis.ConnectionError) for x in results), results
        assert time.monotonic() - start < 5
        await asyncio.wait_for(asyncio.gather(*workers), 5)
        stop.set()
        assert errors and all(isinstance(e, redis.ConnectionError) for e in errors)

        with pytest.raises(redis.ConnectionError):
            await r.get("k")  # nobody listens on the port now

        server = await loop.run_in_executor(None, lambda: servers.PrivateRedis(port=port))
        assert server.port == port
        # Later calls recover on fresh connections (the new server is empty).
        assert await r.get("k") is None
        results = await asyncio.gather(*[r.incr("n") for _ in range(50)])
        assert sorted(results) == list(range(1, 51))
    finally:
        server.stop()


async def test_same_client_from_threads_and_coroutines(redis_url, prefix, closing):
    # 104 concurrent users: redis-py's default pool (100) would raise MaxConnectionsError
    # (with threads too); a blocking pool makes threads and greenlets queue on one hybrid queue.
    pool = closing(gr.BlockingConnectionPool.from_url(redis_url, max_connections=50, timeout=10))
    r = closing(gr.Redis(connection_pool=pool))
    errors = []

    threads = start_sync_writers(r.delegate, prefix, errors)

    async def green_work(i):
        out = []
        for j in range(5):
            key = f"{prefix}g{i}:{j}"
            await r.set(key, key)
            out.append(await r.get(key) == key.encode())
        return all(out)

    results = await asyncio.gather(*[green_work(i) for i in range(100)])
    await asyncio.get_running_loop().run_in_executor(None, lambda: [t.join() for t in threads])
    assert all(results)
    assert errors == []
    assert await r.dbsize() >= 900  # all writes landed (shared server: at least ours)
