"""A Tornado notes service on MongoDB through greenasync.mongo (pymongo, made awaitable).

    POST /notes {"author": "ann", "text": "..."}   -> 201 {"id": "..."}
    GET  /notes?author=ann&limit=10                -> the newest notes of ann
    GET  /stats                                    -> notes per author (an aggregation)
    POST /users {"name": "ann"}                    -> 201, or 409 if the name is taken
    PUT  /files/<name> (raw body), GET /files/<name>  -> stored in and streamed from GridFS

Every database call is pymongo's unchanged sync code running in a worker greenlet on the
loop thread (greenasync.mongo: Motor's API over current pymongo). No threads, no Motor.

    python examples/tornado_mongo.py               # serve on 127.0.0.1:8889 until Ctrl-C
    python examples/tornado_mongo.py --selftest    # fire requests at itself, check, exit 0/1

MONGODB_URI (default mongodb://127.0.0.1:27017) names the server. With --selftest and no
MONGODB_URI set, the in-repo wire-protocol test server (mongomock behind real sockets) is
started in a child process instead, and the run uses (then drops) a database of its own.
"""

import argparse
import asyncio
import json
import logging
import os
import time
import uuid

import gridfs
import pymongo
import tornado.httpserver
import tornado.netutil
import tornado.web
from pymongo.errors import DuplicateKeyError
from tornado.httpclient import AsyncHTTPClient

from greenasync.mongo import GridFSBucket, MongoClient

log = logging.getLogger("tornado_mongo")


class Notes(tornado.web.RequestHandler):
    async def post(self):
        try:
            note = json.loads(self.request.body)
            doc = {"author": str(note["author"]), "text": str(note["text"]), "at": time.time()}
        except (ValueError, KeyError, TypeError):
            raise tornado.web.HTTPError(400, 'expected {"author": ..., "text": ...}') from None
        result = await self.application.db.notes.insert_one(doc)
        self.set_status(201)
        self.write({"id": str(result.inserted_id)})

    async def get(self):
        query = {"author": self.get_argument("author")} if self.get_argument("author", "") else {}
        limit = int(self.get_argument("limit", "20"))
        # find() and the chained calls do no I/O; to_list() fetches, in one greenlet step.
        cursor = self.application.db.notes.find(query, {"_id": 0}).sort("at", -1).limit(limit)
        self.write({"notes": await cursor.to_list()})


class Stats(tornado.web.RequestHandler):
    async def get(self):
        pipeline = [{"$group": {"_id": "$author", "notes": {"$sum": 1}}}, {"$sort": {"_id": 1}}]
        # aggregate() returns a cursor at once; the command runs at the first await.
        cursor = self.application.db.notes.aggregate(pipeline)
        self.write({doc["_id"]: doc["notes"] async for doc in cursor})


class Users(tornado.web.RequestHandler):
    async def post(self):
        name = str(json.loads(self.request.body)["name"])
        try:
            await self.application.db.users.insert_one({"_id": name})
        except DuplicateKeyError:  # pymongo's own error, unchanged
            raise tornado.web.HTTPError(409, f"user {name!r} exists") from None
        self.set_status(201)
        self.write({"name": name})


class Files(tornado.web.RequestHandler):
    async def put(self, name):
        file_id = await self.application.files.upload_from_stream(name, self.request.body)
        self.set_status(201)
        self.write({"id": str(file_id)})

    async def get(self, name):
        try:
            grid_out = await self.application.files.open_download_stream_by_name(name)
        except gridfs.NoFile:
            raise tornado.web.HTTPError(404) from None
        self.set_header("Content-Type", "application/octet-stream")
        self.set_header("Content-Length", grid_out.length)
        await grid_out.stream_to_handler(self)  # one chunk at a time, flushed


async def selftest(base, n):
    """n concurrent notes, then reads, stats, a conflict and a file: True if all is right."""
    http = AsyncHTTPClient(force_instance=True, max_clients=n)
    requests = 0

    async def call(method, path, body=None):
        nonlocal requests
        requests += 1
        response = await http.fetch(base + path, method=method, raise_error=False,
                                    body=None if body is None else
                                    body if isinstance(body, bytes) else json.dumps(body))
        return response.code, response.body

    start = time.monotonic()
    authors = ["ann", "bob", "cy"]
    created = await asyncio.gather(*(call("POST", "/notes", {"author": authors[i % 3],
                                                             "text": f"note {i}"})
                                     for i in range(n)))
    checks = {"notes created": all(code == 201 for code, _ in created)}
    code, body = await call("GET", "/notes?author=bob&limit=3")
    notes = json.loads(body)["notes"] if code == 200 else []
    checks["newest 3 of bob"] = len(notes) == 3 and all(d["author"] == "bob" for d in notes)
    code, body = await call("GET", "/stats")
    expected = {a: len(range(i, n, 3)) for i, a in enumerate(authors)}
    checks["stats"] = code == 200 and json.loads(body) == expected
    first, second = await asyncio.gather(call("POST", "/users", {"name": "ann"}),
                                         call("POST", "/users", {"name": "ann"}))
    checks["one user, one conflict"] = sorted([first[0], second[0]]) == [201, 409]
    data = os.urandom(600_000)  # three GridFS chunks
    code, _ = await call("PUT", "/files/blob.bin", data)
    checks["file stored"] = code == 201
    code, body = await call("GET", "/files/blob.bin")
    checks["file streamed back"] = code == 200 and body == data
    checks["missing file 404"] = (await call("GET", "/files/nope"))[0] == 404
    http.close()
    print(f"selftest: {requests} requests ({n} concurrent notes first) in "
          f"{time.monotonic() - start:.2f} s")
    for name, ok in checks.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    passed = all(checks.values())
    print(f"selftest: {'PASS' if passed else 'FAIL'}")
    return passed


async def main(args, uri):
    app = tornado.web.Application([(r"/notes", Notes), (r"/stats", Stats), (r"/users", Users),
                                   (r"/files/([^/]+)", Files)])
    # No I/O here: pymongo connects lazily, in the first request's greenlet.
    client = MongoClient(uri, serverSelectionTimeoutMS=5000)
    db_name = f"greenasync_example_{uuid.uuid4().hex[:8]}" if args.selftest else args.db
    app.db = client[db_name]
    app.files = GridFSBucket(app.db)
    sockets = tornado.netutil.bind_sockets(args.port if args.port is not None else
                                           (0 if args.selftest else 8889), "127.0.0.1")
    server = tornado.httpserver.HTTPServer(app, max_body_size=16 * 1024 * 1024)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    log.info("notes service on http://127.0.0.1:%d/notes, database %s", port, db_name)
    try:
        await app.db.notes.create_index([("author", pymongo.ASCENDING), ("at", -1)])
        if args.selftest:
            return 0 if await selftest(f"http://127.0.0.1:{port}", args.requests) else 1
        await asyncio.Event().wait()  # serve until Ctrl-C
    finally:
        server.stop()
        await server.close_all_connections()
        if args.selftest:
            await client.drop_database(db_name)  # leave nothing behind
        await client.close()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    p.add_argument("--port", type=int, help="default 8889 (a free port with --selftest)")
    p.add_argument("--db", default="notes", help="database name when serving")
    p.add_argument("--selftest", action="store_true", help="fire requests at itself, exit")
    p.add_argument("--requests", type=int, default=30, help="selftest concurrent notes")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.selftest:  # its 404 and 409 are expected
        logging.getLogger("tornado.access").setLevel(logging.CRITICAL)
        logging.getLogger("tornado.general").setLevel(logging.CRITICAL)
    uri, embedded = os.environ.get("MONGODB_URI"), None
    if uri is None and args.selftest:
        from greenasync.testing.mongo_server import start_process

        embedded = start_process()
        uri = embedded.uri
        log.warning("EMBEDDED MONGODB: started the in-repo wire server at %s", uri)
    try:
        raise SystemExit(asyncio.run(main(args, uri or "mongodb://127.0.0.1:27017")))
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
