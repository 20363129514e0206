"""Per-call cost of greenasync.run against every way of calling sync code from a coroutine.

Two workloads, each a sequential loop of awaited calls:

* trivial: a function that returns at once;
* park-once: a function that reads one byte from a socketpair whose peer writes only after
  the call has started (a loop callback sends the byte), so every call waits once.

Alternatives, measured in the same process and alternating rounds so machine noise hits all
of them alike: greenasync.run, loop.run_in_executor (default pool), asyncio.to_thread,
asgiref's sync_to_async (if installed), and a bare ``await asyncio.sleep(0)`` (one loop
iteration: the floor for anything that yields). Runs on asyncio and on uvloop.

    python benchmarks/bench_overhead.py [--rounds 7] [--calls 20000] [--quick]
"""

import argparse
import asyncio
import socket
import time

import greenasync
from _common import alternate_async, loop_factories, machine, report

try:
    from asgiref.sync import sync_to_async
except ImportError:  # optional baseline
    sync_to_async = None


def trivial():
    return None


async def bench_trivial(kind, calls):
    loop = asyncio.get_running_loop()
    if kind == "greenasync.run":
        call = lambda: greenasync.run(trivial)  # noqa: E731
    elif kind == "run_in_executor":
        call = lambda: loop.run_in_executor(None, trivial)  # noqa: E731
    elif kind == "asyncio.to_thread":
        call = lambda: asyncio.to_thread(trivial)  # noqa: E731
    elif kind == "asgiref sync_to_async":
        fn = sync_to_async(trivial, thread_sensitive=False)
        call = fn
    elif kind == "asyncio.sleep(0)":
        call = lambda: asyncio.sleep(0)  # noqa: E731
    start = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - start) / calls


async def bench_park_once(kind, calls):
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    with a, b:
        if kind == "greenasync.run":
            a.setblocking(False)

            def read_one():
                greenasync.wait_readable(a)  # parks: the byte is not there yet
                return a.recv(1)

            call = lambda: greenasync.run(read_one)  # noqa: E731
        elif kind == "asyncio.sleep(0)":
            a.setblocking(False)

            async def call():  # the floor: one loop iteration, then the read
                await asyncio.sleep(0)
                return a.recv(1)
        else:
            a.setblocking(True)
            if kind == "run_in_executor":
                call = lambda: loop.run_in_executor(None, a.recv, 1)  # noqa: E731
            elif kind == "asyncio.to_thread":
                call = lambda: asyncio.to_thread(a.recv, 1)  # noqa: E731
            elif kind == "asgiref sync_to_async":
                call = lambda: sync_to_async(a.recv, thread_sensitive=False)(1)  # noqa: E731
        start = time.perf_counter()
        for _ in range(calls):
            loop.call_soon(b.send, b"x")
            await call()
        return (time.perf_counter() - start) / calls


def kinds():
    names = ["greenasync.run", "run_in_executor", "asyncio.to_thread"]
    if sync_to_async is not None:
        names.append("asgiref sync_to_async")
    names.append("asyncio.sleep(0)")
    return names


async def measure(workload, rounds, calls):
    slow_calls = max(500, calls // 20)  # thread hops are ~20x slower: fewer calls, same time

    def one(kind):  # kinds alternate inside each round
        fast = kind in ("greenasync.run", "asyncio.sleep(0)")
        return workload(kind, calls if fast else slow_calls)

    return await alternate_async(rounds, kinds(), one)


def show(title, results):
    report(title, results, "greenasync.run", unit="µs", scale=1e6)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--quick", action="store_true", help="a few seconds' smoke run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.calls = 2, 2000
    print(machine())
    for name, factory in loop_factories(["asyncio", "uvloop"]):
        with asyncio.Runner(loop_factory=factory) as runner:
            show(f"[{name}] trivial call",
                 runner.run(measure(bench_trivial, args.rounds, args.calls)))
            show(f"[{name}] call that parks once on a socketpair",
                 runner.run(measure(bench_park_once, args.rounds, args.calls)))


if __name__ == "__main__":
    main()
