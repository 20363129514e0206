"""Threads and coroutines on one client at once, for a while: no lost or mixed replies, no
deadlock.

One ``greenasync.redis.Redis`` over a ``BlockingConnectionPool`` of 20 connections against
the real Redis, and one ``greenasync.mongo.MongoClient`` (``maxPoolSize=10``,
``heartbeatFrequencyMS=500``: pymongo's monitor threads keep checking the server) against the
MongoDB wire server in a separate process. Plain threads use the sync delegates
(``client.delegate``) while coroutines use the wrappers, so both kinds queue on the same
hybrid pool queue/conditions:

* redis: threads SET/GET unique values and LPUSH work items; coroutines SET/GET, run
  pipelines, and BLPOP the work items (each item must be consumed exactly once);
* mongo: threads and coroutines insert and read back their own documents, and both ``$inc``
  one shared counter (the final count must equal the increments made).

``test_mixed_use_short`` runs ~5 s on every test run. ``test_mixed_use_soak`` is the same for
60 s (``@pytest.mark.slow``): it runs only with ``GREENASYNC_SOAK=1`` and is reported as
skipped otherwise (see tests/reliability/README.md).
"""

import asyncio
import itertools
import os
import threading
import time
import uuid

import pytest

import greenasync
import greenasync.mongo as gm
import greenasync.redis as gr
from greenasync.testing.mongo_server import start_process

REDIS_THREADS, REDIS_COROUTINES = 4, 40
MONGO_THREADS, MONGO_COROUTINES = 3, 30
SOAK = os.environ.get("GREENASYNC_SOAK", "") not in ("", "0")


@pytest.fixture(scope="module")
def mongo_server():
    with start_process() as server:
        yield server


@pytest.fixture(scope="module", autouse=True)
def patched():
    # Another module's teardown may have unpatched these (patching is not reference-counted).
    greenasync.patch("redis")
    greenasync.patch("pymongo", "gridfs")
    yield


async def mixed(redis_url, mongo_uri, seconds, ticker_cls):
    run_id = uuid.uuid4().hex
    prefix = f"greenasync-mixed:{run_id}:"
    pool = gr.BlockingConnectionPool.from_url(redis_url, max_connections=20, timeout=20)
    r = gr.Redis(connection_pool=pool)
    mongo = gm.MongoClient(mongo_uri, maxPoolSize=10, heartbeatFrequencyMS=500,
                           serverSelectionTimeoutMS=10_000)
    coll = mongo.db[f"mixed_{run_id[:12]}"]
    await coll.insert_one({"_id": "counter", "n": 0})
    stop = threading.Event()
    errors = []  # wrong replies and unexpected exceptions, from both sides
    counts = dict(redis_thread=0, redis_green=0, mongo_thread=0, mongo_green=0, incs=0,
                  produced=0)
    consumed = []
    lock = threading.Lock()  # the test's own bookkeeping between threads

    def bump(name, n=1):
        with lock:
            counts[name] += n

    # -- threads: the sync delegates --------------------------------------------------------
    def redis_thread(tid):
        sync = r.delegate
        try:
            for i in itertools.count():
                if stop.is_set():
                    break
                key = f"{prefix}t{tid}:{i}"
                sync.set(key, key)
                if sync.get(key) != key.encode():
                    errors.append(("redis thread get", key))
                sync.lpush(f"{prefix}work", f"{tid}:{i}")
                bump("produced")
                bump("redis_thread", 3)
        except Exception as exc:  # reported through `errors`
            errors.append(("redis thread", repr(exc)))

    def mongo_thread(tid):
        sync = coll.delegate
        try:
            for i in itertools.count():
                if stop.is_set():
                    break
                doc = {"_id": f"t{tid}:{i}", "tid": tid, "i": i}
                sync.insert_one(dict(doc))
                if sync.find_one({"_id": doc["_id"]}) != doc:
                    errors.append(("mongo thread find", doc["_id"]))
                sync.update_one({"_id": "counter"}, {"$inc": {"n": 1}})
                bump("incs")
                bump("mongo_thread", 3)
        except Exception as exc:  # reported through `errors`
            errors.append(("mongo thread", repr(exc)))

    # -- coroutines: the wrappers -------------------------------------------------------------
    async def redis_green(cid):
        for i in itertools.count():
            if stop.is_set():
                break
            key = f"{prefix}g{cid}:{i}"
            if i % 3 == 0:
                p = r.pipeline()
                p.set(key, i).incr(key).get(key)
                if await p.execute() != [True, i + 1, str(i + 1).encode()]:
                    errors.append(("redis pipeline", key))
            else:
                await r.set(key, key)
                if await r.get(key) != key.encode():
                    errors.append(("redis green get", key))
            counts["redis_green"] += 2

    async def consumer():
        while True:
            item = await r.blpop(f"{prefix}work", timeout=0.2)
            counts["redis_green"] += 1
            if item is not None:
                consumed.append(item[1].decode())
            elif stop.is_set():
                break

    async def mongo_green(cid):
        for i in itertools.count():
            if stop.is_set():
                break
            doc = {"_id": f"g{cid}:{i}", "cid": cid, "i": i}
            await coll.insert_one(dict(doc))
            if await coll.find_one({"_id": doc["_id"]}) != doc:
                errors.append(("mongo green find", doc["_id"]))
            await coll.update_one({"_id": "counter"}, {"$inc": {"n": 1}})
            counts["incs"] += 1
            counts["mongo_green"] += 3

    threads = [threading.Thread(target=redis_thread, args=(t,), daemon=True)
               for t in range(REDIS_THREADS)]
    threads += [threading.Thread(target=mongo_thread, args=(t,), daemon=True)
                for t in range(MONGO_THREADS)]
    loop = asyncio.get_running_loop()
    start = time.monotonic()
    async with ticker_cls() as t:
        for thread in threads:
            thread.start()
        tasks = [asyncio.ensure_future(redis_green(c)) for c in range(REDIS_COROUTINES)]
        tasks += [asyncio.ensure_future(consumer()) for _ in range(5)]
        tasks += [asyncio.ensure_future(mongo_green(c)) for c in range(MONGO_COROUTINES)]
        await asyncio.sleep(seconds)
        stop.set()
        # A deadlock shows up here: threads that never finish or tasks that never end.
        # (mongomock scans a collection to find a document: late in a long run each step
        # takes a while, hence the generous bound.)
        bound = max(20, seconds / 2)
        joined = await loop.run_in_executor(
            None, lambda: [thread.join(bound) or not thread.is_alive() for thread in threads])
        done, pending = await asyncio.wait(tasks, timeout=bound)
    elapsed = time.monotonic() - start
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            errors.append(("task", repr(task.exception())))
    leftover = await r.lrange(f"{prefix}work", 0, -1)
    counter = (await coll.find_one({"_id": "counter"}))["n"]
    stats = greenasync.statistics()
    report = dict(
        seconds=round(elapsed, 1), counts=counts, consumed=len(consumed),
        leftover=len(leftover), duplicates=len(consumed) - len(set(consumed)),
        counter=counter, errors=errors[:5], n_errors=len(errors),
        threads_finished=sum(joined), threads=len(threads), pending_tasks=len(pending),
        max_loop_gap=round(t.max_gap, 3), busy_workers=stats.busy_workers,
        parked=sum(stats.parked.values()))
    # Clean up the keys and the collection.
    keys = [k async for k in r.scan_iter(f"{prefix}*", count=1000)]
    for i in range(0, len(keys), 1000):
        await r.delete(*keys[i:i + 1000])
    await coll.drop()
    await mongo.close()
    r.delegate.close()
    pool.delegate.disconnect()
    return report


def check(report, seconds):
    figures = str(report)
    assert report["n_errors"] == 0, figures
    assert report["threads_finished"] == report["threads"] and report["pending_tasks"] == 0, \
        f"deadlock? {figures}"
    counts = report["counts"]
    # Every work item the threads produced was consumed once (or is still in the list).
    assert report["duplicates"] == 0, figures
    assert report["consumed"] + report["leftover"] == counts["produced"], figures
    assert report["counter"] == counts["incs"], f"lost $inc updates: {figures}"
    # Both kinds of callers made real progress on both clients.
    for name in ("redis_thread", "redis_green", "mongo_thread", "mongo_green"):
        assert counts[name] >= 30 * seconds / 5, figures
    assert report["busy_workers"] == 0 and report["parked"] == 0, figures
    # 7 busy threads share the GIL with the loop: generous, but a blocked loop stalls for
    # whole seconds.
    assert report["max_loop_gap"] < 0.5, figures


def test_mixed_use_short(redis_url, mongo_server, ticker):
    from conftest import run_on

    report = run_on("asyncio", mixed, redis_url, mongo_server.uri, 5, ticker)
    check(report, 5)
    print(f"\n{report}")


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not SOAK, reason="60 s soak: run with GREENASYNC_SOAK=1 "
                    "(see tests/reliability/README.md)")
@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_mixed_use_soak(kind, redis_url, mongo_server, ticker):
    from conftest import run_on

    report = run_on(kind, mixed, redis_url, mongo_server.uri, 60, ticker)
    check(report, 60)
    print(f"\n{kind}: {report}")
