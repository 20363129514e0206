"""A server with many calls in flight, for the Ctrl-C test (tests/reliability/test_signals.py).

    python tests/reliability/sigint_app.py --kind tornado --calls 10000 [--redis-url URL
        --redis-calls 100] [--plain]

It starts a Tornado web app (``--kind tornado``: ``IOLoop.current().start()``) or an
``asyncio.run()`` program (``--kind asyncio``) and puts ``--calls`` wrapped calls in flight,
every one parked in a sync client library waiting for a reply that never comes:

* a tiny blocking client library (``EchoClient``: connect, send a line, read the reply, with
  a ``finally`` that closes its socket) wrapped with ``greenasync.wrap``, talking to three
  local listening sockets that accept nothing (the kernel completes each connection into
  the listen backlog, nobody ever answers);
* ``--redis-calls`` of them are redis-py BLPOPs on empty keys against a real Redis (through
  ``greenasync.redis``), parked in redis-py's own read;
* one is a Tornado request handler's call, made by the test over HTTP (``/call``).

It prints ``PORT <http port>``, then ``READY <json>`` once every call is parked, then waits
for SIGINT. With ``--plain`` the calls are plain asyncio socket reads (``loop.sock_recv``)
instead: the baseline any asyncio server with that many requests in flight has.
"""

import argparse
import asyncio
import json
import resource
import socket as std_socket
import sys
import time

import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.ioloop import IOLoop

import greenasync
from greenasync.green import socket  # the library's socket module: the shim

BATCH = 500  # calls started per loop iteration while setting up


class EchoClient:
    """A minimal blocking client library: one request and one reply per connection."""

    def __init__(self, address):
        self.address = address

    def call(self, payload):
        sock = socket.create_connection(self.address)
        try:
            sock.sendall(payload + b"\r\n")
            return sock.recv(100)
        finally:
            sock.close()


@greenasync.wrap(EchoClient)
class AsyncEchoClient:
    pass


class Plain:
    """The same client on plain asyncio (the --plain baseline)."""

    def __init__(self, address):
        self.address = address

    async def call(self, payload):
        loop = asyncio.get_running_loop()
        sock = std_socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, self.address)
            await loop.sock_sendall(sock, payload + b"\r\n")
            Plain.waiting += 1
            return await loop.sock_recv(sock, 100)
        finally:
            sock.close()

    waiting = 0  # calls waiting for their reply (statistics() counts the greenasync ones)


def parked(plain):
    if plain:
        return Plain.waiting
    return sum(greenasync.statistics().parked.values())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", choices=["tornado", "asyncio"], default="tornado")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--redis-url")
    parser.add_argument("--redis-calls", type=int, default=0)
    parser.add_argument("--plain", action="store_true")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.calls + 1000
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            sys.exit(f"RLIMIT_NOFILE hard limit {hard} < {need}: raise it (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    listeners = []
    for _ in range(3):  # a backlog is capped at net.core.somaxconn (4096 here)
        listener = std_socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        listeners.append(listener)
    addresses = [listener.getsockname() for listener in listeners]
    clients = [(Plain if args.plain else AsyncEchoClient)(address) for address in addresses]
    redis_client = None
    if args.redis_url and args.redis_calls and not args.plain:
        import greenasync.redis

        redis_client = greenasync.redis.Redis.from_url(
            args.redis_url, max_connections=args.redis_calls + 10, socket_timeout=None)

    class CallHandler(tornado.web.RequestHandler):
        async def get(self):
            self.write(await clients[0].call(b"HTTP"))

    http_sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    port = http_sockets[0].getsockname()[1]
    server = tornado.httpserver.HTTPServer(tornado.web.Application([("/call", CallHandler)]))

    async def start_calls():
        server.add_sockets(http_sockets)
        loop = asyncio.get_running_loop()
        # The calls run as tasks nobody awaits (requests in flight); kept referenced.
        tasks = start_calls.tasks = []
        background = args.calls - 1  # the last one is the HTTP request's
        redis_calls = args.redis_calls if redis_client is not None else 0
        started = time.monotonic()
        for i in range(background):
            if i < redis_calls:
                coro = redis_client.blpop(f"greenasync-sigint-test:{i}", timeout=0)
            else:
                coro = clients[i % 3].call(b"PING")
            tasks.append(loop.create_task(coro))
            if i % BATCH == BATCH - 1:
                await asyncio.sleep(0)  # let the loop poll between batches
        print(f"PORT {port}", flush=True)
        deadline = time.monotonic() + 120
        while parked(args.plain) < args.calls:
            if time.monotonic() > deadline:
                sys.exit(f"only {parked(args.plain)} of {args.calls} calls parked")
            await asyncio.sleep(0.01)
        report = {"calls": args.calls, "redis_calls": redis_calls,
                  "setup": round(time.monotonic() - started, 3)}
        if not args.plain:
            report["parked"] = greenasync.statistics().parked
        print("READY " + json.dumps(report), flush=True)

    if args.kind == "tornado":
        IOLoop.current().spawn_callback(start_calls)
        IOLoop.current().start()
    else:
        async def app_main():
            await start_calls()
            await asyncio.Event().wait()  # serve until Ctrl-C

        asyncio.run(app_main())


if __name__ == "__main__":
    main()
