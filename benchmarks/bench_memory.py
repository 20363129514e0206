"""Memory with many calls parked at once: N concurrent BLPOPs on empty keys (N = 1,000 and
10,000) through greenasync.redis, redis.asyncio and sync redis-py in N threads.

Each sample is a fresh child process (this script with --child) that imports the same
modules (redis, redis.asyncio, greenasync.redis; the redis patch is removed for the two
baselines, as in bench_redis), builds its client, does one PING, reports its baseline
VmRSS, then starts N ``BLPOP mem:<i> 0`` calls, each on its own connection:

  greenasync.redis   N tasks awaiting greenasync.redis.Redis.blpop (N parked worker greenlets)
  redis.asyncio      N tasks awaiting redis.asyncio.Redis.blpop
  threads            ThreadPoolExecutor(max_workers=N), N sync redis.Redis.blpop calls
                     (reported if the process cannot start N threads)

Every client: redis-py's defaults except ``host="127.0.0.1"`` (no DNS: "localhost" costs a
getaddrinfo in a thread per connection), ``socket_timeout=None`` (a 0 BLPOP timeout blocks
forever; the default 5 s socket timeout would cut it), ``socket_connect_timeout=None`` (10,000
connects at once overflow the listen backlog; a SYN retransmitted after 1 + 3 s then hits the
default 5 s connect timeout and redis-py's retries turn that into churn: measured, redis.asyncio
then never parked them all) and ``max_connections=N`` (redis-py 8's default pool stops at
100). The parser class is forced for all three, once per --parsers entry: "hiredis"
(``_HiredisParser``/``_AsyncHiredisParser``; the sync one preallocates a 64 KiB read buffer
per connection) and "python" (``_RESP2Parser``/``_AsyncRESP2Parser``).

The parent watches the server's ``blocked_clients`` until all N are parked (or neither the
parked nor the connected count moved for --stall seconds), waits --settle seconds, reads the
child's VmRSS from /proc/<pid>/status and kills it. "park s" is how long parking all N took.
The server is a private redis-server with ``--maxclients`` above 2N and ``--tcp-backlog
4096``; the children raise their soft RLIMIT_NOFILE to the hard limit. Samples alternate
between the alternatives, round by round; ratios are to redis.asyncio.

--traced splits the memory: each child starts tracemalloc after its baseline, and once the
calls are parked reports (on SIGUSR1 from the parent) the Python heap they hold: every
allocation of CPython's allocators, greenlet's copies of parked C stacks included, and not
the interpreter's data stacks (mmap) or what the allocators keep after frees. tracemalloc's
own tables add to RSS, so a --traced run reports no goal: read its "traced" column beside
the RSS of a run without it.

    python benchmarks/bench_memory.py [--rounds 3] [--calls 1000,10000] [--parsers hiredis,python]
        [--traced] [--quick]
"""

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

from _common import Column, PrivateRedis, goal, machine, paired_ratio, raise_nofile, table, versions

GREEN = "greenasync.redis"
ALTERNATIVES = [GREEN, "redis.asyncio", "threads"]
BACKLOG = 4096  # the server's listen backlog (Linux caps it at net.core.somaxconn)


def rss_kb(pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return None


# --- the child ----------------------------------------------------------------------------


def child(alt, n, port, parser, traced):
    import concurrent.futures

    import redis
    import redis.asyncio
    import redis.asyncio.connection
    import redis.connection

    import greenasync
    import greenasync.redis

    raise_nofile(1 << 20)
    settings = dict(host="127.0.0.1", port=port, socket_timeout=None, socket_connect_timeout=None,
                    max_connections=n)
    hiredis = parser == "hiredis"
    sync_pool = lambda: redis.ConnectionPool(  # noqa: E731
        parser_class=redis.connection._HiredisParser if hiredis else redis.connection._RESP2Parser,
        **settings)

    def say(**kw):
        print(json.dumps(kw), flush=True)

    def baseline():
        say(baseline=rss_kb())
        if traced:  # from here on: what the parked calls allocate (see --traced)
            import tracemalloc

            tracemalloc.start()
            signal.signal(signal.SIGUSR1,
                          lambda *_: say(traced=tracemalloc.get_traced_memory()[0]))

    if alt == "threads":
        greenasync.unpatch("redis")
        r = redis.Redis.from_pool(sync_pool())
        r.ping()
        baseline()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=n)
        futures = []
        try:
            for i in range(n):
                futures.append(pool.submit(r.blpop, f"mem:{i}", 0))
        except RuntimeError as exc:  # can't start new thread
            say(error=f"{type(exc).__name__}: {exc} after {len(futures)} threads")
        say(started=len(futures))
        done, _ = concurrent.futures.wait(futures, timeout=3600, return_when="FIRST_EXCEPTION")
        for f in done:
            if f.exception():
                say(error=repr(f.exception()))
                break
        time.sleep(3600)
        return

    async def main():
        if alt == GREEN:
            r = greenasync.redis.Redis.from_pool(sync_pool())
        else:
            greenasync.unpatch("redis")
            mod = redis.asyncio.connection
            r = redis.asyncio.Redis.from_pool(redis.asyncio.ConnectionPool(
                parser_class=mod._AsyncHiredisParser if hiredis else mod._AsyncRESP2Parser,
                **settings))
        await r.ping()
        baseline()
        tasks = [asyncio.ensure_future(r.blpop(f"mem:{i}", 0)) for i in range(n)]
        say(started=len(tasks))
        done, _ = await asyncio.wait(tasks, timeout=3600, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception():
                say(error=repr(t.exception()))
                break

    asyncio.run(main())


# --- the parent ---------------------------------------------------------------------------


def blocked(server):
    info = server.command("INFO", "clients")
    return info["blocked_clients"], info["connected_clients"]


def sample(alt, n, parser, server, args):
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--child", alt, "--n", str(n), "--port",
         str(server.port), "--parser", parser] + (["--traced"] if args.traced else []),
        stdout=subprocess.PIPE, text=True)
    try:
        first = json.loads(proc.stdout.readline() or "{}")
        if "baseline" not in first:
            print(f"  {alt}: child failed before its baseline")
            return None
        started = time.monotonic()
        last, last_at = None, started
        while True:  # until all N are parked, or neither count moved for --stall seconds
            count, connected = blocked(server)
            now = time.monotonic()
            if (count, connected) != last:
                last, last_at = (count, connected), now
            if count >= n or proc.poll() is not None or now - last_at > args.stall:
                break
            time.sleep(0.1)
        park_time = last_at - started
        time.sleep(args.settle)
        if args.traced and proc.poll() is None:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
        rss = rss_kb(proc.pid) if proc.poll() is None else None
        count, _ = blocked(server)
    finally:
        proc.kill()
        out, _ = proc.communicate()
    traced = None
    for line in out.splitlines():
        msg = json.loads(line)
        if "error" in msg:
            print(f"  {alt} N={n} {parser}: {msg['error']}")
        traced = msg.get("traced", traced)
    # Wait for the server to drop the dead child's connections before the next sample.
    deadline = time.monotonic() + 60
    while blocked(server)[1] > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    if rss is None:
        return None
    base = first["baseline"]
    return {"rss": rss * 1024, "base": base * 1024, "delta": (rss - base) * 1024,
            "per_call": (rss - base) * 1024 / max(count, 1), "parked": count,
            "traced_call": None if traced is None else traced / max(count, 1),
            "park_s": park_time, "total_s": time.monotonic() - t0}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", default="1000,10000", help="numbers of parked calls")
    p.add_argument("--settle", type=float, default=1.0, help="seconds between parked and RSS")
    p.add_argument("--stall", type=float, default=20.0,
                   help="give up waiting when the parked and connected counts stood still "
                        "this long")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    p.add_argument("--parsers", default="hiredis,python")
    p.add_argument("--traced", action="store_true",
                   help="also report the Python heap held per parked call (tracemalloc)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--parser", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.n, args.port, args.parser, args.traced)
    if args.quick:
        args.rounds, args.settle = 1, 0.3
        if args.calls == p.get_default("calls"):
            args.calls = "1000"
    calls = [int(x) for x in args.calls.split(",")]
    print(machine())
    print(versions("redis", "hiredis", "greenlet"))
    nofile = raise_nofile(1 << 20)
    print(f"RLIMIT_NOFILE soft limit (children inherit it): {nofile}")
    with PrivateRedis("--maxclients", str(2 * max(calls) + 100), "--tcp-backlog", str(BACKLOG),
                      nofile=1 << 20) as server:
        maxclients = int(server.command("CONFIG", "GET", "maxclients")["maxclients"])
        print(f"private redis-server on port {server.port}, maxclients {maxclients}")
        if maxclients < max(calls) + 10:
            raise SystemExit("redis-server could not raise maxclients (its fd limit): "
                             "raise the hard RLIMIT_NOFILE")
        for parser in args.parsers.split(","):
            for n in calls:
                run_config(n, parser, server, args)


def run_config(n, parser, server, args):
    results = {alt: [] for alt in ALTERNATIVES}
    for _ in range(args.rounds):
        for alt in ALTERNATIVES:  # A B C, A B C, ...
            results[alt].append(sample(alt, n, parser, server, args))
    table(f"N = {n} parked BLPOPs, {parser} parser", results, "redis.asyncio", [
        Column("parked", "parked", digits=0, width=7),
        Column("base", "base MB", scale=1e-6, digits=1, width=8),
        Column("rss", "RSS MB", scale=1e-6, digits=1, ratio="lower", spread=True, width=8),
        Column("delta", "Δ MB", scale=1e-6, digits=1, ratio="lower", width=8),
        Column("per_call", "KB/call", scale=1e-3, digits=1, width=8),
    ] + ([Column("traced_call", "traced KB/call", scale=1e-3, digits=1, width=15)]
         if args.traced else []) + [
        Column("park_s", "park s", digits=2, width=7),
    ])
    print("  (ratios: × redis.asyncio)")
    if args.traced:
        print("  (--traced: RSS includes tracemalloc's own tables; no goal is read from it)")
    elif n >= 10000:
        goal(f"N={n} {parser}: greenasync RSS ÷ redis.asyncio RSS",
             paired_ratio(results, GREEN, "redis.asyncio", "rss"), "<=", 1.25)


if __name__ == "__main__":
    main()
