"""The README's example: redis-py's own sync client, awaited without threads.

Needs a Redis at REDIS_URL (default redis://127.0.0.1:6379/0).
"""

import asyncio
import os
import time

import redis

import greenasync


@greenasync.wrap(redis.Redis)  # scoped-patches redis-py; every method becomes awaitable
class AsyncRedis:
    pass


async def main():
    r = AsyncRedis.from_sync(redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")))
    try:
        await r.ping()
    except redis.ConnectionError as exc:
        raise SystemExit(f"quickstart needs a Redis server at REDIS_URL: {exc}") from None
    await r.set("greenasync:quickstart", "hello")
    start = time.monotonic()
    # 100 BLPOPs on empty lists, each waiting 1 s: they park together, so this takes ~1 s.
    results = await asyncio.gather(*[r.blpop(f"greenasync:empty:{i}", timeout=1) for i in range(100)])
    print("GET ->", await r.get("greenasync:quickstart"))
    print(f"{len(results)} concurrent BLPOPs timed out together in {time.monotonic() - start:.2f} s")
    await r.delete("greenasync:quickstart")
    await r.close()


if __name__ == "__main__":
    asyncio.run(main())
