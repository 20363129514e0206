"""A Tornado auth service that fails open when its third-party check is flaky.

POST /login {"user": "alice"} asks a third-party check whether alice may log in. The check is
simulated in this process (/thirdparty/check, called over real HTTP): driven by a seeded RNG
it answers, fails with a 503, or stalls past our timeout. Every failed check is counted in
Redis, one key per time window, so all instances of the service share the count. Up to
--threshold failures in the current window a failed check refuses the login (503, retry);
above it the provider is deemed down and the service fails OPEN: the login goes through and
a warning names the count. A real answer from the provider, "no" included, always wins.

Redis is redis-py's plain blocking client made awaitable by greenasync.wrap: each call runs
redis-py's unchanged code in a worker greenlet on the loop thread. No threads, no aioredis.

    python examples/auth_service.py                # serve on 127.0.0.1:8888 until Ctrl-C
    curl -d '{"user": "alice"}' http://127.0.0.1:8888/login
    python examples/auth_service.py --selftest     # fire N concurrent logins, summarize, exit

REDIS_URL (default redis://127.0.0.1:6379/0) names the Redis. If none answers there, an
embedded fakeredis server (real RESP over a real socket) starts on a free loopback port.
"""

import argparse
import asyncio
import json
import logging
import os
import random
import re
import threading
import time
import uuid

import redis
import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

import greenasync

log = logging.getLogger("auth_service")


@greenasync.wrap(redis.client.Pipeline)
class AsyncPipeline:
    incr = greenasync.Chain()    # buffers the command (no I/O) and returns the pipeline
    expire = greenasync.Chain()  # execute() stays a coroutine: it does the round trip


@greenasync.wrap(redis.Redis)  # also scoped-patches the redis package (and only it)
class AsyncRedis:
    from_url = greenasync.SyncMethod()    # no I/O (connections open lazily): no await
    pipeline = greenasync.SyncMethod()    # no I/O: comes back as an AsyncPipeline at once
    scan_iter = greenasync.AsyncIter()    # `async for key in r.scan_iter(...)`


class ThirdPartyCheck(tornado.web.RequestHandler):
    """The simulated provider: slow, sometimes broken, and says no to every "mallory"."""

    async def post(self):
        app = self.application
        roll, latency = app.rng.random(), app.rng.uniform(0.0, 0.05)  # seeded: same draws
        if roll < app.fail_rate / 2:
            raise tornado.web.HTTPError(503)           # broken
        if roll < app.fail_rate:
            await asyncio.sleep(2 * app.check_timeout)  # stalled: the caller times out
            return
        await asyncio.sleep(latency)
        user = json.loads(self.request.body)["user"]
        self.write({"allowed": not user.startswith("mallory")})


class Login(tornado.web.RequestHandler):
    async def post(self):
        try:
            user = json.loads(self.request.body)["user"]
        except (ValueError, KeyError, TypeError):
            raise tornado.web.HTTPError(400, 'expected a JSON body {"user": "..."}') from None
        app = self.application
        try:
            response = await app.checks.fetch(
                app.check_url, method="POST", body=json.dumps({"user": user}),
                request_timeout=app.check_timeout)
            allowed = json.loads(response.body)["allowed"]
        except (HTTPClientError, OSError, ValueError, KeyError) as exc:
            try:
                failures = await count_failure(app)
            except redis.RedisError as redis_exc:  # cannot count: stay closed, loudly
                log.error("check failed (%s) and Redis too (%s): 503", exc, redis_exc)
                return self.unavailable(user)
            if failures <= app.threshold:  # a blip: fail closed, the user retries
                log.info("check failed (%s), %d/%d this window: 503", exc, failures, app.threshold)
                return self.unavailable(user)
            # Loud: ERROR as the window crosses the threshold, then a WARNING per login let in.
            log.log(logging.ERROR if failures == app.threshold + 1 else logging.WARNING,
                    "FAIL-OPEN: third-party check failed %d times in this %d s window "
                    "(threshold %d); letting %r in unchecked", failures, app.window,
                    app.threshold, user)
            self.write({"user": user, "allowed": True, "fail_open": True})
            return
        self.set_status(200 if allowed else 403)
        self.write({"user": user, "allowed": allowed, "fail_open": False})

    def unavailable(self, user):
        self.set_status(503)
        self.write({"user": user, "error": "auth provider unavailable, retry"})


async def count_failure(app):
    """INCR this window's counter and (re)set its TTL, atomically in one MULTI/EXEC round trip.
    The key names its window, so no reset is needed: it expires two windows later."""
    key = f"{app.prefix}:failures:{int(time.time() // app.window)}"
    failures, _ = await app.redis.pipeline().incr(key).expire(key, 2 * app.window).execute()
    return failures


def redacted(url):
    return re.sub(r"//[^@/]*@", "//***@", url)  # no password in logs


def redis_or_embedded(url):
    """REDIS_URL if a Redis answers there, else an embedded fakeredis: (url, server or None).
    Runs before the loop starts, as plain blocking redis-py: outside a greenlet the patched
    names behave exactly like the stdlib, so the sync client needs nothing special here."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1) as probe:
            probe.ping()
        return url, None
    except redis.ConnectionError as exc:
        log.warning("no Redis at %s (%s)", redacted(url), exc)
    try:
        from fakeredis import TcpFakeServer
    except ImportError:
        raise SystemExit("no Redis reachable and fakeredis not installed: pip install fakeredis")
    server = TcpFakeServer(("127.0.0.1", 0))  # port 0: a free one; served by its own threads
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     name="fakeredis", daemon=True).start()
    url = "redis://%s:%d/0" % server.server_address
    log.warning("EMBEDDED REDIS: started fakeredis at %s (in-process, data lost at exit)", url)
    return url, server


async def selftest(app, base, n):
    """POST n concurrent logins to ourselves, print a summary; True if the counts add up."""
    users = [f"mallory{i}" if i % 5 == 0 else f"user{i}" for i in range(n)]
    # A client of our own: sharing the app's would let n waiting logins fill its slots and
    # starve the provider calls those very logins are waiting on.
    client = AsyncHTTPClient(force_instance=True, max_clients=n)
    start = time.monotonic()
    responses = await asyncio.gather(*(
        client.fetch(base + "/login", method="POST", body=json.dumps({"user": u}),
                     raise_error=False, request_timeout=30) for u in users))
    client.close()
    print(f"selftest: {n} concurrent logins in {time.monotonic() - start:.2f} s, redis "
          f"{redacted(app.redis_url)}{' (embedded fakeredis)' if app.embedded else ''}, threshold "
          f"{app.threshold} failures per {app.window} s window")
    seen = {"ok": 0, "rejected": 0, "unavailable": 0, "failed-open": 0, "unexpected": 0}
    for r in responses:
        fail_open = r.code == 200 and json.loads(r.body)["fail_open"]
        seen[{200: "failed-open" if fail_open else "ok", 403: "rejected",
              503: "unavailable"}.get(r.code, "unexpected")] += 1
    print("  " + ", ".join(f"{kind}: {count}" for kind, count in seen.items()))
    counts = {}
    async for key in app.redis.scan_iter(match=f"{app.prefix}:failures:*"):
        counts[key] = int(await app.redis.get(key))
        print(f"  counter {key.decode()} = {counts[key]} (ttl {await app.redis.ttl(key)} s)")
    if counts:
        await app.redis.delete(*counts)  # the run's own keys: leave nothing behind
    # Every failed check was counted once; all but the first `threshold` of a window failed open.
    failed = seen["unavailable"] + seen["failed-open"]
    ok = (not seen["unexpected"] and failed == sum(counts.values())
          and seen["failed-open"] == sum(max(0, c - app.threshold) for c in counts.values()))
    print(f"selftest: {'PASS' if ok else 'FAIL'}")
    return ok


async def main(args, redis_url, embedded):
    app = tornado.web.Application([(r"/login", Login), (r"/thirdparty/check", ThirdPartyCheck)])
    # Handlers read their state as attributes of the application (self.application.redis).
    app.redis = AsyncRedis.from_url(redis_url, socket_timeout=5)
    app.redis_url, app.embedded = redis_url, embedded
    # Run-unique keys in the selftest, so concurrent runs on a shared Redis never mix counts.
    app.prefix = args.prefix + (f":selftest:{uuid.uuid4().hex[:8]}" if args.selftest else "")
    app.threshold, app.window, app.check_timeout = args.threshold, args.window, args.check_timeout
    app.rng, app.fail_rate = random.Random(args.seed), args.fail_rate
    app.checks = AsyncHTTPClient(force_instance=True, max_clients=256)
    port = args.port if args.port is not None else (0 if args.selftest else 8888)
    sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")  # loopback only
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    app.check_url = f"http://127.0.0.1:{port}/thirdparty/check"
    log.info("auth service on http://127.0.0.1:%d/login, redis %s", port, redacted(redis_url))
    try:
        if args.selftest:
            return 0 if await selftest(app, f"http://127.0.0.1:{port}", args.requests) else 1
        await asyncio.Event().wait()  # serve until Ctrl-C
    finally:
        server.stop()
        await server.close_all_connections()
        app.checks.close()
        await app.redis.close()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    p.add_argument("--port", type=int, help="default 8888 (a free port with --selftest)")
    p.add_argument("--threshold", type=int, default=5, help="failures per window, then open")
    p.add_argument("--window", type=int, default=60, help="counting window, seconds")
    p.add_argument("--prefix", default="greenasync:example:auth", help="Redis key prefix")
    p.add_argument("--check-timeout", type=float, default=1.0, help="third-party timeout, s")
    p.add_argument("--fail-rate", type=float, default=0.3, help="simulated provider failure rate")
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated provider's RNG")
    p.add_argument("--selftest", action="store_true", help="fire N logins at itself, report, exit")
    p.add_argument("--requests", type=int, metavar="N", help="selftest logins (default 50)")
    args = p.parse_args(argv)
    args.selftest = args.selftest or args.requests is not None
    args.requests = args.requests or 50
    return args


if __name__ == "__main__":
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.selftest:
        logging.getLogger("tornado.access").setLevel(logging.CRITICAL)  # 503s are expected
    url, fake = redis_or_embedded(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        raise SystemExit(asyncio.run(main(args, url, embedded=fake is not None)))
    except KeyboardInterrupt:
        pass
    finally:
        if fake is not None:
            fake.shutdown()
            fake.server_close()
