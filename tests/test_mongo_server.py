"""The mongomock-backed wire-protocol server, driven by plain (sync) pymongo."""

import socket
import struct
import threading
import time
import uuid

import bson
import pymongo
import pytest
from pymongo import DeleteOne, InsertOne, MongoClient, ReplaceOne, ReturnDocument, UpdateOne
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DuplicateKeyError,
    NetworkTimeout,
    OperationFailure,
)

from greenasync.testing.mongo_server import MongoTestServer, send_command, start_process


def connect(uri, **kwargs):
    return MongoClient(uri, **{"directConnection": True, "serverSelectionTimeoutMS": 3000,
                               **kwargs})


@pytest.fixture(scope="module")
def server():
    with MongoTestServer() as server:
        yield server


@pytest.fixture
def client(server):
    client = connect(server.uri)
    yield client
    client.close()
    server.configure()  # reset the knobs a test may have set


@pytest.fixture
def coll(client):
    return client.db[f"c_{uuid.uuid4().hex[:8]}"]


def counts(server, name):
    return server.status()["commands"].get(name, 0)


def test_ping_and_handshake(server, client):
    assert client.admin.command("ping") == {"ok": 1.0}
    assert client.server_info()["versionArray"][0] == 7
    assert client.topology_description.topology_type_name == "Single"
    (description,) = client.topology_description.server_descriptions().values()
    assert description.server_type_name == "Standalone"
    assert description.max_wire_version == 21
    # After the first "ismaster" (helloOk: true), pymongo's monitor switches to "hello".
    before = counts(server, "hello")
    monitored = connect(server.uri, heartbeatFrequencyMS=500)
    try:
        monitored.admin.command("ping")
        time.sleep(0.7)
        assert counts(server, "hello") > before
        (description,) = monitored.topology_description.server_descriptions().values()
        assert description.server_type_name == "Standalone"
    finally:
        monitored.close()


def test_insert_one_and_many(coll):
    assert coll.insert_one({"_id": "a", "x": 1}).inserted_id == "a"
    result = coll.insert_many([{"x": i} for i in range(10)])
    assert len(result.inserted_ids) == 10
    assert coll.count_documents({}) == 11


def test_duplicate_id(coll):
    coll.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError) as info:
        coll.insert_one({"_id": 1})
    assert info.value.code == 11000
    with pytest.raises(BulkWriteError) as info:
        coll.insert_many([{"_id": 2}, {"_id": 1}, {"_id": 3}])  # ordered: stops at the error
    assert info.value.details["nInserted"] == 1
    assert info.value.details["writeErrors"][0]["code"] == 11000
    with pytest.raises(BulkWriteError):
        coll.insert_many([{"_id": 1}, {"_id": 4}], ordered=False)  # unordered: goes on
    assert sorted(d["_id"] for d in coll.find()) == [1, 2, 4]


def test_find_one(coll):
    coll.insert_many([{"_id": i, "sq": i * i} for i in range(5)])
    assert coll.find_one({"_id": 3}) == {"_id": 3, "sq": 9}
    assert coll.find_one({"sq": {"$gt": 100}}) is None


def test_find_batches_use_get_more(server, coll):
    coll.insert_many([{"_id": i} for i in range(300)])
    before = counts(server, "getMore")
    assert [d["_id"] for d in coll.find(batch_size=7)] == list(range(300))
    assert counts(server, "getMore") - before == 42  # 300 docs = 43 batches of <= 7
    assert server.open_cursors == 0


def test_sort_skip_limit_projection(server, coll):
    coll.insert_many([{"_id": i, "k": i % 3, "v": i} for i in range(20)])
    docs = list(coll.find({"k": 1}, {"_id": 0, "v": 1}).sort("v", -1).skip(2).limit(3))
    assert docs == [{"v": 13}, {"v": 10}, {"v": 7}]
    before = server.open_cursors
    assert len(list(coll.find().limit(-5))) == 5  # negative limit: one batch, no cursor left
    assert len(list(coll.find().limit(-5).batch_size(2))) == 2  # as mongod does
    assert server.open_cursors == before


def test_cursor_close_kills_server_cursor(server, coll):
    coll.insert_many([{"_id": i} for i in range(50)])
    before = server.open_cursors
    cursor = coll.find(batch_size=5)
    assert next(cursor) == {"_id": 0}
    assert server.open_cursors == before + 1
    cursor.close()
    assert server.open_cursors == before
    assert send_command(server.address, {"greenasyncStatus": 1})["openCursors"] == before


def test_updates(coll):
    coll.insert_many([{"_id": i, "n": 0} for i in range(5)])
    result = coll.update_one({"_id": 1}, {"$inc": {"n": 5}})
    assert (result.matched_count, result.modified_count) == (1, 1)
    assert coll.update_many({"_id": {"$gte": 3}}, {"$set": {"big": True}}).modified_count == 2
    result = coll.update_one({"_id": 99}, {"$set": {"n": 1}}, upsert=True)
    assert (result.matched_count, result.upserted_id) == (0, 99)
    assert coll.replace_one({"_id": 0}, {"whole": "new"}).modified_count == 1
    assert coll.find_one({"_id": 0}) == {"_id": 0, "whole": "new"}
    assert coll.count_documents({"big": True}) == 2 and coll.find_one({"_id": 1})["n"] == 5


def test_array_filters(coll):
    coll.insert_many([{"_id": 1, "g": [95, 102, 150]}, {"_id": 2, "g": [100, 90]},
                      {"_id": 3, "items": [{"q": 1, "p": 5}, {"q": 7, "p": 5}]}])
    result = coll.update_many({"g": {"$exists": True}}, {"$set": {"g.$[e]": 100}},
                              array_filters=[{"e": {"$gte": 100}}])
    assert (result.matched_count, result.modified_count) == (2, 1)
    assert [d["g"] for d in coll.find({"g": {"$exists": True}})] == [[95, 100, 100], [100, 90]]
    coll.update_one({"_id": 3}, {"$inc": {"items.$[big].p": 10}},
                    array_filters=[{"big.q": {"$gt": 5}}])
    assert coll.find_one({"_id": 3})["items"] == [{"q": 1, "p": 5}, {"q": 7, "p": 15}]
    after = coll.find_one_and_update({"_id": 2}, {"$set": {"g.$[x]": 0}},
                                     array_filters=[{"x": 90}],
                                     return_document=ReturnDocument.AFTER)
    assert after == {"_id": 2, "g": [100, 0]}


def test_find_one_and_modify(coll):
    coll.insert_many([{"_id": 1, "n": 1}, {"_id": 2, "n": 2}])
    after = coll.find_one_and_update({"_id": 1}, {"$inc": {"n": 10}},
                                     return_document=ReturnDocument.AFTER)
    assert after == {"_id": 1, "n": 11}
    assert coll.find_one_and_update({"_id": 1}, {"$set": {"n": 0}}) == {"_id": 1, "n": 11}
    assert coll.find_one_and_replace({"_id": 2}, {"r": 1}, projection={"_id": 0}) == {"n": 2}
    assert coll.find_one_and_update({"_id": 3}, {"$set": {"n": 3}}, upsert=True,
                                    return_document=ReturnDocument.AFTER) == {"_id": 3, "n": 3}
    assert coll.find_one_and_delete({}, sort=[("_id", -1)]) == {"_id": 3, "n": 3}
    assert coll.count_documents({}) == 2


def test_deletes(coll):
    coll.insert_many([{"_id": i, "even": i % 2 == 0} for i in range(10)])
    assert coll.delete_one({"even": True}).deleted_count == 1
    assert coll.delete_many({"even": False}).deleted_count == 5
    assert coll.delete_many({"nothing": 1}).deleted_count == 0
    assert coll.count_documents({}) == 4


def test_counts_and_distinct(coll):
    coll.insert_many([{"c": i % 4} for i in range(40)])
    assert coll.count_documents({"c": 0}) == 10
    assert coll.count_documents({}, skip=5, limit=10) == 10
    assert coll.estimated_document_count() == 40
    assert sorted(coll.distinct("c")) == [0, 1, 2, 3]
    assert coll.distinct("c", {"c": {"$gt": 1}}) == [2, 3]


def test_aggregate_with_batch_size(server, coll):
    coll.insert_many([{"g": i % 3, "v": i} for i in range(30)])
    before = counts(server, "getMore")
    docs = list(coll.aggregate([{"$match": {"v": {"$lt": 30}}}, {"$sort": {"v": 1}}],
                               batchSize=4))
    assert [d["v"] for d in docs] == list(range(30))
    assert counts(server, "getMore") - before == 7
    groups = coll.aggregate([{"$group": {"_id": "$g", "total": {"$sum": "$v"}}},
                             {"$sort": {"_id": 1}}])
    assert [(d["_id"], d["total"]) for d in groups] == [(0, 135), (1, 145), (2, 155)]


def test_indexes(coll):
    assert coll.create_index([("email", 1)], unique=True) == "email_1"
    info = coll.index_information()
    assert set(info) == {"_id_", "email_1"} and info["email_1"]["unique"] is True
    coll.insert_one({"email": "a@b"})
    with pytest.raises(DuplicateKeyError):
        coll.insert_one({"email": "a@b"})
    assert coll.database["missing"].index_information() == {}  # listIndexes: code 26


def test_list_names(client, coll):
    coll.insert_one({})
    other = client[f"db_{uuid.uuid4().hex[:8]}"]
    other.create_collection("made")
    assert coll.name in client.db.list_collection_names()
    assert other.list_collection_names() == ["made"]
    assert other.list_collection_names(filter={"name": {"$regex": "^m"}}) == ["made"]
    assert [c["name"] for c in other.list_collections()] == ["made"]
    assert {"db", other.name} <= set(client.list_database_names())
    with pytest.raises(OperationFailure) as info:
        other.command("create", "made")  # create_collection() would check client-side
    assert info.value.code == 48
    client.drop_database(other.name)
    assert other.name not in client.list_database_names()


def test_drop_twice(coll):
    coll.insert_one({})
    coll.drop()
    coll.drop()  # NamespaceNotFound (26), which pymongo ignores
    assert coll.name not in coll.database.list_collection_names()
    with pytest.raises(OperationFailure) as info:
        coll.database.command("drop", coll.name)
    assert info.value.code == 26


def test_bulk_write(coll):
    result = coll.bulk_write([InsertOne({"_id": 1}), InsertOne({"_id": 2}),
                              UpdateOne({"_id": 1}, {"$set": {"a": 1}}), DeleteOne({"_id": 2}),
                              ReplaceOne({"_id": 3}, {"b": 1}, upsert=True)])
    assert (result.inserted_count, result.modified_count, result.deleted_count) == (2, 1, 1)
    assert result.upserted_ids == {4: 3}
    assert list(coll.find()) == [{"_id": 1, "a": 1}, {"_id": 3, "b": 1}]


def test_unacknowledged_insert(coll):
    result = coll.with_options(write_concern=pymongo.WriteConcern(w=0)).insert_one({"_id": 7})
    assert result.acknowledged is False
    assert coll.find_one({"_id": 7}) == {"_id": 7}  # same connection, so it ran first


def test_explicit_session(client, coll):
    coll.insert_one({"_id": 1})
    with client.start_session() as session:
        assert coll.find_one({"_id": 1}, session=session) == {"_id": 1}
        assert session.session_id["id"].subtype == 4


def test_transaction_commands_are_accepted_without_isolation(client, coll):
    with client.start_session() as session:
        assert session.with_transaction(
            lambda s: coll.insert_one({"_id": 1}, session=s).inserted_id) == 1
        session.start_transaction()
        coll.insert_one({"_id": 2}, session=session)
        session.abort_transaction()
    assert coll.count_documents({}) == 2  # documented: no rollback


def test_change_streams(server, client, coll):
    other = coll.database[f"{coll.name}_other"]
    with coll.watch(max_await_time_ms=50) as stream:
        assert stream.try_next() is None and server.open_cursors >= 1
        coll.insert_one({"_id": 1, "a": 1})
        coll.update_one({"_id": 1}, {"$set": {"b": 2}, "$unset": {"a": ""}})
        coll.replace_one({"_id": 1}, {"c": 3})
        other.insert_one({"_id": "elsewhere"})
        coll.delete_many({})
        changes = [stream.next() for _ in range(4)]
        assert stream.try_next() is None  # the other collection's insert is not ours
        token = stream.resume_token
    assert [(c["operationType"], c["documentKey"]) for c in changes] == \
        [("insert", {"_id": 1}), ("update", {"_id": 1}), ("replace", {"_id": 1}),
         ("delete", {"_id": 1})]
    assert changes[0]["fullDocument"] == {"_id": 1, "a": 1}
    assert changes[1]["updateDescription"]["updatedFields"] == {"b": 2}
    assert changes[1]["updateDescription"]["removedFields"] == ["a"]
    assert "fullDocument" not in changes[1] and changes[2]["fullDocument"] == {"_id": 1, "c": 3}
    assert token == changes[3]["_id"]

    # A getMore waits (up to maxTimeMS) for the next event, without holding up writers.
    with client.watch([{"$match": {"operationType": "insert"}}], full_document="updateLookup",
                      max_await_time_ms=2000) as stream:
        stream.try_next()
        timer = threading.Timer(0.2, lambda: other.insert_one({"_id": "late"}))
        started = time.monotonic()
        timer.start()
        change = stream.next()
        assert 0.15 < time.monotonic() - started < 1.5
        assert change["documentKey"] == {"_id": "late"}
        assert change["ns"] == {"db": coll.database.name, "coll": other.name}
    with coll.watch(resume_after=changes[1]["_id"], max_await_time_ms=50) as resumed:
        assert [resumed.next()["operationType"] for _ in range(2)] == ["replace", "delete"]
    with pytest.raises(OperationFailure) as info:
        coll.watch([{"$project": {"x": 1}}])
    assert info.value.code == 238
    other.drop()


def test_unknown_command(client):
    with pytest.raises(OperationFailure) as info:
        client.db.command("noSuchCommand")
    assert info.value.code == 59 and info.value.details["codeName"] == "CommandNotFound"


def test_delay_knob_times_out(server, client, coll):
    coll.insert_one({"_id": 1})
    server.configure(delay=1.0, delay_commands=["find"])
    start = time.monotonic()
    with pytest.raises(NetworkTimeout) as info, pymongo.timeout(0.2):
        coll.find_one()  # pymongo 4.20 raises NetworkTimeout (an AutoReconnect), .timeout True
    assert info.value.timeout is True and time.monotonic() - start < 0.8
    assert coll.count_documents({}) == 1  # aggregate is not delayed
    send_command(server.address, {"greenasyncConfigure": 1})  # the admin command resets
    with pymongo.timeout(0.2):
        assert coll.find_one() == {"_id": 1}


def test_sleep_does_not_block_other_connections(server, client):
    other = connect(server.uri)
    try:
        other.admin.command("ping")
        sleeper = threading.Thread(target=client.admin.command, args=("greenasyncSleep", 0.8))
        start = time.monotonic()
        sleeper.start()
        time.sleep(0.05)
        assert other.admin.command("ping")["ok"] == 1.0
        assert time.monotonic() - start < 0.6
        sleeper.join()
        assert time.monotonic() - start >= 0.8
    finally:
        other.close()


def test_close_knob(server, client, coll):
    server.configure(close_commands=["find"])
    with pytest.raises(AutoReconnect):
        coll.find_one()
    server.configure()
    assert coll.find_one() is None


def _raw_message(body_sections, flags=0, request_id=5, opcode=2013):
    payload = struct.pack("<I", flags) + body_sections
    if flags & 1:
        payload += b"\0\0\0\0"  # checksum (not verified by the server)
    return struct.pack("<iiii", 16 + len(payload), request_id, 0, opcode) + payload


def _raw_reply(sock):
    header = sock.recv(16, socket.MSG_WAITALL)
    length, _, response_to, _ = struct.unpack("<iiii", header)
    body = sock.recv(length - 16, socket.MSG_WAITALL)
    return response_to, bson.decode(body[5:])


def test_raw_op_msg_sections_checksum_and_more_to_come(server, client):
    name = f"raw_{uuid.uuid4().hex[:8]}"
    docs = b"".join(bson.encode({"_id": i}) for i in range(3))
    sequence = b"documents\0" + docs
    with socket.create_connection(server.address) as sock:
        body = bson.encode({"insert": name, "$db": "db"})
        sock.sendall(_raw_message(b"\0" + body + b"\1" + struct.pack("<i", 4 + len(sequence))
                                  + sequence, flags=1, request_id=11))
        assert _raw_reply(sock) == (11, {"n": 3, "ok": 1.0})
        w0 = bson.encode({"delete": name, "deletes": [{"q": {"_id": 0}, "limit": 1}],
                          "$db": "db"})
        sock.sendall(_raw_message(b"\0" + w0, flags=2, request_id=12))  # moreToCome
        sock.sendall(_raw_message(b"\0" + bson.encode({"ping": 1, "$db": "admin"}),
                                  request_id=13))
        assert _raw_reply(sock) == (13, {"ok": 1.0})  # nothing was sent for request 12
    assert client.db[name].count_documents({}) == 2


def test_other_opcodes_close_the_connection(server, caplog):
    with socket.create_connection(server.address, timeout=5) as sock:
        query = b"admin.$cmd\0" + struct.pack("<ii", 0, -1) + bson.encode({"ismaster": 1})
        sock.sendall(_raw_message(query, opcode=2004))  # OP_QUERY
        assert sock.recv(16) == b""
    assert "unsupported opcode 2004" in caplog.text


def test_stop_closes_connections_and_threads():
    server = MongoTestServer().start()
    client = connect(server.uri, serverSelectionTimeoutMS=500)
    try:
        client.db.c.insert_one({})
        assert server.status()["connections"] >= 1
        assert f"greenasync-mongo-{server.port}-conn-1" in [t.name for t in threading.enumerate()]
        server.stop()
        names = [t.name for t in threading.enumerate()]
        assert not [n for n in names if n.startswith(f"greenasync-mongo-{server.port}")]
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(server.address, timeout=1).close()
    finally:
        client.close()


def test_separate_process_with_50_threads():
    with start_process(delay=0.05, delay_commands=["find"]) as server:
        client = connect(server.uri, maxPoolSize=100)
        try:
            client.db.c.insert_many([{"_id": i} for i in range(50)])
            results = {}

            def work(i):
                results[i] = [client.db.c.find_one({"_id": i}) for _ in range(3)]

            threads = [threading.Thread(target=work, args=(i,)) for i in range(50)]
            start = time.monotonic()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - start
            assert results == {i: [{"_id": i}] * 3 for i in range(50)}
            assert elapsed < 3.0  # 150 finds serialized behind the 50 ms delay would take 7.5 s
            status = server.status()
            assert status["commands"]["find"] == 150 and status["totalConnections"] > 10
            server.configure(close_commands=["ping"])
            assert server.status()["config"] == {"delay": 0.0, "commands": None,
                                                 "close": ["ping"]}
            with pytest.raises(AutoReconnect):
                client.admin.command("ping")
        finally:
            client.close()
        process = server.process
    assert process.returncode == 0  # exited on stdin EOF, not killed
