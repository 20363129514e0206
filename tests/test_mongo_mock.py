"""greenasync.mongo over mongomock: the same wrapper classes and awaitable API, no network.

This is the path for users' unit tests: ``MongoClient.from_sync(mongomock.MongoClient())``.
mongomock's objects are other classes than pymongo's; ``compatible=`` in each ``wrap()`` makes
the wrappers hold them and wrap their results (tests/test_wrap.py tests that feature on plain
classes).
"""

import subprocess
import sys

import mongomock
import pymongo
import pytest
from pymongo.errors import DuplicateKeyError, OperationFailure

import greenasync
import greenasync.mongo as gm


@pytest.fixture
def client():
    return gm.MongoClient.from_sync(mongomock.MongoClient())


def test_the_same_classes_wrap_mongomock_objects(client):
    assert type(client) is gm.MongoClient and isinstance(client.delegate, mongomock.MongoClient)
    db = client.shop
    assert type(db) is gm.Database and isinstance(db.delegate, mongomock.database.Database)
    assert db == client["shop"] == client.get_database("shop") and db.client == client
    coll = db.orders
    assert type(coll) is gm.Collection and coll == db["orders"] == db.get_collection("orders")
    assert coll.database == db and type(coll.with_options()) is gm.Collection
    assert type(coll.find().sort("x").limit(2)) is gm.Cursor
    assert type(coll.aggregate([])) is gm.CommandCursor
    assert bool(coll) and bool(db)  # mongomock's objects are truthy (pymongo's refuse)
    with pytest.raises(TypeError, match=r"expects a pymongo\..*MongoClient or "
                                        r"mongomock\..*MongoClient instance, got builtins"):
        gm.MongoClient.from_sync(object())


async def test_crud_cursors_and_aggregation(client):
    coll = client.shop.orders
    await coll.insert_many([{"_id": i, "qty": i % 4} for i in range(12)])
    assert await coll.find_one({"_id": 5}) == {"_id": 5, "qty": 1}
    assert await coll.count_documents({"qty": 0}) == 3
    cursor = coll.find({"qty": {"$gt": 1}}).sort("_id", pymongo.DESCENDING).skip(1).limit(4)
    assert await cursor.to_list(2) == [{"_id": 10, "qty": 2}, {"_id": 7, "qty": 3}]
    assert await cursor.next() == {"_id": 6, "qty": 2}
    assert [d async for d in cursor] == [{"_id": 3, "qty": 3}]
    with pytest.raises(StopAsyncIteration):
        await cursor.next()
    await coll.update_one({"_id": 0}, {"$set": {"qty": 9}})
    assert sorted(await coll.distinct("qty")) == [0, 1, 2, 3, 9]
    pipeline = [{"$group": {"_id": "$qty", "n": {"$sum": 1}}}, {"$sort": {"_id": 1}}]
    assert await coll.aggregate(pipeline).to_list() == \
        [{"_id": 0, "n": 2}, {"_id": 1, "n": 3}, {"_id": 2, "n": 3}, {"_id": 3, "n": 3},
         {"_id": 9, "n": 1}]
    await coll.create_index("qty", name="by_qty")
    assert sorted([index["name"] async for index in coll.list_indexes()]) == ["_id_", "by_qty"]
    assert (await coll.delete_many({"qty": {"$lt": 2}})).deleted_count == 5
    assert await client.list_database_names() == ["shop"]
    assert await client.shop.list_collection_names() == ["orders"]


async def test_errors_pass_through_unchanged(client):
    coll = client.shop.orders
    await coll.insert_one({"_id": 1})
    with pytest.raises(DuplicateKeyError):  # mongomock raises pymongo's classes
        await coll.insert_one({"_id": 1})
    with pytest.raises(OperationFailure):
        await coll.update_one({"_id": 1}, {"$inc": {"_id": 1}})  # _id is immutable
    # What mongomock lacks fails as it does for sync callers.
    with pytest.raises(NotImplementedError, match="sessions"):
        await client.start_session()
    with pytest.raises(TypeError, match="watch"):  # mongomock: coll.watch is a sub-collection
        async with coll.watch():
            pass


def test_greenasync_mongo_imports_without_mongomock():
    # mongomock is optional (the mongo extra installs it): without it the wrappers hold
    # pymongo's objects only.
    code = ("import sys; sys.modules['mongomock'] = None\n"
            "import pymongo, greenasync.mongo as gm\n"
            "assert gm.mongomock is None\n"
            "assert gm.Collection.__greenasync_types__ == (pymongo.collection.Collection,)\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                          text=True, timeout=30)
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr
