"""A small MongoDB wire-protocol server for tests, backed by mongomock.

pymongo talks to it over a real TCP socket on 127.0.0.1, so its real network code runs
(handshake, connection pool, timeouts, cursors). Use ``directConnection=true`` (``server.uri``
has it). One thread serves each connection; one lock guards the ``mongomock.MongoClient``.

Supported:
  * OP_MSG only (kind-0 body, kind-1 document sequences, checksumPresent flag (the checksum is
    not verified), client ``moreToCome`` => no reply, as for w=0 writes). pymongo 4.x sends
    nothing else; any other opcode is logged and the connection closed.
  * hello/isMaster/ismaster (standalone, wire versions 0..21, sessions advertised), ping,
    buildInfo, endSessions, insert, find, getMore, killCursors, update, delete, findAndModify,
    aggregate, count, distinct, createIndexes, listIndexes, drop, create, dropDatabase,
    listCollections, listDatabases. Unknown command => ``ok: 0``, code 59 (CommandNotFound).
    Backend errors => ``ok: 0`` or ``writeErrors`` (duplicate key => code 11000).
  * Server cursors (getMore/killCursors); ``open_cursors`` / ``{"greenasyncStatus": 1}``.
  * Change streams, minimal: ``aggregate`` with a leading ``$changeStream`` (collection,
    database or cluster level; ``fullDocument`` "default"/"updateLookup", ``resumeAfter``/
    ``startAfter`` with this server's tokens), then ``$match`` stages only. The ``insert``,
    ``update`` and ``delete`` commands log insert/update/replace/delete events (top-level
    ``updateDescription``) while a change stream is open; a ``getMore`` waits up to its
    ``maxTimeMS`` (default 1 s) for one. No other command logs events.
  * ``commitTransaction``/``abortTransaction`` are accepted and do nothing: a driver's
    transaction plumbing runs, with no isolation and no rollback.
  * Test knobs, at start or later with ``configure()`` or the admin command
    ``{"greenasyncConfigure": 1, "delay": 0.3, "commands": ["find"], "close": ["insert"]}``
    (each call replaces the whole configuration; ``{"greenasyncConfigure": 1}`` resets it):
    ``delay`` seconds before running each command in ``commands`` (default: every command but
    the handshake and greenasync* ones; only that connection waits), ``close`` = drop the
    connection without replying when one of these commands arrives.
    ``{"greenasyncSleep": seconds}`` replies after sleeping.

Not supported: auth/SCRAM, TLS, compression (OP_COMPRESSED), OP_QUERY/legacy opcodes,
transaction semantics, retryable-write txnNumber semantics, tailable cursors, streaming
(awaitable) hello/topologyVersion, maxTimeMS (ignored but in change-stream getMores), cursor
timeouts, collation, hint, database-level aggregate (but ``$changeStream``), explain, and
whatever mongomock itself lacks (arrayFilters, some operators and stages) -- those fail with
``ok: 0`` (code 238 NotImplemented).

In process: ``with MongoTestServer() as server: MongoClient(server.uri)``. As a separate
process (no shared GIL): ``with start_process() as server: ...`` or
``python -m greenasync.testing.mongo_server --port 0`` (prints the URI as its first line).
"""

import argparse
import collections
import contextlib
import datetime
import itertools
import logging
import os
import random
import re
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import threading

import bson
import mongomock
from bson.int64 import Int64
from bson.raw_bson import RawBSONDocument
from bson.timestamp import Timestamp
from mongomock.filtering import filter_applies
from pymongo import ReturnDocument

log = logging.getLogger("greenasync.testing.mongo_server")

OP_MSG = 2013
CHECKSUM_PRESENT, MORE_TO_COME = 1, 2
MAX_MESSAGE_SIZE = 48_000_000
BATCH_BYTES = 16 * 1024 * 1024  # cap on one cursor batch, like mongod's 16 MiB
CODE_NAMES = {2: "BadValue", 26: "NamespaceNotFound", 43: "CursorNotFound", 48: "NamespaceExists",
              59: "CommandNotFound", 73: "InvalidNamespace", 238: "NotImplemented",
              1: "InternalError", 11000: "DuplicateKey"}
ALIASES = {"isMaster": "hello", "ismaster": "hello", "buildinfo": "buildInfo",
           "findandmodify": "findAndModify", "endSessions": "ping"}  # endSessions: a no-op
ADMIN = frozenset({"greenasyncSleep", "greenasyncConfigure", "greenasyncStatus"})
LOCK_FREE = frozenset({"hello", "ping", "buildInfo", *ADMIN})  # no mongomock, no lock
# Fields drivers add to any command; the server accepts and ignores them.
GENERIC_FIELDS = frozenset({"$db", "lsid", "$clusterTime", "$readPreference", "writeConcern",
                            "readConcern", "comment", "maxTimeMS", "apiVersion", "apiStrict",
                            "apiDeprecationErrors", "txnNumber", "autocommit",
                            "startTransaction"})
CHANGE_LOG = 10_000  # change events kept for change streams (resumeAfter reaches this far)


class CommandError(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


def _recv_exact(sock, n):
    """Read exactly n bytes; None on a clean EOF."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if not k:
            return None
        got += k
    return bytes(buf)


def _parse_op_msg(data):
    """OP_MSG body (after the header) -> (flagBits, command with document sequences merged)."""
    flags = struct.unpack_from("<I", data)[0]
    end = len(data) - (4 if flags & CHECKSUM_PRESENT else 0)
    pos, command, sequences = 4, None, {}
    while pos < end:
        kind, size = data[pos], struct.unpack_from("<i", data, pos + 1)[0]
        if kind == 0:
            command = bson.decode(data[pos + 1:pos + 1 + size])
        elif kind == 1:
            name_end = data.index(b"\x00", pos + 5)
            ident = data[pos + 5:name_end].decode()
            sequences[ident] = bson.decode_all(data[name_end + 1:pos + 1 + size])
        else:
            raise ValueError(f"unknown OP_MSG section kind {kind}")
        pos += 1 + size
    if command is None:
        raise ValueError("OP_MSG without a body section")
    command.update(sequences)
    return flags, command


def _op_msg(doc, request_id, response_to=0):
    body = bson.encode(doc)
    return struct.pack("<iiiiIB", 21 + len(body), request_id, response_to, OP_MSG, 0, 0) + body


def _read_message(sock):
    """-> (requestID, opCode, body) or None on EOF."""
    header = _recv_exact(sock, 16)
    if header is None:
        return None
    length, request_id, _, opcode = struct.unpack("<iiii", header)
    if not 16 < length <= MAX_MESSAGE_SIZE:
        raise ValueError(f"bad message length {length}")
    body = _recv_exact(sock, length - 16)
    return None if body is None else (request_id, opcode, body)


def send_command(address, command, timeout=10.0):
    """Send one command to the admin database over a fresh socket; return the reply document.

    No pymongo involved: used for the greenasync* admin commands of a server process.
    """
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(_op_msg({**command, "$db": "admin"}, request_id=1))
        message = _read_message(sock)
    if message is None:
        raise ConnectionError("server closed the connection")
    return _parse_op_msg(message[2])[1]


class _Cursor:
    def __init__(self, ns, docs):
        self.ns, self.docs = ns, collections.deque(docs)


class _ChangeStreamCursor:
    """A change stream's server cursor: the events after ``position`` that ``matches``."""

    def __init__(self, ns, matches, position, update_lookup):
        self.ns, self.matches, self.position = ns, matches, position
        self.update_lookup = update_lookup  # fullDocument: "updateLookup"


class _TCPServer(socketserver.TCPServer):
    allow_reuse_address = True

    def __init__(self, address, owner):
        self.owner = owner
        super().__init__(address, None)

    def process_request(self, request, client_address):
        self.owner._spawn(request)


class MongoTestServer:
    """The server, in this process: ``with MongoTestServer() as server: server.uri``."""

    def __init__(self, port=0, *, delay=0.0, delay_commands=None, close_commands=()):
        self._port = port
        self._lock = threading.Lock()  # guards the mongomock client and the cursor table
        self._state_lock = threading.Lock()  # connections, threads, counters
        self._client = mongomock.MongoClient()
        self._cursors = {}
        self._changes = collections.deque(maxlen=CHANGE_LOG)  # (sequence, event)
        self._change_seq = itertools.count(1)
        self._last_change = 0
        self._changed = threading.Condition(self._lock)  # notified on each change event
        self._connections, self._threads = {}, set()
        self._conn_ids = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._stopping = threading.Event()
        self._tls = threading.local()
        self._tcp = self._thread = None
        self.total_connections = 0
        self.command_counts = collections.Counter()
        self.configure(delay=delay, delay_commands=delay_commands, close_commands=close_commands)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self):
        self._tcp = _TCPServer(("127.0.0.1", self._port), self)
        self.address = self._tcp.server_address[:2]
        self._thread = threading.Thread(target=self._tcp.serve_forever, args=(0.05,),
                                        name=f"greenasync-mongo-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Stop accepting, drop every connection, join every thread, close every socket."""
        if self._tcp is None:
            return
        self._stopping.set()
        self._tcp.shutdown()
        self._thread.join()
        with self._state_lock:
            socks, threads = list(self._connections.values()), list(self._threads)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the handler thread blocked in recv
            except OSError:
                pass
        for thread in threads:
            thread.join(5)
        self._tcp.server_close()
        self._tcp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self.address[1]

    @property
    def uri(self):
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def open_cursors(self):
        with self._lock:
            return len(self._cursors)

    def configure(self, delay=0.0, delay_commands=None, close_commands=()):
        """Replace the test knobs (see the module docstring)."""
        self._knobs = (float(delay), None if delay_commands is None else frozenset(delay_commands),
                       frozenset(close_commands))

    def _cmd_greenasyncStatus(self, cmd, db):
        return self.status()

    def status(self):
        with self._state_lock:
            counts, conns, total = dict(self.command_counts), len(self._connections), \
                self.total_connections
        delay, commands, close = self._knobs
        return {"openCursors": self.open_cursors, "connections": conns,
                "totalConnections": total, "commands": counts,
                "config": {"delay": delay, "commands": None if commands is None else
                           sorted(commands), "close": sorted(close)}}

    # -- connections -------------------------------------------------------------------
    def _spawn(self, sock):
        conn_id = next(self._conn_ids)
        thread = threading.Thread(target=self._serve, args=(sock, conn_id), daemon=True,
                                  name=f"greenasync-mongo-{self.port}-conn-{conn_id}")
        with self._state_lock:
            self._connections[conn_id] = sock
            self._threads.add(thread)
            self.total_connections += 1
        thread.start()

    def _serve(self, sock, conn_id):
        self._tls.conn_id = conn_id
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while not self._stopping.is_set():
                message = _read_message(sock)
                if message is None:
                    break
                request_id, opcode, body = message
                if opcode != OP_MSG:
                    log.warning("connection %d: unsupported opcode %d (only OP_MSG=2013); "
                                "closing", conn_id, opcode)
                    break
                flags, command = _parse_op_msg(body)
                reply = self._dispatch(command)
                if reply is None:  # the "close" knob
                    break
                if not flags & MORE_TO_COME:
                    sock.sendall(_op_msg(reply, next(self._request_ids), request_id))
        except OSError as exc:
            log.debug("connection %d: %s", conn_id, exc)
        except Exception:
            log.exception("connection %d: protocol error; closing", conn_id)
        finally:
            sock.close()
            with self._state_lock:
                del self._connections[conn_id]
                self._threads.discard(threading.current_thread())

    def _dispatch(self, cmd):
        name = next(iter(cmd), "")
        db = cmd.get("$db", "test")
        with self._state_lock:
            self.command_counts[name] += 1
        delay, delay_commands, close = self._knobs
        if name in close:
            log.info("closing the connection on %r (close knob)", name)
            return None
        canonical = ALIASES.get(name, name)
        if delay and (name in delay_commands if delay_commands is not None
                      else canonical != "hello" and canonical not in ADMIN):
            self._stopping.wait(delay)  # only this connection waits (and stop() wakes it)
        handler = getattr(self, f"_cmd_{canonical}", None)
        try:
            if handler is None:
                raise CommandError(59, f"no such command: '{name}'")
            with contextlib.nullcontext() if canonical in LOCK_FREE else self._lock:
                return {**handler(cmd, db), "ok": 1.0}
        except Exception as exc:
            code, message = _error_code(exc)
            if code == 1:
                log.exception("command %r failed", name)
            return {"ok": 0.0, "errmsg": message, "code": code,
                    "codeName": CODE_NAMES.get(code, "")}

    # -- handshake and admin commands --------------------------------------------------
    def _cmd_hello(self, cmd, db):
        primary = "isWritablePrimary" if "hello" in cmd else "ismaster"
        return {"helloOk": True, primary: True, "maxBsonObjectSize": 16 * 1024 * 1024,
                "maxMessageSizeBytes": MAX_MESSAGE_SIZE, "maxWriteBatchSize": 100_000,
                "localTime": datetime.datetime.now(datetime.timezone.utc),
                "logicalSessionTimeoutMinutes": 30, "connectionId": self._tls.conn_id,
                "minWireVersion": 0, "maxWireVersion": 21, "readOnly": False}

    def _cmd_ping(self, cmd, db):
        return {}

    def _cmd_buildInfo(self, cmd, db):
        return {"version": "7.0.0", "versionArray": [7, 0, 0, 0], "gitVersion": "mongomock",
                "maxBsonObjectSize": 16 * 1024 * 1024}

    def _cmd_greenasyncSleep(self, cmd, db):
        seconds = float(cmd["greenasyncSleep"])
        self._stopping.wait(seconds)
        return {"slept": seconds}

    def _cmd_greenasyncConfigure(self, cmd, db):
        self.configure(cmd.get("delay", 0.0), cmd.get("commands"), cmd.get("close", ()))
        return self.status()

    # -- cursors -----------------------------------------------------------------------
    def _cursor_reply(self, ns, docs, batch_size=None, single_batch=False):
        cursor = _Cursor(ns, docs)
        first = [] if batch_size == 0 else self._take(cursor, batch_size or 101)
        cursor_id = 0
        if cursor.docs and not single_batch:
            cursor_id = random.getrandbits(62) + 1
            self._cursors[cursor_id] = cursor
        return {"cursor": {"firstBatch": first, "id": Int64(cursor_id), "ns": ns}}

    @staticmethod
    def _take(cursor, batch_size):
        batch, size = [], 0
        while cursor.docs and (not batch_size or len(batch) < batch_size) and size < BATCH_BYTES:
            doc = RawBSONDocument(bson.encode(cursor.docs.popleft()))
            batch.append(doc)
            size += len(doc.raw)
        return batch

    def _cmd_getMore(self, cmd, db):
        cursor_id, ns = cmd["getMore"], f"{db}.{cmd['collection']}"
        cursor = self._cursors.get(cursor_id)
        if cursor is None or cursor.ns != ns:
            raise CommandError(43, f"cursor id {cursor_id} not found")
        if isinstance(cursor, _ChangeStreamCursor):
            return self._change_stream_batch(cursor_id, cursor, cmd)
        batch = self._take(cursor, cmd.get("batchSize"))
        if not cursor.docs:
            del self._cursors[cursor_id]
            cursor_id = 0
        return {"cursor": {"nextBatch": batch, "id": Int64(cursor_id), "ns": ns}}

    def _cmd_killCursors(self, cmd, db):
        killed = [c for c in cmd.get("cursors", []) if self._cursors.pop(c, None) is not None]
        missing = [c for c in cmd.get("cursors", []) if c not in killed]
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [],
                "cursorsUnknown": []}

    # -- reads -------------------------------------------------------------------------
    def _cmd_find(self, cmd, db):
        coll, ns = self._client[db][cmd["find"]], f"{db}.{cmd['find']}"
        if cmd.get("tailable"):
            raise CommandError(238, "tailable cursors are not supported")
        limit, sort = cmd.get("limit", 0), cmd.get("sort")
        docs = list(coll.find(cmd.get("filter") or {}, cmd.get("projection"),
                              skip=cmd.get("skip", 0), limit=abs(limit),
                              sort=list(sort.items()) if sort else None))
        return self._cursor_reply(ns, docs, cmd.get("batchSize"),
                                  cmd.get("singleBatch", False) or limit < 0)

    def _cmd_aggregate(self, cmd, db):
        pipeline = cmd.get("pipeline", [])
        if pipeline and "$changeStream" in pipeline[0]:
            return self._open_change_stream(cmd, db, pipeline)
        if not isinstance(cmd["aggregate"], str) or cmd.get("explain"):
            raise CommandError(238, "only collection-level aggregate without explain")
        docs = list(self._client[db][cmd["aggregate"]].aggregate(cmd.get("pipeline", [])))
        return self._cursor_reply(f"{db}.{cmd['aggregate']}", docs,
                                  cmd.get("cursor", {}).get("batchSize"))

    def _cmd_count(self, cmd, db):
        options = {"skip": cmd.get("skip", 0)}
        if cmd.get("limit"):
            options["limit"] = abs(cmd["limit"])
        return {"n": self._client[db][cmd["count"]].count_documents(cmd.get("query") or {},
                                                                    **options)}

    def _cmd_distinct(self, cmd, db):
        coll = self._client[db][cmd["distinct"]]
        return {"values": coll.distinct(cmd["key"], cmd.get("query") or {})}

    # -- writes ------------------------------------------------------------------------
    def _writes(self, cmd, key, apply_one, **counters):
        """Run apply_one(op, index, reply) per operation, collecting writeErrors like mongod."""
        reply, errors = {"n": 0, **counters}, []
        for index, op in enumerate(cmd.get(key, [])):
            try:
                apply_one(op, index, reply)
            except Exception as exc:  # noqa: BLE001 -- any failure becomes a writeError
                code, message = _error_code(exc)
                errors.append({"index": index, "code": code, "errmsg": message})
                if cmd.get("ordered", True):
                    break
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _cmd_insert(self, cmd, db):
        coll = self._client[db][cmd["insert"]]

        def insert(doc, index, reply):
            coll.insert_one(doc)
            reply["n"] += 1
            self._record(db, cmd["insert"], "insert", doc["_id"], fullDocument=doc)
        return self._writes(cmd, "documents", insert)

    def _cmd_update(self, cmd, db):
        coll = self._client[db][cmd["update"]]

        def update(op, index, reply):
            q, multi = op.get("q", {}), op.get("multi")
            before = self._watched_docs(coll, q, multi)
            kind = "replace" if _is_replacement(op["u"]) else "update"
            try:
                apply_update(op, index, reply)
            finally:
                self._record_updates(db, cmd["update"], coll, kind, before, reply)

        def apply_update(op, index, reply):
            q, u, upsert, multi = op.get("q", {}), op["u"], op.get("upsert"), op.get("multi")
            if op.get("arrayFilters"):  # mongomock lacks them: resolve them per document
                docs = list(coll.find(q, limit=0 if multi else 1))
                if upsert and not docs:
                    raise CommandError(2, "upsert with arrayFilters is not supported")
                for doc in docs:
                    resolved = _resolve_array_filters(doc, u, op["arrayFilters"])
                    result = coll.update_one({"_id": doc["_id"]}, resolved) if resolved else None
                    reply["nModified"] += result.modified_count if result else 0
                reply["n"] += len(docs)
                return
            if _is_replacement(u):
                if multi:
                    raise CommandError(2, "multi update is not supported for replacement")
                result = coll.replace_one(q, u, upsert=bool(upsert))
            else:
                method = coll.update_many if multi else coll.update_one
                result = method(q, u, upsert=bool(upsert))
            reply["n"] += result.raw_result["n"]
            reply["nModified"] += result.modified_count
            if result.upserted_id is not None:
                reply.setdefault("upserted", []).append({"index": index,
                                                         "_id": result.upserted_id})
        return self._writes(cmd, "updates", update, nModified=0)

    def _cmd_delete(self, cmd, db):
        coll = self._client[db][cmd["delete"]]

        def delete(op, index, reply):
            method = coll.delete_one if op.get("limit") else coll.delete_many
            before = self._watched_docs(coll, op.get("q", {}), not op.get("limit"))
            reply["n"] += method(op.get("q", {})).deleted_count
            for _id in before:
                if coll.find_one({"_id": _id}, {"_id": 1}) is None:
                    self._record(db, cmd["delete"], "delete", _id)
        return self._writes(cmd, "deletes", delete)

    def _cmd_findAndModify(self, cmd, db):
        coll = self._client[db][next(iter(cmd.values()))]
        query, fields, upsert = cmd.get("query") or {}, cmd.get("fields"), cmd.get("upsert")
        sort = list(cmd["sort"].items()) if cmd.get("sort") else None
        target = coll.find_one(query, sort=sort)
        existed = target is not None
        if cmd.get("remove"):
            value = coll.find_one_and_delete(query, fields, sort=sort)
            return {"lastErrorObject": {"n": int(existed)}, "value": value}
        update, returned = cmd["update"], (ReturnDocument.AFTER if cmd.get("new")
                                           else ReturnDocument.BEFORE)
        if cmd.get("arrayFilters"):
            if not existed:
                raise CommandError(2, "upsert with arrayFilters is not supported")
            query = {"_id": target["_id"]}
            update = _resolve_array_filters(target, update, cmd["arrayFilters"])
        method = coll.find_one_and_replace if _is_replacement(update) \
            else coll.find_one_and_update
        value = method(query, update, fields, sort=sort, upsert=bool(upsert),
                       return_document=returned)
        last_error = {"n": int(existed or bool(upsert)), "updatedExisting": existed}
        if not existed and upsert and value and "_id" in value:
            last_error["upserted"] = value["_id"]
        return {"lastErrorObject": last_error, "value": value}

    # -- transactions: accepted, not isolated ------------------------------------------
    def _cmd_commitTransaction(self, cmd, db):
        return {}

    def _cmd_abortTransaction(self, cmd, db):
        return {}

    # -- change streams ----------------------------------------------------------------
    def _open_change_stream(self, cmd, db, pipeline):
        options, target = pipeline[0]["$changeStream"], cmd["aggregate"]
        unsupported = set(options) - {"fullDocument", "resumeAfter", "startAfter",
                                      "allChangesForCluster"}
        if unsupported or options.get("fullDocument", "default") not in ("default",
                                                                         "updateLookup"):
            raise CommandError(238, f"$changeStream options not supported: {options}")
        filters = []
        for stage in pipeline[1:]:
            if set(stage) != {"$match"}:
                raise CommandError(238, f"only $match may follow $changeStream, got {stage}")
            filters.append(stage["$match"])

        def matches(event):
            ns = event["ns"]
            return ((options.get("allChangesForCluster") or ns["db"] == db) and
                    (not isinstance(target, str) or ns["coll"] == target) and
                    all(filter_applies(f, event) for f in filters))

        token = options.get("startAfter") or options.get("resumeAfter")
        position = int(token["_data"], 16) if token else self._last_change
        ns = f"{db}.{target}" if isinstance(target, str) else f"{db}.$cmd.aggregate"
        cursor_id = random.getrandbits(62) + 1
        self._cursors[cursor_id] = cursor = _ChangeStreamCursor(
            ns, matches, position, options.get("fullDocument") == "updateLookup")
        batch = self._change_events(cursor, cmd.get("cursor", {}).get("batchSize"))
        return {"cursor": {"firstBatch": batch, "id": Int64(cursor_id), "ns": ns,
                           "postBatchResumeToken": _token(cursor.position)}}

    def _change_stream_batch(self, cursor_id, cursor, cmd):
        # An awaitData getMore: wait up to maxTimeMS (mongod's default 1 s) for an event.
        # Waiting on the condition releases the server lock, so writers get through.
        timeout = (cmd.get("maxTimeMS") or 1000) / 1000
        batch = self._change_events(cursor, cmd.get("batchSize"))
        if not batch and self._cursors.get(cursor_id) is cursor:
            self._changed.wait_for(
                lambda: self._last_change > cursor.position or self._stopping.is_set(),
                timeout=timeout)
            batch = self._change_events(cursor, cmd.get("batchSize"))
        return {"cursor": {"nextBatch": batch, "id": Int64(cursor_id), "ns": cursor.ns,
                           "postBatchResumeToken": _token(cursor.position)}}

    def _change_events(self, cursor, batch_size):
        batch = []
        for seq, event in self._changes:
            if seq <= cursor.position:
                continue
            if batch_size and len(batch) >= batch_size:
                break
            cursor.position = seq
            if event["operationType"] == "update" and not cursor.update_lookup:
                event = {k: v for k, v in event.items() if k != "fullDocument"}
            if cursor.matches(event):
                batch.append(event)
        else:
            cursor.position = max(cursor.position, self._last_change)
        return batch

    def _watching(self):
        return any(isinstance(c, _ChangeStreamCursor) for c in self._cursors.values())

    def _watched_docs(self, coll, query, multi):
        """The documents a write may change, by _id (only while a change stream is open)."""
        if not self._watching():
            return {}
        return {d["_id"]: d for d in coll.find(query, limit=0 if multi else 1)}

    def _record_updates(self, db, name, coll, kind, before, reply):
        for _id, old in before.items():
            new = coll.find_one({"_id": _id})
            if new is None or new == old:
                continue
            self._record(db, name, kind, _id, fullDocument=new, updateDescription={
                "updatedFields": {k: v for k, v in new.items() if old.get(k, _MISSING) != v},
                "removedFields": [k for k in old if k not in new], "truncatedArrays": []})
        for upserted in reply.get("upserted", []):
            if upserted["_id"] not in before:
                self._record(db, name, "insert", upserted["_id"],
                             fullDocument=coll.find_one({"_id": upserted["_id"]}))

    def _record(self, db, coll, kind, _id, fullDocument=None, updateDescription=None):
        """Log one change event (the server lock is held) and wake the waiting getMores."""
        if not self._watching():
            return
        seq = self._last_change = next(self._change_seq)
        event = {"_id": _token(seq), "operationType": kind,
                 "clusterTime": Timestamp(int(datetime.datetime.now().timestamp()), seq),
                 "wallTime": datetime.datetime.now(datetime.timezone.utc),
                 "ns": {"db": db, "coll": coll}, "documentKey": {"_id": _id}}
        if fullDocument is not None:  # an update's is delivered with updateLookup only
            event["fullDocument"] = fullDocument
        if kind == "update":
            event["updateDescription"] = updateDescription
        self._changes.append((seq, event))
        self._changed.notify_all()

    # -- namespaces and indexes --------------------------------------------------------
    def _exists(self, db, name):
        return name in self._client[db].list_collection_names()

    def _cmd_createIndexes(self, cmd, db):
        name = cmd["createIndexes"]
        coll, existed = self._client[db][name], self._exists(db, name)
        before = len(list(coll.list_indexes()))
        for spec in cmd["indexes"]:
            options = {k: v for k, v in spec.items() if k not in ("key", "v", "ns")}
            coll.create_index(list(spec["key"].items()), **options)
        return {"createdCollectionAutomatically": not existed,
                "numIndexesBefore": before or 1, "numIndexesAfter": len(list(coll.list_indexes()))}

    def _cmd_listIndexes(self, cmd, db):
        name = cmd["listIndexes"]
        if not self._exists(db, name):
            raise CommandError(26, f"ns does not exist: {db}.{name}")
        return self._cursor_reply(f"{db}.{name}", list(self._client[db][name].list_indexes()),
                                  cmd.get("cursor", {}).get("batchSize"))

    def _cmd_drop(self, cmd, db):
        name = cmd["drop"]
        if not self._exists(db, name):
            raise CommandError(26, "ns not found")
        n_indexes = len(list(self._client[db][name].list_indexes()))
        self._client[db].drop_collection(name)
        return {"nIndexesWas": n_indexes, "ns": f"{db}.{name}"}

    def _cmd_create(self, cmd, db):
        options = set(cmd) - GENERIC_FIELDS - {"create"}
        if options:
            raise CommandError(238, f"create options not supported: {sorted(options)}")
        self._client[db].create_collection(cmd["create"])
        return {}

    def _cmd_dropDatabase(self, cmd, db):
        self._client.drop_database(db)
        return {}

    def _cmd_listCollections(self, cmd, db):
        docs = [{"name": name, "type": "collection", "options": {},
                 "info": {"readOnly": False},
                 "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
                for name in sorted(self._client[db].list_collection_names())]
        docs = [d for d in docs if filter_applies(cmd.get("filter") or {}, d)]
        if cmd.get("nameOnly"):
            docs = [{"name": d["name"], "type": d["type"]} for d in docs]
        return self._cursor_reply(f"{db}.$cmd.listCollections", docs,
                                  cmd.get("cursor", {}).get("batchSize"))

    def _cmd_listDatabases(self, cmd, db):
        docs = [{"name": name, "sizeOnDisk": 0, "empty": False}
                for name in sorted(self._client.list_database_names())]
        docs = [d for d in docs if filter_applies(cmd.get("filter") or {}, d)]
        if cmd.get("nameOnly"):
            docs = [{"name": d["name"]} for d in docs]
        return {"databases": docs, "totalSize": 0}


_MISSING = object()


def _token(seq):
    return {"_data": f"{seq:016X}"}


def _resolve_array_filters(doc, update, array_filters):
    """Rewrite the ``$[id]`` / ``$[]`` paths of ``update`` into concrete indexes for ``doc``."""
    filters = collections.defaultdict(dict)  # identifier -> filter on {"e": element}
    for array_filter in array_filters:
        for key, condition in array_filter.items():
            filters[key.split(".")[0]][key] = condition
    resolved = {}
    for operator, fields in update.items():
        concrete = {path: value for template, value in fields.items()
                    for path in _paths(doc, template.split("."), filters)}
        if concrete:
            resolved[operator] = concrete
    return resolved


def _paths(node, parts, filters, prefix=()):
    if not parts:
        yield ".".join(prefix)
        return
    head, rest = parts[0], parts[1:]
    match = re.fullmatch(r"\$\[(\w*)\]", head)
    if match is None:
        child = node.get(head) if isinstance(node, dict) else None
        if isinstance(node, list) and head.isdigit() and int(head) < len(node):
            child = node[int(head)]
        yield from _paths(child, rest, filters, prefix + (head,))
    elif isinstance(node, list):
        ident = match.group(1)
        for i, element in enumerate(node):
            if not ident or filter_applies(filters[ident], {ident: element}):
                yield from _paths(element, rest, filters, prefix + (str(i),))


def _is_replacement(update):
    return isinstance(update, dict) and not any(k.startswith("$") for k in update)


def _error_code(exc):
    """Exception -> (MongoDB error code, message)."""
    code = getattr(exc, "code", None)
    if isinstance(exc, CommandError) or (isinstance(code, int) and code > 0):
        return code, str(exc)
    if isinstance(exc, mongomock.CollectionInvalid):
        return 48, str(exc)
    if isinstance(exc, mongomock.InvalidName):
        return 73, str(exc)
    if isinstance(exc, NotImplementedError):
        return 238, f"not supported by the mongomock test server: {exc}"
    if isinstance(exc, (mongomock.PyMongoError, ValueError, TypeError, KeyError)):
        return 2, f"{type(exc).__name__}: {exc}"
    return 1, f"internal error: {type(exc).__name__}: {exc}"


class MongoServerProcess:
    """The server in a child process: ``with MongoServerProcess() as server: server.uri``.

    The child exits when this process closes its stdin (so it never outlives a crashed
    parent); ``stop()`` does that, waits up to 5 s, then kills it.
    """

    def __init__(self, *, delay=0.0, delay_commands=None, close_commands=(), verbose=False):
        self._args = ["--port", "0", "--exit-on-stdin-eof", "--delay", str(delay),
                      "--close-commands", ",".join(close_commands)] + (["--verbose"] if verbose else [])
        if delay_commands is not None:
            self._args += ["--delay-commands", ",".join(delay_commands)]
        self.process = self.uri = self.address = None

    def start(self):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "greenasync.testing.mongo_server", *self._args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.uri = self.process.stdout.readline().decode().strip()  # "" if the child died
        if not self.uri.startswith("mongodb://"):
            self.stop()
            raise RuntimeError("the mongo test server process did not start (see its stderr)")
        self.address = ("127.0.0.1", int(self.uri.split(":")[2].split("/")[0]))
        return self

    def stop(self):
        if self.process is None:
            return
        self.process.stdin.close()  # the child exits on EOF
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.process = None

    def __enter__(self):
        return self if self.process else self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def port(self):
        return self.address[1]

    def configure(self, delay=0.0, delay_commands=None, close_commands=()):
        send_command(self.address, {"greenasyncConfigure": 1, "delay": delay,
                                    "commands": None if delay_commands is None else
                                    list(delay_commands), "close": list(close_commands)})

    def status(self):
        return send_command(self.address, {"greenasyncStatus": 1})

    @property
    def open_cursors(self):
        return self.status()["openCursors"]


def start_process(**options):
    """Start a ``MongoServerProcess`` (also a context manager that stops it)."""
    return MongoServerProcess(**options).start()


def _split(names):
    return [name for name in names.split(",") if name]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--delay-commands", help="comma-separated; default: all commands")
    parser.add_argument("--close-commands", default="", help="comma-separated")
    parser.add_argument("--exit-on-stdin-eof", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="mongo_server: %(levelname)s %(message)s")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    server = MongoTestServer(
        args.port, delay=args.delay, close_commands=_split(args.close_commands),
        delay_commands=None if args.delay_commands is None else _split(args.delay_commands))
    with server:
        print(server.uri, flush=True)
        if args.exit_on_stdin_eof:
            threading.Thread(target=lambda: (sys.stdin.buffer.read(), done.set()),
                             daemon=True).start()
        while not done.wait(0.5):
            pass


if __name__ == "__main__":
    main()
