"""bench_tornado's app, one process per alternative: a Tornado handler doing two Redis calls
(GET a 100-byte value, SET it under a second key) and answering with the value.

  greenasync.redis   await r.get(...); await r.set(...) on greenasync.redis.Redis
  redis.asyncio      the same on redis.asyncio.Redis
  thread pool        await IOLoop.run_in_executor(pool, r.get, ...) twice, sync redis.Redis,
                     ThreadPoolExecutor(max_workers=--pool)

Each client: redis-py's defaults, ``max_connections=--pool`` (100: wrk's connections), the
parser class given by --parser for every alternative. Prints "ready" once it serves.

    python benchmarks/_tornado_app.py --kind greenasync.redis --port 8001 --redis-port 6379
"""

import argparse
import asyncio
import concurrent.futures

import redis
import redis.asyncio
import redis.asyncio.connection
import redis.connection
import tornado.ioloop
import tornado.web

KEY, LAST = "tornado:value", "tornado:last"


def make_client(kind, host, port, pool_size, parser):
    hiredis = parser == "hiredis"
    if kind == "redis.asyncio":
        mod = redis.asyncio.connection
        return redis.asyncio.Redis.from_pool(redis.asyncio.ConnectionPool(
            host=host, port=port, max_connections=pool_size,
            parser_class=mod._AsyncHiredisParser if hiredis else mod._AsyncRESP2Parser))
    pool = redis.ConnectionPool(
        host=host, port=port, max_connections=pool_size,
        parser_class=redis.connection._HiredisParser if hiredis else redis.connection._RESP2Parser)
    if kind == "greenasync.redis":
        import greenasync.redis

        return greenasync.redis.Redis.from_pool(pool)
    if kind == "thread pool":
        return redis.Redis.from_pool(pool)
    raise ValueError(kind)


class AsyncHandler(tornado.web.RequestHandler):
    def initialize(self, r):
        self.r = r

    async def get(self):
        value = await self.r.get(KEY)
        await self.r.set(LAST, value)
        self.write(value)


class ThreadPoolHandler(tornado.web.RequestHandler):
    def initialize(self, r, pool):
        self.r, self.pool = r, pool

    async def get(self):
        loop = tornado.ioloop.IOLoop.current()
        value = await loop.run_in_executor(self.pool, self.r.get, KEY)
        await loop.run_in_executor(self.pool, self.r.set, LAST, value)
        self.write(value)


async def main(args):
    r = make_client(args.kind, args.redis_host, args.redis_port, args.pool, args.parser)
    if args.kind == "thread pool":
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=args.pool)
        r.set(KEY, b"x" * 100)
        handler = (ThreadPoolHandler, {"r": r, "pool": pool})
    else:
        await r.set(KEY, b"x" * 100)
        handler = (AsyncHandler, {"r": r})
    app = tornado.web.Application([(r"/", *handler)])
    app.listen(args.port, address="127.0.0.1", backlog=1024)
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--kind", required=True,
                        choices=["greenasync.redis", "redis.asyncio", "thread pool"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis-host", default="127.0.0.1")
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--pool", type=int, default=100)
    parser.add_argument("--parser", choices=["hiredis", "python"], default="hiredis")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args()
    factory = asyncio.new_event_loop
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(args))
