"""A misbehaving network between the client and the real Redis (tests/reliability/_proxy.py).

The wrapped client (``greenasync.redis``, ``socket_timeout=0.3``, no retries) talks to Redis
through a proxy that delays, stalls, truncates or resets the server's replies, or resets new
connections. In every phase 20 concurrent calls each end with redis-py's own outcome: the
right reply, ``redis.TimeoutError`` at the socket timeout, or ``redis.ConnectionError``;
nothing hangs (each phase is bounded), the loop keeps ticking, and once the proxy behaves
again the same client gets correct replies (a late reply to a timed-out call is never read
by a later one: redis-py drops that connection).

A sync test per loop kind: asyncio and uvloop (Tornado's IOLoop runs on asyncio's loop).
"""

import asyncio
import time
import urllib.parse
import uuid

import pytest
import redis

import greenasync.redis as gr

from ._proxy import FaultProxy

N = 20
TIMEOUT = 0.3  # socket_timeout of the client


async def faults(upstream, ticker_cls):
    proxy = FaultProxy(*upstream)
    r = gr.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=TIMEOUT,
                 socket_connect_timeout=1.0, retry=None)
    report = {}
    try:
        async def one(i):
            token = f"{uuid.uuid4().hex}-{i}"
            start = time.monotonic()
            try:
                got = await r.echo(token)
                outcome = "ok" if got == token.encode() else f"WRONG {got!r}"
            except redis.TimeoutError:
                outcome = "TimeoutError"
            except redis.ConnectionError:
                outcome = "ConnectionError"
            return outcome, time.monotonic() - start

        async def phase(name, mode, delay=0.0, fresh=False, cancel_after=None):
            if fresh:
                r.delegate.connection_pool.disconnect()  # the calls need new connections
            proxy.set(mode, delay)
            tasks = [asyncio.ensure_future(one(i)) for i in range(N)]
            if cancel_after is not None:
                await asyncio.sleep(cancel_after)
                for task in tasks:
                    task.cancel()
            done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
            results = [("CancelledError", cancel_after) if isinstance(x, asyncio.CancelledError)
                       else x for x in done]
            outcomes = sorted({o for o, _ in results})
            times = [t for _, t in results]
            report[name] = (outcomes, round(min(times), 3), round(max(times), 3))
            proxy.set("pass")
            # Replies the proxy still holds (delay) reach sockets redis-py has closed.
            await asyncio.sleep(delay + 0.05 if delay else 0)
            results = await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(N)]), 10)
            report[name + " -> recovered"] = sorted({o for o, _ in results})

        async with ticker_cls() as t:
            await phase("pass", "pass")
            await phase("delay 0.05 s", "delay", 0.05)
            await phase("delay 0.6 s", "delay", 0.6)
            await phase("cancelled while the reply is delayed", "delay", 0.2, cancel_after=0.1)
            await phase("stall", "stall")
            await phase("truncate", "truncate")
            await phase("reset", "reset")
            await phase("reset new connections", "refuse", fresh=True)
        report["max loop gap"] = round(t.max_gap, 3)
        report["proxy faults"] = proxy.faults
    finally:
        r.delegate.close()
        r.delegate.connection_pool.disconnect()
        proxy.close()
    return report


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_proxy_faults_raise_redis_errors_and_the_client_recovers(kind, redis_url, ticker):
    from conftest import run_on

    parts = urllib.parse.urlparse(redis_url)
    report = run_on(kind, faults, (parts.hostname or "127.0.0.1", parts.port or 6379), ticker)
    figures = f"{kind}: {report}"

    def outcome(name):
        return report[name][0]

    assert outcome("pass") == ["ok"], figures
    assert outcome("delay 0.05 s") == ["ok"] and report["delay 0.05 s"][1] >= 0.04, figures
    assert outcome("cancelled while the reply is delayed") == ["CancelledError"], figures
    for name in ("delay 0.6 s", "stall"):
        outcomes, fastest, slowest = report[name]
        assert outcomes == ["TimeoutError"], figures
        assert TIMEOUT * 0.9 <= fastest and slowest < TIMEOUT + 1.0, figures
    for name in ("truncate", "reset", "reset new connections"):
        outcomes, _, slowest = report[name]
        assert outcomes == ["ConnectionError"], figures
        assert slowest < TIMEOUT + 1.0, figures
    for name in [k for k in report if k.endswith("recovered")]:
        assert report[name] == ["ok"], figures
    assert report["max loop gap"] < 0.25, figures
    print(f"\n{figures}")
