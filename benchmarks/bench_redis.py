"""Redis GET/SET at concurrency 1–1000: greenasync.redis against the other ways to reach Redis
from asyncio. Throughput, p50/p99 latency, client CPU per operation.

Workload: C workers, each on its own key, alternating SET key <100 B> and GET key for
--duration seconds (after a --warmup phase that opens every connection and is discarded).
An operation is one SET or one GET; its latency is timed around the single await.
Throughput = operations ÷ the time until the last worker stopped (a worker starved past the
deadline lowers it). "fair" = the least busy worker's operations ÷ the mean: 1 when every
worker was served alike, near 0 when some starved (convoys). CPU = ``time.process_time()``
of the client process (all its threads) ÷ operations.

Alternatives (all redis-py based ones get the same settings: redis-py's defaults, RESP2,
``max_connections=C``, the same parser class; one connection per concurrent call):

  greenasync.redis     greenasync.redis.Redis: sync redis-py in worker greenlets
  redis.asyncio        redis.asyncio.Redis
  thread pool          sync redis.Redis via loop.run_in_executor, ThreadPoolExecutor(C)
  gevent               sync redis-py after gevent.monkey.patch_all(), C greenlets, in a
                       separate process (benchmarks/_gevent_redis.py); its own loop, so its
                       numbers do not depend on the asyncio/uvloop setting
  raw RESP (floor)     a minimal asyncio Protocol, one connection per worker, parsing only
                       the `$N` / `+OK` replies it gets: what the loop itself costs
  redis-py sync        (C=1 only) a plain sync loop, no event loop: the CPU-per-op reference

"hiredis" / "python": redis-py's hiredis parser vs its pure-Python RESP2 parser
(``_HiredisParser``/``_RESP2Parser``, ``_AsyncHiredisParser``/``_AsyncRESP2Parser``), forced
explicitly for every redis-py based alternative (the raw protocol has its own parser).
Importing greenasync.redis scope-patches redis-py; the other alternatives run with the patch
removed (``greenasync.unpatch("redis")``), so they run exactly the stock library.
The server is a private redis-server on a free port (``--url`` to use another).

    python benchmarks/bench_redis.py [--rounds 5] [--duration 1] [--concurrency 1,10,100,1000]
        [--loops asyncio,uvloop] [--parsers hiredis,python] [--plot benchmarks/redis.png]
        [--json out.json] [--quick]
"""

import argparse
import asyncio
import concurrent.futures
import gc
import json
import os
import subprocess
import sys
import time
import urllib.parse

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.connection

import greenasync
import greenasync.redis
from _common import (
    PrivateRedis, alternate_async, goal, loop_factories, machine, medians, paired_ratio, plot,
    raise_nofile, summary, summary_columns, table, versions,
)

VALUE = b"x" * 100
HERE = os.path.dirname(os.path.abspath(__file__))
GREEN = "greenasync.redis"
ALTERNATIVES = [GREEN, "redis.asyncio", "thread pool", "gevent", "raw RESP (floor)",
                "redis-py sync"]


def sync_parser(name):
    return redis.connection._HiredisParser if name == "hiredis" else redis.connection._RESP2Parser


def async_parser(name):
    mod = redis.asyncio.connection
    return mod._AsyncHiredisParser if name == "hiredis" else mod._AsyncRESP2Parser


def sync_client(host, port, c, parser):
    return redis.Redis.from_pool(redis.ConnectionPool(
        host=host, port=port, max_connections=c, parser_class=sync_parser(parser)))


# --- the raw protocol floor ---------------------------------------------------------------


class RespProtocol(asyncio.Protocol):
    """One connection, one request in flight; parses `$N\\r\\n<N bytes>\\r\\n`, `$-1`, `+OK`."""

    def __init__(self):
        self.buf = bytearray()
        self.waiter = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        buf = self.buf
        buf += data
        end = buf.find(b"\r\n")
        if end < 0:
            return
        kind = buf[0]
        if kind == 36:  # $
            n = int(buf[1:end])
            total = end + 2 if n < 0 else end + 4 + n
            if len(buf) < total:
                return
            value = None if n < 0 else bytes(buf[end + 2:end + 2 + n])
        elif kind == 43:  # +
            total, value = end + 2, bytes(buf[1:end])
        else:
            total, value = end + 2, RuntimeError(bytes(buf[:end]).decode())
        del buf[:total]
        waiter, self.waiter = self.waiter, None
        if isinstance(value, Exception):
            waiter.set_exception(value)
        else:
            waiter.set_result(value)

    def connection_lost(self, exc):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc or ConnectionError("connection lost"))

    def request(self, payload):
        self.waiter = fut = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return fut


def resp_ops(proto):
    def set_(key, value):
        k = key.encode()
        return proto.request(b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
                             % (len(k), k, len(value), value))

    def get(key):
        k = key.encode()
        return proto.request(b"*2\r\n$3\r\nGET\r\n$%d\r\n%b\r\n" % (len(k), k))

    return set_, get


# --- one sample: set up, warm up, measure, tear down --------------------------------------


async def worker(ops, i, deadline, lats, warm):
    """SET/GET pairs until the deadline; returns how many pairs this worker did."""
    set_, get = ops
    key = f"bench:{i}"
    if warm:  # warm-up: every worker does one SET+GET (opens its connection) come what may
        await set_(key, VALUE)
        await get(key)
    pc = time.perf_counter
    pairs = 0
    while True:
        t0 = pc()
        if t0 >= deadline:
            return pairs
        await set_(key, VALUE)
        t1 = pc()
        await get(key)
        t2 = pc()
        lats.append(t1 - t0)
        lats.append(t2 - t1)
        pairs += 1


async def phase(ops_for, c, duration, warm=False):
    lats = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + duration
    pairs = await asyncio.gather(*(worker(ops_for(i), i, deadline, lats, warm) for i in range(c)))
    t1, cpu1 = time.perf_counter(), time.process_time()
    return lats, t1 - t0, cpu1 - cpu0, pairs


async def setup(alt, c, parser, host, port):
    """-> (ops_for(i) -> (set, get) coroutine functions, async close())."""
    loop = asyncio.get_running_loop()
    if alt == GREEN:
        greenasync.patch("redis")  # sockets made from here on are the cooperative ones
        r = greenasync.redis.Redis.from_pool(redis.ConnectionPool(
            host=host, port=port, max_connections=c, parser_class=sync_parser(parser)))
        ops = (r.set, r.get)
        return (lambda i: ops), r.close
    greenasync.unpatch("redis")  # the stock library for every baseline
    if alt == "redis.asyncio":
        r = redis.asyncio.Redis.from_pool(redis.asyncio.ConnectionPool(
            host=host, port=port, max_connections=c, parser_class=async_parser(parser)))
        ops = (r.set, r.get)
        return (lambda i: ops), r.aclose
    if alt == "thread pool":
        r = sync_client(host, port, c, parser)
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=c)
        ops = (lambda k, v: loop.run_in_executor(pool, r.set, k, v),
               lambda k: loop.run_in_executor(pool, r.get, k))

        async def close():
            pool.shutdown(wait=True)
            r.close()

        return (lambda i: ops), close
    if alt == "raw RESP (floor)":
        conns = await asyncio.gather(*(loop.create_connection(RespProtocol, host, port)
                                       for _ in range(c)))
        all_ops = [resp_ops(proto) for _, proto in conns]

        async def close():
            for transport, _ in conns:
                transport.close()

        return (lambda i: all_ops[i]), close
    raise ValueError(alt)


async def sample(alt, c, parser, args):
    host, port = args.host, args.port
    gc.collect()
    if alt == "gevent":
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "_gevent_redis.py"), "--host", host, "--port",
             str(port), "--concurrency", str(c), "--duration", str(args.duration), "--warmup",
             str(args.warmup), "--parser", parser],
            capture_output=True, text=True, timeout=60 + 2 * args.duration)
        if out.returncode:
            print(f"  gevent failed: {out.stderr.strip().splitlines()[-1:]}")
            return None
        return json.loads(out.stdout.splitlines()[-1])  # its summary()
    if alt == "redis-py sync":
        greenasync.unpatch("redis")
        r = sync_client(host, port, 1, parser)

        def run(duration):  # the same loop as worker(), without an event loop
            lats, key, pc = [], "bench:0", time.perf_counter
            cpu0, t0 = time.process_time(), pc()
            deadline = t0 + duration
            while True:
                a = pc()
                if a >= deadline:
                    break
                r.set(key, VALUE)
                b = pc()
                r.get(key)
                lats.append(b - a)
                lats.append(pc() - b)
            return lats, pc() - t0, time.process_time() - cpu0, [len(lats) // 2]

        run(args.warmup)
        gc.collect()
        result = summary(*run(args.duration))
        r.close()
        return result
    ops_for, close = await setup(alt, c, parser, host, port)
    try:
        await phase(ops_for, c, args.warmup, warm=True)
        gc.collect()
        return summary(*await phase(ops_for, c, args.duration))
    finally:
        await close()


async def run_config(loop_name, parser, c, args, all_results):
    alts = [a for a in args.alternatives if a != "redis-py sync" or c == 1]
    results = await alternate_async(args.rounds, alts, lambda alt: sample(alt, c, parser, args),
                                    failures=f"C={c} {parser}")
    table(f"[{loop_name}, {parser}] C={c}", results, GREEN, summary_columns(cpu_digits=1))
    all_results[(loop_name, parser, c)] = results


def goals(all_results, concurrency):
    print("\nGoals (greenasync.redis ÷ the baseline, ratios of medians from this run):")
    met = []
    for (loop_name, parser, c), res in all_results.items():
        tag = f"[{loop_name}, {parser}] C={c}"
        target = 1.1 if c >= 1000 else 1.3
        met.append(goal(f"{tag} throughput vs redis.asyncio",
                        paired_ratio(res, GREEN, "redis.asyncio", "ops_s"), ">=", target))
        if c >= 10:
            met.append(goal(f"{tag} throughput vs thread pool",
                            paired_ratio(res, GREEN, "thread pool", "ops_s"), ">=", 2.5))
        if c == 1:
            met.append(goal(f"{tag} CPU/op vs redis-py sync",
                            paired_ratio(res, GREEN, "redis-py sync", "cpu_op"), "<=", 1.2))
        if c == 100:
            samples = res.get(GREEN, [])
            p50, p99 = medians(samples, "p50"), medians(samples, "p99")
            if p50 and p99:
                per = [s["p99"] / s["p50"] for s in samples if s]
                met.append(goal(f"{tag} greenasync p99 ÷ p50", (p99 / p50, min(per), max(per)),
                                "<=", 3))
    print(f"  {sum(1 for m in met if m)} of {sum(1 for m in met if m is not None)} met")


def plot_results(path, all_results):
    panels = {}
    for (loop_name, parser, c), res in all_results.items():
        series = panels.setdefault(f"{loop_name}, {parser}", {})
        for alt, samples in res.items():
            tp, p99 = medians(samples, "ops_s"), medians(samples, "p99")
            if tp is not None:
                series.setdefault(alt, {})[c] = (tp, p99)
    plot(path, "Redis SET/GET 100 B: greenasync.redis vs alternatives", list(panels.items()))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=1.0, help="measured seconds per sample")
    p.add_argument("--warmup", type=float, default=0.3, help="discarded seconds per sample")
    p.add_argument("--concurrency", default="1,10,100,1000")
    p.add_argument("--loops", default="asyncio,uvloop")
    p.add_argument("--parsers", default="hiredis,python")
    p.add_argument("--alternatives", default=",".join(ALTERNATIVES))
    p.add_argument("--url", help="an existing Redis (default: a private redis-server)")
    p.add_argument("--plot", help="write a PNG of throughput and p99 against concurrency")
    p.add_argument("--json", help="write every sample as JSON")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 0.1, 0.05
        if args.concurrency == p.get_default("concurrency"):
            args.concurrency = "1,100"
    args.alternatives = args.alternatives.split(",")
    unknown = set(args.alternatives) - set(ALTERNATIVES)
    if unknown:
        p.error(f"unknown alternatives {sorted(unknown)}; known: {ALTERNATIVES}")
    concurrency = [int(x) for x in args.concurrency.split(",")]
    raise_nofile(4 * max(concurrency) + 1024)
    print(machine())
    print(versions("redis", "hiredis", "greenlet", "uvloop", "gevent"))
    print(f"rounds {args.rounds}, {args.duration} s measured + {args.warmup} s warm-up per sample")

    server = None
    if args.url:
        parts = urllib.parse.urlparse(args.url)
        args.host, args.port = parts.hostname or "127.0.0.1", parts.port or 6379
    else:
        server = PrivateRedis("--maxclients", str(4 * max(concurrency) + 1000),
                              "--tcp-backlog", "4096",
                              nofile=4 * max(concurrency) + 2048)
        args.host, args.port = "127.0.0.1", server.port
        print(f"private redis-server on port {server.port}")
    all_results = {}
    try:
        for loop_name, factory in loop_factories(args.loops.split(",")):
            with asyncio.Runner(loop_factory=factory) as runner:
                for parser in args.parsers.split(","):
                    for c in concurrency:
                        runner.run(run_config(loop_name, parser, c, args, all_results))
    finally:
        if server:
            server.stop()
    goals(all_results, concurrency)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"loop": k[0], "parser": k[1], "concurrency": k[2], "results": v}
                       for k, v in all_results.items()], f, indent=1)
    if args.plot:
        plot_results(args.plot, all_results)


if __name__ == "__main__":
    main()
