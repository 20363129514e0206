"""greenasync.mongo (the ready-made Motor-style wrapper) over pymongo's real network code.

The server is ``mongodb_uri``: ``MONGODB_URI`` if set (a real mongod or cluster), else the
in-repo wire-protocol server (``greenasync.testing.mongo_server``) in a separate process, so
replies are not produced under this process's GIL. Tests that need the wire server's fault
knobs (a delayed command, ``open_cursors``) always use it (the ``wire`` fixture): a real server
has no such knobs. On a real *standalone* server, transactions and change streams are refused
by the server; those tests then check that the refusal passes through unchanged.

Each test uses collections of its own in the ``greenasync_test`` database and drops them.
A pymongo ``CommandListener`` records the commands each client sends: that is how "no I/O"
is checked, against any server.
"""

import asyncio
import os
import socket
import threading
import time
import uuid

import pymongo
import pytest
from bson import ObjectId
from gridfs.errors import NoFile
from pymongo import monitoring
from pymongo.errors import (
    DuplicateKeyError,
    InvalidOperation,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
)

import greenasync
import greenasync.mongo as gm
from greenasync.testing.mongo_server import start_process
from helpers import PoolStats, start_thread

DB = "greenasync_test"
# Longest loop stall tolerated. A wait that blocked the loop shows the whole wait: each test
# below makes that >= 0.5 s (pymongo's condition waits poll at 0.5 s). CPU starvation on a
# loaded 2-core machine alone was seen to reach 0.2 s.
STALL = 0.25


@pytest.fixture(scope="module", autouse=True)
def repatch():
    # Another module's teardown may have called greenasync.unpatch("pymongo") (patching is not
    # reference-counted); importing greenasync.mongo patched it once, make sure it still is.
    greenasync.patch("pymongo", "gridfs")


@pytest.fixture(scope="module")
def wire():
    """The in-repo wire-protocol server, in a child process (its knobs reset per test)."""
    with start_process() as server:
        yield server


@pytest.fixture(scope="module")
def mongodb_uri(wire):
    """MONGODB_URI if set, else the wire server's URI."""
    return os.environ.get("MONGODB_URI") or wire.uri


@pytest.fixture(scope="module")
def full_server(mongodb_uri, wire):
    """False on a real standalone mongod (no transactions, no change streams)."""
    if mongodb_uri == wire.uri:
        return True
    with pymongo.MongoClient(mongodb_uri, serverSelectionTimeoutMS=10_000) as sync:
        hello = sync.admin.command("hello")
    return "setName" in hello or hello.get("msg") == "isdbgrid"


class Commands(monitoring.CommandListener):
    """The commands a client sent (monitor heartbeats are not published)."""

    def __init__(self):
        self.events = []

    def started(self, event):
        self.events.append(event)

    def succeeded(self, event):
        pass

    def failed(self, event):
        pass

    def names(self):
        return [e.command_name for e in self.events]


@pytest.fixture
def commands():
    return Commands()


@pytest.fixture
def make_client(commands):
    """``make_client(uri, **options)``: a wrapped client, closed after the test."""
    clients = []

    def make(uri, **options):
        options = {"serverSelectionTimeoutMS": 10_000, "event_listeners": [commands], **options}
        clients.append(gm.MongoClient(uri, **options))
        return clients[-1]

    yield make
    for client in clients:
        client.delegate.close()  # after the test's loop: plain blocking pymongo


@pytest.fixture
def client(make_client, mongodb_uri):
    return make_client(mongodb_uri)


@pytest.fixture
def names(mongodb_uri, wire):
    """``names(n)``: n fresh collection names; those collections (and GridFS buckets of
    those names, on either server) are dropped afterwards, and the wire knobs reset."""
    made = []
    yield lambda n=1: made.extend(f"c_{uuid.uuid4().hex[:12]}" for _ in range(n)) or made[-n:]
    wire.configure()
    for uri in {mongodb_uri, wire.uri}:
        with pymongo.MongoClient(uri) as sync:
            for name in made:
                for suffix in ("", "_other", ".files", ".chunks"):
                    sync[DB].drop_collection(name + suffix)


@pytest.fixture
def coll(client, names):
    return client[DB][names()[0]]


def assert_loop_kept_ticking(t, elapsed, max_gap=STALL):
    # The ticker counts the gap still open at its exit too, so max_gap bounds every stall,
    # one that lasted the whole measurement included. (No tick-rate floor: on a loaded
    # 2-core machine a busy, unblocked loop ticks at 20-30 % of the nominal rate.)
    assert t.max_gap < max_gap, f"loop stalled {t.max_gap * 1000:.1f} ms in {elapsed:.3f} s"
    assert t.ticks > 0


async def in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


# --- navigation and CRUD -------------------------------------------------------------------


async def test_navigation_and_cursor_factories_do_no_io(client, commands, names):
    name = names()[0]
    db = client[DB]
    assert type(db) is gm.Database and db == client.get_database(DB) == getattr(client, DB)
    coll = db[name]
    assert type(coll) is gm.Collection and coll == getattr(db, name) == db.get_collection(name)
    assert type(coll.sub) is gm.Collection and coll.sub.name == f"{name}.sub"
    assert coll.database == db and db.client == client and type(db.client) is gm.MongoClient
    majority = coll.with_options(write_concern=pymongo.WriteConcern("majority"))
    assert type(majority) is gm.Collection and majority.write_concern.document == {"w": "majority"}
    cursor = coll.find({"x": 1}).sort("x").skip(1).limit(2).batch_size(5)
    assert type(cursor) is gm.Cursor and cursor.collection == coll
    assert type(coll.aggregate([])) is gm.CommandCursor
    assert type(coll.list_indexes()) is gm.CommandCursor
    assert type(db.aggregate([{"$currentOp": {}}])) is gm.CommandCursor
    assert type(coll.watch()) is gm.ChangeStream and type(client.watch()) is gm.ChangeStream
    assert commands.names() == []  # nothing above touched the network
    assert isinstance(client.delegate, pymongo.MongoClient)
    assert client.delegate is db.delegate.client
    with pytest.raises(TypeError, match="not callable"):
        coll.insert_onee({})  # a typo: pymongo's own hint, through the wrapper
    with pytest.raises(NotImplementedError):
        bool(coll)  # pymongo: compare with None instead


async def test_crud_and_cursor_iteration(coll, commands):
    result = await coll.insert_many([{"_id": i, "sq": i * i} for i in range(20)])
    assert result.inserted_ids == list(range(20))
    assert await coll.find_one({"_id": 3}) == {"_id": 3, "sq": 9}
    assert await coll.count_documents({"sq": {"$gt": 100}}) == 9
    assert await coll.estimated_document_count() == 20

    cursor = coll.find({}, {"sq": 0}).sort("_id", pymongo.DESCENDING).skip(2).limit(10)
    assert await cursor.to_list(3) == [{"_id": 17}, {"_id": 16}, {"_id": 15}]
    assert await cursor.next() == {"_id": 14}
    assert [doc["_id"] async for doc in cursor] == [13, 12, 11, 10, 9, 8]
    with pytest.raises(StopAsyncIteration):
        await cursor.next()
    assert await cursor.to_list() == [] and not cursor.alive

    assert await coll.find().sort("_id").batch_size(3).to_list() == \
        [{"_id": i, "sq": i * i} for i in range(20)]
    assert await coll.find().to_list(0) == []  # Motor's: zero documents, not an error
    with pytest.raises(ValueError):
        await coll.find().to_list(-1)
    async with coll.find().batch_size(2) as cursor:
        assert await cursor.next() == {"_id": 0, "sq": 0}
    assert commands.names()[-1] == "killCursors"  # __aexit__ closed it
    clone = cursor.clone()
    assert type(clone) is gm.Cursor and len(await clone.to_list()) == 20

    update = await coll.update_many({"_id": {"$lt": 5}}, {"$inc": {"sq": 1000}})
    assert (update.matched_count, update.modified_count) == (5, 5)
    doc = await coll.find_one_and_update({"_id": 1}, {"$set": {"x": True}},
                                         return_document=pymongo.ReturnDocument.AFTER)
    assert doc == {"_id": 1, "sq": 1001, "x": True}
    assert sorted(await coll.distinct("sq", {"_id": {"$lt": 3}})) == [1000, 1001, 1004]
    bulk = await coll.bulk_write([pymongo.InsertOne({"_id": 100}),
                                  pymongo.DeleteOne({"_id": 0}),
                                  pymongo.ReplaceOne({"_id": 2}, {"r": 1})])
    assert (bulk.inserted_count, bulk.deleted_count, bulk.modified_count) == (1, 1, 1)
    assert (await coll.delete_many({"_id": {"$gte": 10}})).deleted_count == 11
    assert await coll.count_documents({}) == 9


async def test_latent_command_cursors_run_their_command_at_the_first_await(coll, commands):
    await coll.insert_many([{"_id": i, "g": i % 3} for i in range(30)])
    commands.events.clear()
    pipeline = [{"$match": {"g": 1}}, {"$sort": {"_id": 1}}]
    cursor = coll.aggregate(pipeline).batch_size(4)  # chained before the command exists
    assert commands.names() == [] and cursor.alive and cursor.cursor_id is None
    assert await cursor.next() == {"_id": 1, "g": 1}
    (aggregate,) = commands.events
    assert aggregate.command_name == "aggregate"
    assert aggregate.command["cursor"] == {"batchSize": 4}  # the first batch too, as Motor
    assert [d["_id"] async for d in cursor] == list(range(4, 30, 3))
    assert commands.names() == ["aggregate", "getMore", "getMore"]

    unopened = coll.aggregate(pipeline)
    await unopened.close()  # closing a cursor never opened sends nothing, and it stays shut
    assert not unopened.alive and await unopened.to_list() == []
    assert commands.names() == ["aggregate", "getMore", "getMore"]

    await coll.create_index([("g", pymongo.ASCENDING)], name="by_g")
    names = [index["name"] async for index in coll.list_indexes()]
    assert sorted(names) == ["_id_", "by_g"]
    assert sorted(await coll.index_information()) == ["_id_", "by_g"]
    async with coll.aggregate([{"$group": {"_id": "$g", "n": {"$sum": 1}}}]) as grouped:
        assert sorted((d["_id"], d["n"]) for d in await grouped.to_list()) == \
            [(0, 10), (1, 10), (2, 10)]


async def test_database_level_calls(client, names):
    first, second = names(2)
    db = client[DB]
    created = await db.create_collection(first)
    assert type(created) is gm.Collection and created.name == first
    assert first in await db.list_collection_names()
    listed = await db.list_collections(filter={"name": first})
    assert type(listed) is gm.CommandCursor
    assert [c["name"] for c in await listed.to_list()] == [first]
    assert (await db.command("ping"))["ok"] == 1.0
    await db[second].insert_one({"_id": 1})
    await db.drop_collection(db[second])  # a wrapped argument reaches pymongo unwrapped
    assert second not in await db.list_collection_names()
    assert DB in await client.list_database_names()
    databases = await client.list_databases()
    assert type(databases) is gm.CommandCursor
    assert DB in [d["name"] async for d in databases]


async def test_pymongo_errors_pass_through_unchanged(coll):
    await coll.insert_one({"_id": "dup"})
    with pytest.raises(DuplicateKeyError) as green:
        await coll.insert_one({"_id": "dup"})
    with pytest.raises(DuplicateKeyError) as sync:
        await in_thread(coll.delegate.insert_one, {"_id": "dup"})  # plain pymongo, a thread
    assert type(green.value) is DuplicateKeyError and green.value.code == 11000
    assert str(green.value) == str(sync.value)
    with pytest.raises(OperationFailure) as info:
        await coll.database.command("noSuchCommand")
    assert type(info.value) is OperationFailure and info.value.code == 59


# --- sessions and transactions -------------------------------------------------------------


async def test_session_transactions_and_bind(client, coll, commands, full_server):
    async with await client.start_session() as session:
        assert type(session) is gm.ClientSession and session.client == client
        await coll.insert_one({"_id": "s"}, session=session)  # the wrapper is unwrapped
        assert commands.events[-1].command["lsid"] == session.session_id

        calls = []

        async def callback(s):
            calls.append(s)
            await coll.insert_one({"_id": len(calls)}, session=s)
            if len(calls) == 1:  # pymongo retries the whole transaction on this label
                raise OperationFailure("transient", 112,
                                       {"errorLabels": ["TransientTransactionError"]})
            return "committed"

        commands.events.clear()
        if not full_server:  # a standalone mongod refuses transactions: its error, unchanged
            with pytest.raises(OperationFailure) as info:
                await session.with_transaction(callback)
            assert info.value.code == 20, info.value  # IllegalOperation
            return
        assert await session.with_transaction(callback) == "committed"
        assert calls == [session, session] and all(type(s) is gm.ClientSession for s in calls)
        assert [n for n in commands.names() if n.endswith("Transaction")] == \
            ["abortTransaction", "commitTransaction"]
        assert await coll.find_one({"_id": 2}) == {"_id": 2}

        class Boom(Exception):
            pass

        async def failing(s):
            await coll.insert_one({"_id": "x"}, session=s)
            raise Boom

        with pytest.raises(Boom):  # the callback's own exception, after an abort
            await session.with_transaction(failing)
        assert commands.names()[-1] == "abortTransaction" and not session.in_transaction

        async with session.start_transaction():
            assert session.in_transaction
            await coll.insert_one({"_id": "t"}, session=session)
        assert commands.names()[-1] == "commitTransaction" and not session.in_transaction

    async with await client.start_session() as session:
        async with session.bind(end_session=False) as bound:
            assert bound is session
            await coll.insert_one({"_id": "bound"})  # no session= argument
        await coll.insert_one({"_id": "unbound"})
        lsids = [e.command.get("lsid") for e in commands.events[-2:]]
        assert lsids[0] == session.session_id != lsids[1]
    assert session.has_ended


# --- change streams ------------------------------------------------------------------------


async def test_change_stream_async_iteration_and_try_next(client, coll, commands, full_server,
                                                          ticker):
    # Each getMore waits up to 1 s for a change: one blocking the loop would show as a stall.
    stream = coll.watch(max_await_time_ms=1000)
    assert commands.names() == [] and stream.alive and stream.resume_token is None
    if not full_server:  # a standalone mongod refuses $changeStream: its error, unchanged
        with pytest.raises(OperationFailure) as info:
            async with stream:
                pass
        assert info.value.code == 40573, info.value
        return
    async with stream:
        assert commands.names() == ["aggregate"]  # opened at entry
        await coll.insert_one({"_id": 1})
        await coll.update_one({"_id": 1}, {"$set": {"x": 2}})
        first = await stream.next()
        assert (first["operationType"], first["documentKey"]) == ("insert", {"_id": 1})
        assert stream.resume_token == first["_id"]

        def write_later():  # a plain thread, through the same client's sync delegate
            time.sleep(0.6)
            coll.delegate.delete_one({"_id": 1})

        writer = start_thread(write_later)
        kinds = []
        async with ticker() as t:  # the awaitData getMores park; the loop keeps running
            started = time.monotonic()
            async for change in stream:
                kinds.append(change["operationType"])
                if change["operationType"] == "delete":
                    break
            elapsed = time.monotonic() - started
        await writer
        assert kinds == ["update", "delete"]
        assert_loop_kept_ticking(t, elapsed)
    assert not stream.alive  # __aexit__ closed it
    with pytest.raises(StopAsyncIteration):
        await stream.next()

    # Database- and client-level streams, filtered by a pipeline.
    other = coll.database[f"{coll.name}_other"]
    async with coll.database.watch([{"$match": {"operationType": "insert"}}],
                                   max_await_time_ms=100) as db_stream, \
            client.watch([{"$match": {"ns.coll": other.name}}],  # a shared real server
                         max_await_time_ms=100) as all_stream:
        assert await db_stream.try_next() is None  # nothing happened: one getMore, then None
        await other.insert_one({"_id": "o"})
        await coll.delete_many({})
        change = await db_stream.next()
        assert change["ns"] == {"db": DB, "coll": other.name}
        assert (await all_stream.next())["documentKey"] == {"_id": "o"}
    await other.drop()


async def test_cancelling_a_waiting_change_stream(coll, full_server):
    if not full_server:
        with pytest.raises(OperationFailure):
            await coll.watch().try_next()
        return
    async with coll.watch(max_await_time_ms=2000) as stream:
        task = asyncio.ensure_future(stream.next())
        await asyncio.sleep(0.2)  # parked in an awaitData getMore
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await coll.insert_one({"_id": "after"})  # the client is still usable
        assert await coll.find_one({"_id": "after"}) == {"_id": "after"}


# --- GridFS --------------------------------------------------------------------------------


async def test_gridfs_bucket_upload_download_find(client, names, commands):
    db = client[DB]
    bucket = gm.GridFSBucket(db, bucket_name=names()[0], chunk_size_bytes=1000)
    data = os.urandom(3500)
    file_id = await bucket.upload_from_stream("a.bin", data, metadata={"k": "v"})
    assert isinstance(file_id, ObjectId)

    grid_in = bucket.open_upload_stream("b.txt")  # a plain call, no I/O
    assert type(grid_in) is gm.GridIn and isinstance(grid_in._id, ObjectId)
    async with grid_in:
        await grid_in.write(b"line one\n")
        await grid_in.writelines([b"line two\n", b"end"])
    assert grid_in.closed and grid_in.length == 21

    grid_out = await bucket.open_download_stream(file_id)
    assert type(grid_out) is gm.GridOut and grid_out._id == file_id
    assert (grid_out.filename, grid_out.length, grid_out.metadata) == ("a.bin", 3500, {"k": "v"})
    assert await grid_out.read(10) == data[:10] and grid_out.tell() == 10
    grid_out.seek(0)
    chunks = [chunk async for chunk in grid_out]  # chunks, as Motor
    assert [len(c) for c in chunks] == [1000, 1000, 1000, 500] and b"".join(chunks) == data

    by_name = await bucket.open_download_stream_by_name("b.txt")
    assert await by_name.readline() == b"line one\n" and await by_name.read() == b"line two\nend"

    found = [f async for f in bucket.find({}).sort("filename")]
    assert [type(f) for f in found] == [gm.GridOut, gm.GridOut]
    assert [f.filename for f in found] == ["a.bin", "b.txt"]
    assert [f.filename for f in await bucket.find({"filename": "b.txt"}).to_list()] == ["b.txt"]

    class Handler:  # the part of tornado.web.RequestHandler stream_to_handler uses
        def __init__(self):
            self.body, self.flushes = [], 0

        def write(self, chunk):
            self.body.append(chunk)

        async def flush(self):
            self.flushes += 1

    handler = Handler()
    await (await bucket.open_download_stream(file_id)).stream_to_handler(handler)
    assert b"".join(handler.body) == data and handler.flushes == 4

    await bucket.rename(file_id, "c.bin")
    await bucket.delete(file_id)
    with pytest.raises(NoFile):  # gridfs' own error, unchanged
        await bucket.open_download_stream(file_id)


# --- the network path: pool, server selection, threads, timeouts, cancellation -------------


async def test_500_concurrent_find_one_with_a_small_pool(make_client, mongodb_uri, names,
                                                         ticker):
    # A naive adapter deadlocks here: the pool's maxConnecting condition waited on by the
    # loop thread while the greenlets that would notify it are parked on that same thread.
    stats = PoolStats()
    client = make_client(mongodb_uri, maxConnecting=2, maxPoolSize=10, event_listeners=[stats])
    coll = client[DB][names()[0]]
    await coll.insert_many([{"_id": i, "sq": i * i} for i in range(500)])
    calls = [asyncio.ensure_future(coll.find_one({"_id": i})) for i in range(500)]
    # One loop iteration starts all 500 (~0.1 ms of pymongo code each, then they park): that
    # burst is CPU work, as long as the machine is slow, not a wait. The ticker measures what
    # follows: 500 calls waiting on the pool's conditions for 10 connections.
    await asyncio.sleep(0)
    async with ticker() as t:
        started = time.monotonic()
        found = await asyncio.gather(*calls)
        elapsed = time.monotonic() - started
    assert found == [{"_id": i, "sq": i * i} for i in range(500)]
    assert stats.max_open <= 10 and stats.max_checked_out == 10, (stats.max_open, stats.max_checked_out)
    assert_loop_kept_ticking(t, elapsed)


async def test_dead_port_times_out_while_the_loop_ticks(make_client, ticker):
    with socket.socket() as dead:  # bound, never listening: refused for sure
        dead.bind(("127.0.0.1", 0))
        port = dead.getsockname()[1]
        client = make_client(f"mongodb://127.0.0.1:{port}/?directConnection=true",
                             serverSelectionTimeoutMS=600, connectTimeoutMS=200)
        async with ticker() as t:
            started = time.monotonic()
            with pytest.raises(ServerSelectionTimeoutError):
                await client[DB].c.find_one({})
            elapsed = time.monotonic() - started
    assert 0.55 <= elapsed < 3.0, elapsed
    assert_loop_kept_ticking(t, elapsed)


async def test_the_same_client_from_plain_threads_and_coroutines(client, coll, ticker):
    await coll.insert_many([{"_id": f"g{i}", "n": i} for i in range(50)])
    errors = []

    def thread_work(tid):  # client.delegate: the sync pymongo client, in a plain thread
        sync = coll.delegate
        for i in range(40):
            sync.insert_one({"_id": f"t{tid}-{i}"})
            if sync.find_one({"_id": f"t{tid}-{i}"}) != {"_id": f"t{tid}-{i}"}:
                errors.append((tid, i))

    threads = [threading.Thread(target=thread_work, args=(tid,)) for tid in range(3)]
    for thread in threads:
        thread.start()
    calls = [asyncio.ensure_future(coll.find_one({"_id": f"g{i % 50}"})) for i in range(300)]
    await asyncio.sleep(0)  # the start-up burst (see the 500-call test)
    async with ticker() as t:
        started = time.monotonic()
        found = await asyncio.gather(*calls)
        elapsed = time.monotonic() - started
    await in_thread(lambda: [thread.join(30) for thread in threads])
    assert found == [{"_id": f"g{i % 50}", "n": i % 50} for i in range(300)]
    assert errors == [] and await coll.count_documents({"_id": {"$regex": "^t"}}) == 120
    assert_loop_kept_ticking(t, elapsed)


async def test_pymongo_timeout_against_a_slow_server(make_client, wire, names):
    client = make_client(wire.uri)
    coll = client[DB][names()[0]]
    await coll.insert_one({"_id": 1})
    await in_thread(lambda: wire.configure(delay=0.6, delay_commands=["find"]))
    started = time.monotonic()
    with pytest.raises(NetworkTimeout) as info:
        with pymongo.timeout(0.2):  # a contextvar: copied into the step's greenlet
            await coll.find_one({"_id": 1})
    assert info.value.timeout, repr(info.value)  # pymongo's own timeout error
    assert time.monotonic() - started < 0.5
    await in_thread(wire.configure)
    assert await coll.find_one({"_id": 1}) == {"_id": 1}  # the client recovered


async def test_cancelling_a_cursor_iteration_keeps_the_client_clean(make_client, wire, names):
    client = make_client(wire.uri, maxPoolSize=1)  # the next call reuses the same pool slot
    coll = client[DB][names()[0]]
    await coll.insert_many([{"_id": i} for i in range(30)])
    base = (await in_thread(wire.status))["openCursors"]
    cursor = coll.find(batch_size=5).sort("_id")
    assert await cursor.to_list(5) == [{"_id": i} for i in range(5)]
    assert (await in_thread(wire.status))["openCursors"] == base + 1
    await in_thread(lambda: wire.configure(delay=0.5, delay_commands=["getMore"]))

    async def drain():
        return [doc async for doc in cursor]

    task = asyncio.ensure_future(drain())  # waits on the delayed getMore
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await in_thread(wire.configure)
    assert await coll.find_one({"_id": 7}) == {"_id": 7}  # correct data, not a stale reply
    await cursor.close()  # killCursors
    deadline = time.monotonic() + 3
    while (await in_thread(wire.status))["openCursors"] != base:
        assert time.monotonic() < deadline, "the server cursor was never killed"
        await asyncio.sleep(0.05)
    assert await coll.count_documents({}) == 30


async def test_client_close_is_a_coroutine_and_async_with_closes(mongodb_uri, commands):
    async with gm.MongoClient(mongodb_uri, event_listeners=[commands]) as client:
        assert type(client) is gm.MongoClient
        assert (await client[DB].command("ping"))["ok"] == 1.0
    assert commands.names()[-1] == "endSessions"  # close() ran, in a greenlet
    with pytest.raises(InvalidOperation):
        await client[DB].command("ping")
