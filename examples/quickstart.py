"""The README's example: redis-py's own sync client, awaited without threads.

Needs a Redis at REDIS_URL (default redis://127.0.0.1:6379/0).
"""

import asyncio
import os
import time

import redis

import greenasync

greenasync.patch("redis")  # only redis-py's modules see the cooperative shims


async def main():
    client = redis.Redis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        await greenasync.run(client.ping)
    except redis.ConnectionError as exc:
        raise SystemExit(f"quickstart needs a Redis server at REDIS_URL: {exc}") from None
    await greenasync.run(client.set, "greenasync:quickstart", "hello")
    start = time.monotonic()
    # 100 BLPOPs on empty lists, each waiting 1 s: they park together, so this takes ~1 s.
    waits = [greenasync.run(client.blpop, f"greenasync:empty:{i}", timeout=1) for i in range(100)]
    results = await asyncio.gather(*waits)
    print("GET ->", await greenasync.run(client.get, "greenasync:quickstart"))
    print(f"{len(results)} concurrent BLPOPs timed out together in {time.monotonic() - start:.2f} s")
    await greenasync.run(client.delete, "greenasync:quickstart")
    client.close()


if __name__ == "__main__":
    asyncio.run(main())
