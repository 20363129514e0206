"""MongoDB find_one / insert_one / find-and-drain-1000 at concurrency 1, 10, 100:
greenasync (pymongo in worker greenlets) against Motor 3 and PyMongo Async.

All three talk to the same fast canned-reply server (benchmarks/_mongo_server.py, its own
process: it reads the header and the command name and answers with pre-encoded BSON), so
the clients' own cost dominates. Workload per sample: C workers each repeat one operation for
--duration seconds, after a discarded --warmup phase in which every worker runs it once.

  find_one     coll.find_one({"_id": 1})                (one `find`, singleBatch)
  insert_one   coll.insert_one({...100 B...})           (one `insert`)
  drain 1000   coll.find({}) to a list: 1000 documents  (`find` with 101, one `getMore`)

Alternatives, all with the driver's defaults (maxPoolSize 100, the same URI
``mongodb://127.0.0.1:PORT/?directConnection=true``) and a fresh client per sample:

  greenasync       greenasync.mongo.MongoClient (sync pymongo in worker greenlets)
  Motor 3          motor.motor_asyncio.AsyncIOMotorClient (its stock executor: 5 threads per
                   CPU, MOTOR_MAX_WORKERS unset)
  PyMongo Async    pymongo.AsyncMongoClient

greenasync's patch of pymongo (and gridfs) is removed (``greenasync.unpatch``) while the other
two build and use their clients, so they run the stock library.

    python benchmarks/bench_mongo.py [--rounds 5] [--duration 1] [--concurrency 1,10,100]
        [--ops find_one,insert_one,drain] [--loops asyncio] [--alternatives ...]
        [--plot benchmarks/mongo.png] [--json out.json] [--quick]
"""

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import time

import pymongo

import greenasync
import greenasync.mongo
from _common import (
    alternate_async, goal, loop_factories, machine, medians, paired_ratio, plot, summary,
    summary_columns, table, versions,
)

HERE = os.path.dirname(os.path.abspath(__file__))
GREEN = "greenasync"
ALTERNATIVES = [GREEN, "Motor 3", "PyMongo Async"]
OPS = {"find_one": "find_one", "insert_one": "insert_one", "drain": "drain 1000"}
PAYLOAD = "x" * 100

PATCHED = ("pymongo", "gridfs")  # what importing greenasync.mongo patches


def new_doc():
    return {"name": "new", "payload": PAYLOAD}


# --- the alternatives: each -> ({op name: coroutine function}, async close()) --------------


async def setup(alt, uri):
    if alt == GREEN:
        greenasync.patch(*PATCHED)  # clients built from here on get the cooperative locks
        client = greenasync.mongo.MongoClient(uri)
        one, many = client.bench.one, client.bench.many
        return {
            "find_one": lambda: one.find_one({"_id": 1}),
            "insert_one": lambda: one.insert_one(new_doc()),
            "drain": lambda: many.find({}).to_list(None),
        }, client.close
    greenasync.unpatch(*PATCHED)  # the stock library for the baselines
    if alt == "Motor 3":
        import motor.motor_asyncio

        client = motor.motor_asyncio.AsyncIOMotorClient(uri)
        one, many = client.bench.one, client.bench.many

        async def close():
            client.close()
    elif alt == "PyMongo Async":
        client = pymongo.AsyncMongoClient(uri)
        one, many = client.bench.one, client.bench.many
        close = client.close
    else:
        raise ValueError(alt)
    return {
        "find_one": lambda: one.find_one({"_id": 1}),
        "insert_one": lambda: one.insert_one(new_doc()),
        "drain": lambda: many.find({}).to_list(None),
    }, close


# --- one sample ----------------------------------------------------------------------------


async def worker(op, deadline, lats, warm):
    if warm:  # warm-up: every worker runs the operation once (opens its connection)
        await op()
    pc = time.perf_counter
    done = 0
    while True:
        t0 = pc()
        if t0 >= deadline:
            return done
        await op()
        lats.append(pc() - t0)
        done += 1


async def phase(op, c, duration, warm=False):
    lats = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + duration
    done = await asyncio.gather(*(worker(op, deadline, lats, warm) for _ in range(c)))
    return summary(lats, time.perf_counter() - t0, time.process_time() - cpu0, done)


async def sample(alt, op_name, c, args):
    gc.collect()
    ops, close = await setup(alt, args.uri)
    try:
        op = ops[op_name]
        await phase(op, c, args.warmup, warm=True)
        gc.collect()
        return await phase(op, c, args.duration)
    finally:
        await close()


async def run_config(loop_name, op_name, c, args, all_results):
    results = await alternate_async(args.rounds, args.alternatives,
                                    lambda alt: sample(alt, op_name, c, args),
                                    failures=f"{op_name} C={c}")
    table(f"[{loop_name}] {OPS[op_name]} C={c}", results, GREEN, summary_columns(cpu_digits=0))
    all_results[(loop_name, op_name, c)] = results


def goals(all_results):
    print("\nGoals (greenasync ÷ the baseline, throughput, ratios of medians from this run):")
    met = []
    for (loop_name, op_name, c), res in all_results.items():
        tag = f"[{loop_name}] {OPS[op_name]} C={c}"
        met.append(goal(f"{tag} vs Motor 3", paired_ratio(res, GREEN, "Motor 3", "ops_s"),
                        ">=", 1.2))
        met.append(goal(f"{tag} vs PyMongo Async",
                        paired_ratio(res, GREEN, "PyMongo Async", "ops_s"), ">=", 1.0))
    print(f"  {sum(1 for m in met if m)} of {sum(1 for m in met if m is not None)} met")


class Server:
    """benchmarks/_mongo_server.py in its own process."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "_mongo_server.py")],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.stop()
            raise SystemExit("the canned Mongo server did not start")
        self.port = int(line.split()[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=1.0, help="measured seconds per sample")
    p.add_argument("--warmup", type=float, default=0.3, help="discarded seconds per sample")
    p.add_argument("--concurrency", default="1,10,100")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--loops", default="asyncio")
    p.add_argument("--alternatives", default=",".join(ALTERNATIVES))
    p.add_argument("--plot", help="write a PNG of throughput and p99 against concurrency")
    p.add_argument("--json", help="write every sample as JSON")
    p.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, 0.2, 0.05
        if args.concurrency == p.get_default("concurrency"):
            args.concurrency = "1,100"
    concurrency = [int(x) for x in args.concurrency.split(",")]
    args.alternatives = args.alternatives.split(",")
    unknown = set(args.alternatives) - set(ALTERNATIVES)
    if unknown:
        p.error(f"unknown alternatives {sorted(unknown)}; known: {ALTERNATIVES}")
    print(machine())
    print(versions("pymongo", "motor", "greenlet", "uvloop"))
    print(f"rounds {args.rounds}, {args.duration} s measured + {args.warmup} s warm-up per sample")
    server = Server()
    args.uri = f"mongodb://127.0.0.1:{server.port}/?directConnection=true"
    all_results = {}
    try:
        for loop_name, factory in loop_factories(args.loops.split(",")):
            with asyncio.Runner(loop_factory=factory) as runner:
                for op_name in args.ops.split(","):
                    for c in concurrency:
                        runner.run(run_config(loop_name, op_name, c, args, all_results))
    finally:
        server.stop()
    goals(all_results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([{"loop": k[0], "op": k[1], "concurrency": k[2], "results": v}
                       for k, v in all_results.items()], f, indent=1)
    if args.plot:
        panels = {}
        for (loop_name, op_name, c), res in all_results.items():
            series = panels.setdefault(f"{loop_name}, {OPS[op_name]}", {})
            for alt, samples in res.items():
                if medians(samples, "ops_s") is not None:
                    series.setdefault(alt, {})[c] = (medians(samples, "ops_s"),
                                                     medians(samples, "p99"))
        plot(args.plot, "MongoDB (canned-reply server): greenasync vs Motor 3 vs PyMongo Async",
             list(panels.items()))


if __name__ == "__main__":
    main()
