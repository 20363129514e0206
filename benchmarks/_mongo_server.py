"""bench_mongo's server: a MongoDB wire-protocol server that answers from canned replies, so
the clients' own cost dominates the benchmark.

OP_MSG only (all pymongo 4.x sends). Per message it reads the 16-byte header, takes the
command name (the body's first key) and, for ``find``, the collection name (the first
key's string value); it never decodes the rest of the BSON. The reply bodies are encoded once
at start with pymongo's ``bson``:

  hello / isMaster / ismaster   a standalone server, wire versions 0–21, sessions advertised
  find on "many"               firstBatch of 101 documents, cursor id 42 (then getMore)
  find on anything else        firstBatch of 1 document, cursor id 0 (find_one)
  getMore                      nextBatch of the other 899 documents, cursor id 0
  insert                       {n: 1}
  anything else                {ok: 1}  (ping, endSessions, killCursors, ...)

A client message with moreToCome set (w=0 writes) gets no reply.

    python benchmarks/_mongo_server.py [--port 0]    # prints "port N", then serves
"""

import argparse
import asyncio
import datetime
import struct
import sys

import bson
from bson.int64 import Int64

OP_MSG = 2013
MORE_TO_COME = 2
HEADER = struct.Struct("<iiii")
DOCS = 1000
FIRST_BATCH = 101


def document(i):
    return {"_id": i, "name": f"user{i}", "email": f"user{i}@example.com", "score": i * 1.5,
            "tags": ["a", "b", "c"], "payload": "x" * 100}


def replies():
    """command name (bytes) -> reply body: kind-0 section bytes of the reply OP_MSG."""
    docs = [document(i) for i in range(DOCS)]
    hello = {"helloOk": True, "isWritablePrimary": True, "ismaster": True,
             "maxBsonObjectSize": 16 * 1024 * 1024, "maxMessageSizeBytes": 48_000_000,
             "maxWriteBatchSize": 100_000,
             "localTime": datetime.datetime.now(datetime.timezone.utc),
             "logicalSessionTimeoutMinutes": 30, "connectionId": 1,
             "minWireVersion": 0, "maxWireVersion": 21, "readOnly": False, "ok": 1.0}
    out = {
        b"hello": hello,
        b"isMaster": hello,
        b"ismaster": hello,
        b"find:many": {"cursor": {"firstBatch": docs[:FIRST_BATCH], "id": Int64(42),
                                  "ns": "bench.many"}, "ok": 1.0},
        b"find": {"cursor": {"firstBatch": docs[:1], "id": Int64(0), "ns": "bench.one"},
                  "ok": 1.0},
        b"getMore": {"cursor": {"nextBatch": docs[FIRST_BATCH:], "id": Int64(0),
                                "ns": "bench.many"}, "ok": 1.0},
        b"insert": {"n": 1, "ok": 1.0},
        None: {"ok": 1.0},
    }
    return {name: struct.pack("<IB", 0, 0) + bson.encode(doc) for name, doc in out.items()}


REPLIES = replies()


class CannedMongo(asyncio.Protocol):
    def __init__(self):
        self.buf = bytearray()
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        buf = self.buf
        buf += data
        out = []
        while len(buf) >= 16:
            length, request_id, _, opcode = HEADER.unpack_from(buf)
            if len(buf) < length:
                break
            if opcode != OP_MSG:
                print(f"unsupported opcode {opcode}: closing", file=sys.stderr)
                self.transport.close()
                return
            flags = int.from_bytes(buf[16:20], "little")
            # Section kind 0 at 20, its BSON document at 21: int32 size, then the first
            # element: type byte at 25, its name (the command) from 26 up to a NUL.
            end = buf.index(0, 26)
            name = bytes(buf[26:end])
            if name == b"find" and buf[25] == 2:  # string value: int32 size, the collection
                size = int.from_bytes(buf[end + 1:end + 5], "little")
                if buf[end + 5:end + 4 + size] == b"many":
                    name = b"find:many"
            del buf[:length]
            if flags & MORE_TO_COME:
                continue
            body = REPLIES.get(name) or REPLIES[None]
            out.append(HEADER.pack(16 + len(body), 0, request_id, OP_MSG))
            out.append(body)
        if out:
            self.transport.write(b"".join(out))


async def serve(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(CannedMongo, "127.0.0.1", port, backlog=1024)
    print(f"port {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    args = parser.parse_args()
    factory = asyncio.new_event_loop
    if args.loop == "uvloop":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
