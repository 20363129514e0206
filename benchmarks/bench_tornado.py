"""A Tornado app whose handler does two Redis calls, loaded by wrk at 100 connections:
greenasync.redis vs redis.asyncio vs sync redis-py in a thread pool.

Each alternative is benchmarks/_tornado_app.py in its own process on a free port (the same
handler, the same pool size, the same parser class), all three started at once against one
private redis-server. Each is warmed up with a short wrk run; then rounds alternate:
``wrk -t2 -c100 -d<D>s --latency`` against each app in turn. Reported per app: Requests/sec,
wrk's latency percentiles, and the app process's CPU per request (utime + stime from
/proc/<pid>/stat around the run). wrk, the app and redis-server share the machine's cores.

    python benchmarks/bench_tornado.py [--rounds 5] [--duration 10] [--connections 100]
        [--parsers hiredis] [--loops asyncio] [--quick]
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

from _common import (
    Column, PrivateRedis, free_port, goal, machine, paired_ratio, table, versions,
)

HERE = os.path.dirname(os.path.abspath(__file__))
GREEN = "greenasync.redis"
ALTERNATIVES = [GREEN, "redis.asyncio", "thread pool"]
UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def wrk(port, duration, connections, threads=2):
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
         f"http://127.0.0.1:{port}/"], capture_output=True, text=True, check=True).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    percentiles = re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE)
    for pct, value, unit in percentiles:
        result[f"p{pct}"] = float(value) * UNITS[unit]
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["errors"] = (errors.group(1) if errors else "") + (
        f" non-2xx {non2xx.group(1)}" if non2xx else "")
    return result


class App:
    def __init__(self, kind, redis_port, args, parser, loop):
        self.kind, self.port = kind, free_port()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "_tornado_app.py"), "--kind", kind, "--port",
             str(self.port), "--redis-port", str(redis_port), "--pool", str(args.connections),
             "--parser", parser, "--loop", loop], stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise SystemExit(f"the {kind} app did not start")

    def measure(self, duration, connections):
        cpu0 = cpu_of(self.proc.pid)
        result = wrk(self.port, duration, connections)
        result["cpu_req"] = (cpu_of(self.proc.pid) - cpu0) / (result["rps"] * duration)
        if result["errors"].strip():
            print(f"  {self.kind}: wrk reported errors: {result['errors'].strip()}")
        return result

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def run_config(parser, loop, redis_port, args):
    apps = {}
    try:
        for kind in ALTERNATIVES:
            apps[kind] = App(kind, redis_port, args, parser, loop)
        for app in apps.values():  # warm-up: connections, worker greenlets, threads
            app.measure(args.warmup, args.connections)
        results = {kind: [] for kind in ALTERNATIVES}
        for _ in range(args.rounds):
            for kind in ALTERNATIVES:  # A B C, A B C, ...
                results[kind].append(apps[kind].measure(args.duration, args.connections))
    finally:
        for app in apps.values():
            app.stop()
    table(f"[{loop}, {parser}] wrk -t2 -c{args.connections} -d{args.duration}s, "
          "handler = GET + SET", results, GREEN, [
              Column("rps", "req/s", digits=0, ratio="higher", spread=True),
              Column("p50", "p50 ms", scale=1e3, digits=2),
              Column("p90", "p90 ms", scale=1e3, digits=2),
              Column("p99", "p99 ms", scale=1e3, digits=2),
              Column("cpu_req", "CPU µs/req", scale=1e6, digits=0, ratio="lower", width=10),
          ])
    goal(f"[{loop}, {parser}] req/s vs redis.asyncio",
         paired_ratio(results, GREEN, "redis.asyncio", "rps"), ">=", 1.2)
    goal(f"[{loop}, {parser}] req/s vs thread pool",
         paired_ratio(results, GREEN, "thread pool", "rps"), ">=", 2.0)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--warmup", type=int, default=2, help="seconds of the warm-up wrk run")
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--parsers", default="hiredis")
    p.add_argument("--loops", default="asyncio")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 1, 1
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    print(machine())
    print(versions("tornado", "redis", "hiredis", "greenlet", "uvloop"))
    with PrivateRedis("--tcp-backlog", "4096") as server:
        print(f"private redis-server on port {server.port}")
        for loop in args.loops.split(","):
            for parser in args.parsers.split(","):
                run_config(parser, loop, server.port, args)


if __name__ == "__main__":
    main()
