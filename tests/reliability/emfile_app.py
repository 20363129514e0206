"""File descriptors exhausted (EMFILE), for tests/reliability/test_exhaustion.py.

    python tests/reliability/emfile_app.py REDIS_URL {asyncio|uvloop}

Lowers RLIMIT_NOFILE to 256 (in this process only), then on one loop:

1. warms up: a call that parks reading a socketpair (the hub's epoll set exists from here
   on) and an ``accept()`` that parks until a client connects (the listener's fd joins
   the set); then parks one more call reading a socketpair, to be woken later;
2. fills every free fd with ``/dev/null``;
3. a redis call that needs a new connection: ``socket()`` fails -> redis.ConnectionError;
4. ``accept()`` with a connection pending: ``accept4()`` fails with EMFILE -> OSError. The
   listener stays readable; the loop must not spin on it;
5. measures the process's CPU time over 1 s of idle loop (``time.process_time()``) and
   counts ticks of a 10 ms ticker meanwhile;
6. wakes the call parked in step 1 (no new fd needed): it completes;
7. frees the fds: the same redis client and the same listener work again.

Prints one JSON report line.
"""

import asyncio
import json
import os
import resource
import sys
import time

import redis

import greenasync
import greenasync.redis as gr
from greenasync.green import socket

LIMIT = 256


def fill():
    fds = []
    try:
        while True:
            fds.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == 24, exc
    return fds


async def main(url):
    report = {}
    loop = asyncio.get_running_loop()
    ticks = [0]

    async def ticker():
        while True:
            await asyncio.sleep(0.01)
            ticks[0] += 1

    tick_task = asyncio.ensure_future(ticker())
    a, b = socket.socketpair()
    loop.call_later(0.01, b.send, b"w")
    assert await greenasync.run(a.recv, 1) == b"w"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepting = asyncio.ensure_future(greenasync.run(listener.accept))
    await asyncio.sleep(0.02)
    first_client = socket.create_connection(listener.getsockname())
    conn, _ = await accepting
    conn.close()
    first_client.close()
    c, d = socket.socketpair()
    parked = asyncio.ensure_future(greenasync.run(c.recv, 16))
    pending_client = socket.create_connection(listener.getsockname())  # waits in the backlog
    r = gr.Redis.from_url(url, retry=None, socket_connect_timeout=2)
    await asyncio.sleep(0.02)

    filler = fill()
    report["filled"] = len(filler)
    start = time.monotonic()
    try:
        await asyncio.wait_for(r.ping(), 5)
        report["redis"] = "no error"
    except redis.ConnectionError as exc:
        report["redis"] = f"ConnectionError: {exc}"
    report["redis_seconds"] = round(time.monotonic() - start, 3)
    start = time.monotonic()
    try:
        await asyncio.wait_for(greenasync.run(listener.accept), 5)
        report["accept"] = "no error"
    except OSError as exc:
        report["accept"] = f"{type(exc).__name__}: errno {exc.errno}"
    report["accept_seconds"] = round(time.monotonic() - start, 3)

    cpu, ticks[0] = time.process_time(), 0
    await asyncio.sleep(1.0)
    report["idle_cpu_seconds"] = round(time.process_time() - cpu, 3)
    report["idle_ticks"] = ticks[0]

    d.send(b"still alive")
    report["parked_call"] = (await asyncio.wait_for(parked, 5)).decode()

    for fd in filler:
        os.close(fd)
    report["redis_after"] = (await asyncio.wait_for(r.echo("recovered"), 5)).decode()
    conn, _ = await asyncio.wait_for(greenasync.run(listener.accept), 5)
    report["accept_after"] = "ok"
    for s in (conn, pending_client, listener, a, b, c, d):
        s.close()
    r.delegate.close()
    tick_task.cancel()
    return report


if __name__ == "__main__":
    url, kind = sys.argv[1], sys.argv[2]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (LIMIT, hard))
    if kind == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(main(url))
    else:
        result = asyncio.run(main(url))
    print(json.dumps(result), flush=True)
