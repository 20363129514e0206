"""pymongo (unchanged, scoped-patched) driven by greenasync.run over real sockets.

The server is greenasync.testing.mongo_server (OP_MSG over TCP, mongomock behind it) in a
separate process, so replies are not produced under this process's GIL and requests really
wait. ``patch("pymongo")`` rebinds ``pymongo.pool_shared.socket`` (sockets),
``pymongo.lock.threading`` (the pool's maxConnecting/maxPoolSize conditions and the topology
condition that server selection waits on) and pymongo's ``time`` globals to greenasync's hybrid
shims; pymongo's own code is untouched. The deadlocks a naive adapter hits here (measured in
the research notes): a pool condition waited on by the loop thread while the greenlets that
would notify it are parked on that same thread (10 concurrent calls with maxConnecting=2), and
server selection blocking the loop for serverSelectionTimeoutMS.

Clients are created inside each test, after patching: a client built before ``patch`` keeps
stdlib locks.
"""

import asyncio
import contextlib
import socket
import threading
import time
import uuid

import pymongo
import pytest
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, NetworkTimeout, ServerSelectionTimeoutError

import greenasync
from greenasync.green import socket as green_socket
from greenasync.green import threading as green_threading
from greenasync.testing.mongo_server import start_process
from helpers import PoolStats


@pytest.fixture(scope="module", autouse=True)
def patched_pymongo():
    greenasync.patch("pymongo")
    yield
    greenasync.unpatch("pymongo")


@pytest.fixture(scope="module")
def server():
    with start_process() as server:
        yield server


@pytest.fixture
def knobs(server):
    """The server, with its delay/close knobs reset after the test."""
    yield server
    server.configure()


@contextlib.asynccontextmanager
async def mongo_client(uri, **options):
    client = MongoClient(uri, **{"serverSelectionTimeoutMS": 10_000, **options})
    try:
        yield client
    finally:
        # close() sends endSessions: I/O, so it runs in a greenlet too.
        await greenasync.run(client.close)


def new_collection(client):
    return client.db[f"c_{uuid.uuid4().hex[:12]}"]


async def in_thread(fn, *args):
    """Run blocking test plumbing (server status over a plain socket) off the loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def assert_loop_kept_ticking(t, elapsed, max_gap=0.05):
    """``t.max_gap`` only covers gaps between ticks: a loop blocked for the whole run shows
    no tick at all (and max_gap 0), so the tick count is checked too."""
    assert t.max_gap < max_gap, f"loop stalled {t.max_gap * 1000:.1f} ms"
    assert t.ticks >= elapsed / t.interval * 0.4, f"{t.ticks} ticks in {elapsed:.3f} s"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_patch_reaches_pymongo_sockets_and_conditions():
    # What the tests below rely on: pymongo's socket module and its lock factory's threading
    # module are the shims; the stdlib modules themselves are untouched.
    import pymongo.lock
    import pymongo.pool_shared

    assert pymongo.pool_shared.socket is green_socket
    assert pymongo.lock.threading is green_threading
    rebound = {(r.module, r.name) for r in greenasync.patched()["pymongo"].rebound}
    assert {("pymongo.pool_shared", "socket"), ("pymongo.lock", "threading")} <= rebound
    assert socket.socket is not green_socket.socket
    assert threading.Condition is not green_threading.Condition


async def test_200_concurrent_calls_with_max_connecting_2(server, ticker):
    # A naive adapter deadlocks here at 10 concurrent calls: _max_connecting_cond.wait()
    # blocks the loop thread that the connecting greenlets need.
    stats = PoolStats()
    total_before = (await in_thread(server.status))["totalConnections"]
    async with mongo_client(server.uri, maxConnecting=2, maxPoolSize=10,
                            event_listeners=[stats]) as client:
        coll = new_collection(client)
        await greenasync.run(coll.insert_many, [{"_id": i, "v": f"doc-{i}"} for i in range(200)])

        async def one(i):
            # 200 coroutines, so at most 200 calls in flight at once, all contending for
            # 10 connections; connections are opened at most 2 at a time.
            doc = await greenasync.run(coll.find_one, {"_id": i})
            result = await greenasync.run(coll.insert_one, {"_id": 1000 + i, "v": f"new-{i}"})
            return doc, result.inserted_id

        async with ticker() as t:
            start = time.monotonic()
            results = await asyncio.gather(*[one(i) for i in range(200)])
            elapsed = time.monotonic() - start
        total_after = (await in_thread(server.status))["totalConnections"]

        assert results == [({"_id": i, "v": f"doc-{i}"}, 1000 + i) for i in range(200)]
        docs = await greenasync.run(lambda: list(coll.find({"_id": {"$gte": 1000}}).sort("_id")))
        assert docs == [{"_id": 1000 + i, "v": f"new-{i}"} for i in range(200)]
        assert_loop_kept_ticking(t, elapsed)
        # The pool stayed within maxPoolSize and the calls did share it.
        assert stats.max_open <= 10, stats.max_open
        assert stats.max_checked_out <= 10, stats.max_checked_out
        assert stats.max_checked_out >= 2, stats.max_checked_out
        # Server side: the pool's connections, the monitor's one and the status call's own.
        assert total_after - total_before <= 10 + 1 + 1, total_after - total_before
        print(f"\n200 find_one + 200 insert_one: {elapsed:.3f} s, pool {stats.created} "
              f"connections, max checked out {stats.max_checked_out}, "
              f"max loop gap {t.max_gap * 1000:.1f} ms")


async def test_500_concurrent_find_one_with_small_pool(server, ticker):
    # The mongo issue's figure: 500 concurrent find_one, maxConnecting=2, maxPoolSize=10.
    stats = PoolStats()
    total_before = (await in_thread(server.status))["totalConnections"]
    async with mongo_client(server.uri, maxConnecting=2, maxPoolSize=10,
                            event_listeners=[stats]) as client:
        coll = new_collection(client)
        await greenasync.run(coll.insert_many, [{"_id": i, "sq": i * i} for i in range(500)])
        async with ticker() as t:
            start = time.monotonic()
            found = await asyncio.gather(
                *[greenasync.run(coll.find_one, {"_id": i}, {"sq": 1}) for i in range(500)]
            )
            elapsed = time.monotonic() - start
        total_after = (await in_thread(server.status))["totalConnections"]

        assert found == [{"_id": i, "sq": i * i} for i in range(500)]
        assert stats.max_open <= 10, stats.max_open
        assert stats.max_checked_out == 10, stats.max_checked_out  # 500 callers, 10 conns
        assert total_after - total_before <= 10 + 1 + 1, total_after - total_before
        assert elapsed < 20, elapsed
        # 500 calls start in one loop iteration, each running ~0.1 ms of pymongo code before
        # its first park: that burst (~50 ms here, more on a loaded machine), not a blocked
        # wait, bounds the gap. A wait that blocked the loop would cost 0.5 s (pymongo's
        # condition waits poll at 0.5 s) or hang.
        assert_loop_kept_ticking(t, elapsed, max_gap=0.25)
        print(f"\n500 find_one: {elapsed:.3f} s, pool {stats.created} connections, "
              f"max loop gap {t.max_gap * 1000:.1f} ms, ticks {t.ticks}")


async def test_server_selection_against_a_dead_port_keeps_the_loop_running(ticker):
    # Server selection waits on the topology condition that a monitor *thread* notifies;
    # with stdlib conditions the loop would be blocked for the whole serverSelectionTimeoutMS.
    uri = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    async with mongo_client(uri, serverSelectionTimeoutMS=500, connectTimeoutMS=500) as client:
        async with ticker() as t:
            start = time.monotonic()
            with pytest.raises(ServerSelectionTimeoutError) as info:
                await greenasync.run(client.admin.command, "ping")
            elapsed = time.monotonic() - start
        assert 0.45 <= elapsed < 2.0, elapsed
        assert "127.0.0.1" in str(info.value)
        assert_loop_kept_ticking(t, elapsed)  # a blocked selection shows 0 ticks

        # Twenty selections at once wait in parallel, not one after another (10 s). pymongo
        # takes 0.5 or 1.0 s for this with 20 plain threads too: a monitor notification just
        # before the deadline starts another 0.5 s wait in its selection loop.
        async def ping():
            with pytest.raises(ServerSelectionTimeoutError):
                await greenasync.run(client.admin.command, "ping")

        async with ticker() as t:
            start = time.monotonic()
            await asyncio.gather(*[ping() for _ in range(20)])
            elapsed = time.monotonic() - start
        assert 0.45 <= elapsed < 3.0, elapsed
        assert_loop_kept_ticking(t, elapsed)
        print(f"\n20 selections against a dead port: {elapsed:.3f} s, "
              f"max loop gap {t.max_gap * 1000:.1f} ms")


async def test_monitor_threads_and_plain_threads_share_the_client(server, ticker):
    # Monitor threads open and use their sockets through the same patched module: off the
    # loop thread the shim must block for real. The same client is used from plain threads
    # (sync API) and from coroutines at once; pool conditions are shared by both kinds.
    stats = PoolStats()
    async with mongo_client(server.uri, heartbeatFrequencyMS=500, maxPoolSize=5,
                            maxConnecting=2, event_listeners=[stats]) as client:
        coll = new_collection(client)
        await greenasync.run(coll.insert_many, [{"_id": f"g{i}", "n": i} for i in range(100)])
        description = client.topology_description
        assert description.topology_type_name == "Single"
        (server_description,) = description.server_descriptions().values()
        assert server_description.server_type_name == "Standalone"
        assert any(t.name == "pymongo_server_monitor_thread" for t in threading.enumerate())
        hellos_before = (await in_thread(server.status))["commands"].get("hello", 0)
        start = time.monotonic()

        errors, done = [], []

        def thread_work(tid):
            try:
                for i in range(60):
                    key = f"t{tid}-{i}"
                    coll.insert_one({"_id": key, "tid": tid, "i": i})
                    doc = coll.find_one({"_id": key})
                    if doc != {"_id": key, "tid": tid, "i": i}:
                        errors.append((key, doc))
                done.append(tid)
            except Exception as exc:  # reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=thread_work, args=(tid,), daemon=True)
                   for tid in range(4)]
        for thread in threads:
            thread.start()

        async def green_work(i):
            results = []
            for _ in range(3):
                results.append(await greenasync.run(coll.find_one, {"_id": f"g{i}"}))
                await asyncio.sleep(0.01)
            return results

        async with ticker() as t:
            busy_start = time.monotonic()
            results = await asyncio.gather(*[green_work(i) for i in range(100)])
            busy = time.monotonic() - busy_start
        await in_thread(lambda: [thread.join(30) for thread in threads])
        # Let at least three heartbeat periods pass (the loop idles meanwhile).
        await asyncio.sleep(max(0.0, 1.6 - (time.monotonic() - start)))
        status = await in_thread(server.status)

        assert results == [[{"_id": f"g{i}", "n": i}] * 3 for i in range(100)]
        assert errors == []
        assert sorted(done) == [0, 1, 2, 3]
        # Greenlets waiting for a connection a thread holds park; they never block the loop
        # (4 busy threads share the GIL with it, hence the wider bound).
        assert_loop_kept_ticking(t, busy, max_gap=0.1)
        assert await greenasync.run(coll.count_documents, {"tid": {"$exists": True}}) == 240
        assert stats.max_open <= 5, stats.max_open
        # Background heartbeats kept going (the monitor's first check is "ismaster", then
        # one "hello" per heartbeatFrequencyMS on its own blocking socket).
        assert status["commands"].get("hello", 0) - hellos_before >= 2, status["commands"]
        (server_description,) = client.topology_description.server_descriptions().values()
        assert server_description.server_type_name == "Standalone"
        print(f"\nthreads+coroutines: busy {busy:.3f} s, max loop gap {t.max_gap * 1000:.1f} ms, "
              f"heartbeats {status['commands'].get('hello', 0) - hellos_before}, "
              f"pool {stats.created} connections")


async def test_pymongo_timeout_context_reaches_the_greenlet(knobs, ticker):
    async with mongo_client(knobs.uri) as client:
        coll = new_collection(client)
        await greenasync.run(coll.insert_one, {"_id": 1, "v": "one"})
        await in_thread(lambda: knobs.configure(delay=0.8, delay_commands=["find"]))

        async def untimed():
            # A concurrent call outside the `with` must not inherit its deadline.
            started = time.monotonic()
            doc = await greenasync.run(coll.find_one, {"_id": 1})
            return doc, time.monotonic() - started

        async with ticker() as t:
            other = asyncio.ensure_future(untimed())
            start = time.monotonic()
            with pytest.raises(NetworkTimeout) as info:
                with pymongo.timeout(0.2):
                    await greenasync.run(coll.find_one, {"_id": 1})
            elapsed = time.monotonic() - start
            doc, other_elapsed = await other
        assert info.value.timeout is True
        assert 0.15 <= elapsed < 0.7, elapsed  # the server would answer after 0.8 s
        assert doc == {"_id": 1, "v": "one"}
        assert other_elapsed >= 0.7, other_elapsed
        assert_loop_kept_ticking(t, other_elapsed)
        print(f"\npymongo.timeout(0.2): raised after {elapsed:.3f} s; "
              f"untimed call {other_elapsed:.3f} s")

        await in_thread(knobs.configure)
        assert await greenasync.run(coll.find_one, {"_id": 1}) == {"_id": 1, "v": "one"}
        with pymongo.timeout(5):
            assert await greenasync.run(coll.find_one, {"_id": 1}) == {"_id": 1, "v": "one"}


async def test_cancelled_find_leaves_the_client_usable(knobs):
    stats = PoolStats()
    async with mongo_client(knobs.uri, maxPoolSize=2, event_listeners=[stats]) as client:
        coll = new_collection(client)
        await greenasync.run(coll.insert_many, [{"_id": i, "v": i * 10} for i in range(10)])
        for round_ in range(3):
            await in_thread(lambda: knobs.configure(delay=0.5, delay_commands=["find"]))
            tasks = [asyncio.ensure_future(greenasync.run(coll.find_one, {"_id": 1}))
                     for _ in range(2)]
            await asyncio.sleep(0.1)  # both requests are on the wire, waiting for replies
            for task in tasks:
                task.cancel()
            for task in tasks:
                with pytest.raises(asyncio.CancelledError):
                    await task
            await in_thread(knobs.configure)
            # The cancelled requests' replies arrive later; no later call may read them.
            for i in (2, 3, 4, 5):
                assert await greenasync.run(coll.find_one, {"_id": i}) == {"_id": i, "v": i * 10}
        found = await asyncio.gather(*[greenasync.run(coll.find_one, {"_id": i})
                                       for i in range(10)])
        assert found == [{"_id": i, "v": i * 10} for i in range(10)]
        assert stats.checked_out == 0
        assert stats.max_open <= 2
        # pymongo closed the interrupted connections instead of pooling them.
        assert stats.closed >= 6, (stats.created, stats.closed)


async def test_wait_for_timeout_on_find_then_correct_data(knobs):
    async with mongo_client(knobs.uri, maxPoolSize=1) as client:
        coll = new_collection(client)
        await greenasync.run(coll.insert_many, [{"_id": i} for i in range(3)])
        await in_thread(lambda: knobs.configure(delay=0.5, delay_commands=["find"]))
        start = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(greenasync.run(coll.find_one, {"_id": 0}), 0.1)
        assert time.monotonic() - start < 0.4
        await in_thread(knobs.configure)
        # maxPoolSize=1: the next call would get the interrupted connection if it had been
        # checked in as if healthy.
        assert await greenasync.run(coll.find_one, {"_id": 2}) == {"_id": 2}


async def test_cancelled_cursor_iteration_leaves_no_server_cursor_after_close(knobs):
    async with mongo_client(knobs.uri, maxPoolSize=1) as client:
        coll = new_collection(client)
        await greenasync.run(coll.insert_many, [{"_id": i} for i in range(30)])
        base = (await in_thread(knobs.status))["openCursors"]
        cursor = coll.find(batch_size=5).sort("_id")
        first = [await greenasync.run(next, cursor) for _ in range(5)]
        assert first == [{"_id": i} for i in range(5)]
        assert (await in_thread(knobs.status))["openCursors"] == base + 1

        await in_thread(lambda: knobs.configure(delay=0.5, delay_commands=["getMore"]))
        task = asyncio.ensure_future(greenasync.run(next, cursor))  # a getMore, delayed
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await in_thread(knobs.configure)
        # maxPoolSize=1: this runs on the connection that replaced the interrupted one.
        assert await greenasync.run(coll.find_one, {"_id": 7}) == {"_id": 7}
        await greenasync.run(cursor.close)  # killCursors
        deadline = time.monotonic() + 3
        while (await in_thread(knobs.status))["openCursors"] != base:
            assert time.monotonic() < deadline, "the server cursor was never killed"
            await asyncio.sleep(0.05)
        assert await greenasync.run(coll.count_documents, {}) == 30


async def test_duplicate_key_error_passes_through_unchanged(server):
    async with mongo_client(server.uri) as client:
        coll = new_collection(client)
        await greenasync.run(coll.insert_one, {"_id": "dup"})
        with pytest.raises(DuplicateKeyError) as green_info:
            await greenasync.run(coll.insert_one, {"_id": "dup"})
        with pytest.raises(DuplicateKeyError) as sync_info:
            await in_thread(coll.insert_one, {"_id": "dup"})  # plain sync pymongo, a thread
        assert type(green_info.value) is DuplicateKeyError
        assert green_info.value.code == 11000
        assert str(green_info.value) == str(sync_info.value)
        assert green_info.value.details == sync_info.value.details
        # The traceback still reaches into pymongo's own code.
        frames = [tb.tb_frame.f_code.co_filename for tb in _walk(green_info.tb)]
        assert any("pymongo" in name for name in frames), frames
        assert await greenasync.run(coll.count_documents, {}) == 1


def _walk(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next
