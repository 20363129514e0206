"""Wrapped sync clients inside a Tornado application (tornado.testing.AsyncHTTPTestCase).

Handlers await wrapped methods of the in-house SDK (tests/sample_sdk.py, real TCP to an
in-test server) and of ``redis.Redis`` (a real Redis from conftest's ``redis_url``, unique key
prefix, cleaned up). Checked: ~50 concurrent requests overlap, and a request whose client hangs up
while a wrapped call is in flight cancels that call cleanly (the SDK's ``finally`` runs, the
half-used connection is closed, the next request is served correctly).
"""

import asyncio
import time
import uuid

import pytest
import redis
import tornado.web
from tornado.httpclient import AsyncHTTPClient
from tornado.tcpclient import TCPClient
from tornado.testing import AsyncHTTPTestCase, gen_test

from greenasync import _patch
from greenasync._wrap import wrap

import sample_sdk as sdk

# register=False: test_wrap.py registers its own wrappers of the same classes.
AsyncKV = wrap(sdk.KVClient, register=False)
AsyncRedis = wrap(redis.Redis, register=False)

CONCURRENCY = 50


class IncrHandler(tornado.web.RequestHandler):
    """Hold a wrapped call in flight for a while, then count: the sum shows every request
    ran, the elapsed time shows they overlapped."""

    async def get(self, backend, name):
        app = self.application
        if backend == "kv":
            await app.kv.remote_sleep(0.2)
            value = await app.kv.incr(app.key(name))
        else:
            await app.redis.blpop(app.key("idle:" + uuid.uuid4().hex), timeout=0.2)
            value = await app.redis.incr(app.key(name))
        self.write({"value": int(value)})


class SlowHandler(tornado.web.RequestHandler):
    """A wrapped call that only ends if cancelled; the client will hang up on it."""

    async def get(self, backend):
        app = self.application
        if backend == "kv":
            call = app.kv.remote_sleep(30)
        else:
            call = app.redis.blpop(app.key("never"), timeout=30)
        self.task = asyncio.ensure_future(call)
        app.started.set()
        try:
            await self.task
        except asyncio.CancelledError:
            app.outcome.set_result("cancelled")
            return  # the connection is gone: nothing to write
        app.outcome.set_result("completed")

    def on_connection_close(self):
        # Tornado calls this when the client disconnects mid-request: stop the wrapped call.
        self.task.cancel()


class WrappedClientsTest(AsyncHTTPTestCase):
    @pytest.fixture(autouse=True)
    def _redis_url(self, redis_url):
        self.redis_url = redis_url  # pytest fixtures reach unittest classes this way
        # wrap() patched these at import; another module's teardown may have unpatched
        # everything since (test_patch.py's does): re-assert it (patch is idempotent).
        _patch.patch("sample_sdk", "redis")

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = sdk.KVServer()

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        super().tearDownClass()

    def get_app(self):
        prefix = f"greenasync-test:{uuid.uuid4().hex}:"
        app = tornado.web.Application([
            (r"/incr/(kv|redis)/(\w+)", IncrHandler),
            (r"/slow/(kv|redis)", SlowHandler),
        ])
        app.key = lambda name: prefix + name
        app.kv = AsyncKV(port=self.server.port)
        app.redis = AsyncRedis.from_sync(redis.Redis.from_url(self.redis_url))
        self.prefix = prefix
        return app

    def get_http_client(self):
        return AsyncHTTPClient(force_instance=True, max_clients=CONCURRENCY + 10)

    def tearDown(self):
        self._app.kv.delegate.close()
        sync = self._app.redis.delegate
        keys = list(sync.scan_iter(match=self.prefix + "*"))
        if keys:
            sync.delete(*keys)
        sync.close()
        super().tearDown()

    async def fetch_all(self, path):
        start = time.monotonic()
        responses = await asyncio.gather(
            *[self.http_client.fetch(self.get_url(path)) for _ in range(CONCURRENCY)]
        )
        return responses, time.monotonic() - start

    def _new_outcome(self):
        self._app.started = asyncio.Event()
        self._app.outcome = asyncio.get_running_loop().create_future()

    async def hang_up_during(self, path):
        """Send a request, wait until its wrapped call is in flight, then close the socket."""
        self._new_outcome()
        stream = await TCPClient().connect("127.0.0.1", self.get_http_port())
        await stream.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await asyncio.wait_for(self._app.started.wait(), 5)
        await asyncio.sleep(0.1)  # let the wrapped call reach its wait
        stream.close()
        return await asyncio.wait_for(self._app.outcome, 5)

    @gen_test(timeout=30)
    async def test_concurrent_requests_on_the_sdk(self):
        self.server.max_active = 0
        responses, elapsed = await self.fetch_all("/incr/kv/hits")
        values = sorted(int(r.body.decode().split(":")[1].strip(" }")) for r in responses)
        assert values == list(range(1, CONCURRENCY + 1))
        assert elapsed < 3.0  # serially: 50 x 0.2 s = 10 s
        assert self.server.max_active >= CONCURRENCY * 0.8

    @gen_test(timeout=30)
    async def test_concurrent_requests_on_redis(self):
        responses, elapsed = await self.fetch_all("/incr/redis/hits")
        assert all(r.code == 200 for r in responses)
        assert int(self._app.redis.delegate.get(self._app.key("hits"))) == CONCURRENCY
        assert elapsed < 3.0  # serially: 50 x 0.2 s = 10 s

    @gen_test(timeout=30)
    async def test_client_hang_up_cancels_the_sdk_call(self):
        kv = self._app.kv
        aborted = self.server.aborted
        assert await self.hang_up_during("/slow/kv") == "cancelled"
        assert kv.delegate.in_flight == 0  # the SDK's finally ran
        assert kv.delegate.discarded == 1  # and closed the half-used connection...
        deadline = time.monotonic() + 5
        while self.server.aborted == aborted:  # ...which the server saw
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        response = await self.http_client.fetch(self.get_url("/incr/kv/after"))
        assert response.code == 200 and b'"value": 1' in response.body

    @gen_test(timeout=30)
    async def test_client_hang_up_cancels_the_redis_call(self):
        r = self._app.redis
        assert await self.hang_up_during("/slow/redis") == "cancelled"
        # the cancelled BLPOP's connection never serves another command with a stale reply
        assert await r.echo("after") == b"after"
        response = await self.http_client.fetch(self.get_url("/incr/redis/after"))
        assert response.code == 200 and b'"value": 1' in response.body
        pool = r.delegate.connection_pool
        assert len(pool._in_use_connections) == 0  # nothing leaked out of the pool
