"""os.fork() with calls parked, for tests/reliability/test_fork.py.

    python tests/reliability/fork_app.py REDIS_URL [--without-fork-handler]

The parent parks 20 BLPOPs on one wrapped redis client (one shared connection pool) and one
call of a small job whose ``finally`` writes the pid it runs in to a pipe, then forks from a
coroutine on its running loop (as a pre-fork server does, e.g. ``tornado.process``).

The child: checks that it starts clean (``greenasync.statistics()`` shows no loop, no worker),
closes every socket it inherited (what a fork-unaware library or a daemonising child does),
collects garbage, then makes fresh calls on a new loop with a new client and with the
inherited one (redis-py resets its pool in a child), and exits with ``os._exit``.

The parent: waits for the child, pushes a value to each BLPOP key and wakes the job; every
parked call must complete with its own value. Each process prints one JSON report line
(``CHILD {...}`` / ``PARENT {...}``).

``--without-fork-handler`` restores in the child what greenasync's at-fork handler drops (the
inherited hubs), i.e. greenasync as it was before the handler: the control experiment.
"""

import asyncio
import gc
import json
import os
import sys
import time
import uuid

import redis

import greenasync
import greenasync.redis
from greenasync import _bridge
from greenasync.green import socket as green_socket

CALLS = 20


def main():
    url = sys.argv[1]
    without_handler = "--without-fork-handler" in sys.argv[2:]
    prefix = f"greenasync-fork-test:{uuid.uuid4().hex}:"
    client = greenasync.redis.Redis.from_url(url, socket_timeout=None)
    marker_r, marker_w = os.pipe()
    job_sock, job_peer = green_socket.socketpair()

    def job():
        try:
            return job_sock.recv(16)
        finally:
            os.write(marker_w, f"{os.getpid()}\n".encode())

    async def parent():
        loop = asyncio.get_running_loop()
        blpops = [loop.create_task(client.blpop(f"{prefix}{i}", timeout=0))
                  for i in range(CALLS)]
        other = loop.create_task(greenasync.run(job))
        deadline = time.monotonic() + 20
        while sum(greenasync.statistics().parked.values()) < CALLS + 1:
            assert time.monotonic() < deadline, greenasync.statistics()
            await asyncio.sleep(0.005)
        inherited = dict(_bridge._hubs)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            if without_handler:
                _bridge._hubs.update(inherited)  # what greenasync did before the handler
            child(url, prefix, client)  # never returns
        while True:  # the child runs; this loop and its parked calls stay as they are
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            await asyncio.sleep(0.01)
        # Feed every parked call its reply; each must get its own.
        feeder = redis.Redis.from_url(url)
        for i in range(CALLS):
            feeder.rpush(f"{prefix}{i}", f"value-{i}")
        job_peer.send(b"reply")
        try:
            results = await asyncio.wait_for(asyncio.gather(*blpops, other), 3)
            hung = False
        except asyncio.TimeoutError:
            results, hung = [], True
        feeder.delete(*[f"{prefix}{i}" for i in range(CALLS)])
        feeder.close()
        os.close(marker_w)
        with os.fdopen(marker_r) as marker:
            cleanup_pids = [int(line) for line in marker.read().split()]
        expected = [[f"{prefix}{i}".encode(), f"value-{i}".encode()] for i in range(CALLS)]
        report = {
            "child_status": os.waitstatus_to_exitcode(status),
            "hung": hung,
            "blpops_ok": [list(r) for r in results[:CALLS]] == expected,
            "blpop_sample": repr(results[:1]),
            "job_result": results[CALLS].decode() if results else None,
            "cleanup_pids": cleanup_pids,
            "pid": os.getpid(),
            "child_pid": pid,
        }
        print("PARENT " + json.dumps(report), flush=True)

    asyncio.run(parent())


def child(url, prefix, inherited_client):
    code = 1
    try:
        # Python 3.12+ clears the running loop in a forked child itself.
        asyncio.events._set_running_loop(None)
        start = greenasync.statistics()
        closed = 0
        for obj in gc.get_objects():
            if isinstance(obj, green_socket.socket) and obj.fileno() >= 0:
                obj.close()
                closed += 1
        gc.collect()

        async def fresh_calls():
            fresh = greenasync.redis.Redis.from_url(url)
            key = f"{prefix}child"
            values = []
            for c in (fresh, inherited_client):
                await c.set(key, f"from {os.getpid()}")
                values.append((await c.get(key)).decode())
                await c.delete(key)
            many = await asyncio.gather(*[fresh.echo(f"e{i}") for i in range(50)])
            fresh.delegate.close()
            return values, many == [f"e{i}".encode() for i in range(50)]

        values, echoes_ok = asyncio.run(fresh_calls())
        report = {
            "start_loops": start.loops, "start_workers": start.workers,
            "start_parked": sum(start.parked.values()),
            "closed_inherited_sockets": closed,
            "values": values, "echoes_ok": echoes_ok,
            "after": {"loops": greenasync.statistics().loops,
                      "calls": greenasync.statistics().calls},
        }
        print("CHILD " + json.dumps(report), flush=True)
        code = 0
    except BaseException as exc:  # reported through the exit status and stderr
        print(f"CHILD-ERROR {exc!r}", file=sys.stderr, flush=True)
    finally:
        os._exit(code)


if __name__ == "__main__":
    main()
