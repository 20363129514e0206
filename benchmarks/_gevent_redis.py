"""bench_redis's gevent alternative, in its own process: ``gevent.monkey.patch_all()`` first,
then C greenlets of sync redis-py doing the same SET/GET loop as the other alternatives.
Prints one JSON line: ``_common.summary()`` of the measured phase (ops_s, p50, p99, cpu_op,
fair), as bench_redis computes it for the other alternatives.

    python benchmarks/_gevent_redis.py --port 6379 --concurrency 100 --duration 1 \
        --warmup 0.3 --parser hiredis
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402
import redis.connection  # noqa: E402

from _common import summary  # noqa: E402

VALUE = b"x" * 100


def worker(r, i, deadline, lats, warm):
    key = f"bench:{i}"
    if warm:  # warm-up: every worker does one SET+GET (opens its connection) come what may
        r.set(key, VALUE)
        r.get(key)
    pc = time.perf_counter
    pairs = 0
    while True:
        t0 = pc()
        if t0 >= deadline:
            return pairs
        r.set(key, VALUE)
        t1 = pc()
        r.get(key)
        t2 = pc()
        lats.append(t1 - t0)
        lats.append(t2 - t1)
        pairs += 1


def phase(r, c, duration, warm=False):
    lats = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    deadline = t0 + duration
    workers = [gevent.spawn(worker, r, i, deadline, lats, warm) for i in range(c)]
    gevent.joinall(workers, raise_error=True)
    t1, cpu1 = time.perf_counter(), time.process_time()
    return lats, t1 - t0, cpu1 - cpu0, [w.value for w in workers]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, required=True)
    parser.add_argument("--parser", choices=["hiredis", "python"], required=True)
    args = parser.parse_args()
    parser_class = (redis.connection._HiredisParser if args.parser == "hiredis"
                    else redis.connection._RESP2Parser)
    c = args.concurrency
    r = redis.Redis.from_pool(redis.ConnectionPool(
        host=args.host, port=args.port, max_connections=c, parser_class=parser_class))
    phase(r, c, args.warmup, warm=True)
    gc.collect()
    result = summary(*phase(r, c, args.duration))
    r.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
