"""greenasync.wrap: the declarative facade over unchanged sync classes.

Real I/O only: the in-house SDK (tests/sample_sdk.py) talks TCP to an in-test server thread,
and the redis tests talk to a real Redis (conftest's ``redis_url``; unique key prefix,
cleaned up, never FLUSHALL).
Every ``async def`` test runs on asyncio, uvloop and Tornado (see conftest.py).
"""

import asyncio
import contextlib
import copy
import inspect
import pydoc
import socket
import threading
import time
import uuid

import pytest
import redis

import greenasync
from greenasync import _bridge, _patch
from greenasync._wrap import (
    AsyncContextManager,
    AsyncIter,
    AsyncIterator,
    Chain,
    Property,
    SyncMethod,
    Wrapper,
    Wraps,
    _registry,
    wrap,
)

import sample_sdk as sdk

# --- the wrappers under test, declared as a user would -------------------------------------

AsyncBatch = wrap(sdk.Batch)


@wrap(sdk.Namespace)
class AsyncNamespace:
    __getitem__ = SyncMethod()


@wrap(sdk.Cursor)
class AsyncCursor:
    limit = Chain()
    sort = Chain()
    rewind = Chain()
    clone = Chain()


@wrap(sdk.KVClient)
class AsyncKV:
    """The application's async KV client."""

    __getitem__ = SyncMethod()
    __getattr__ = SyncMethod()
    find = SyncMethod()
    namespace = SyncMethod()
    iter_items = AsyncIter()
    timeout = Property(writable=True)
    in_flight = Property()


@pytest.fixture(scope="module", autouse=True)
def keep_patched():
    # wrap() patched these when this module was imported; another module's teardown may have
    # unpatched everything since (test_patch.py's does), so re-assert it (patch is idempotent).
    _patch.patch("sample_sdk", "redis")


@pytest.fixture(scope="module")
def server():
    srv = sdk.KVServer()
    yield srv
    srv.close()


@pytest.fixture
def clients():
    """Wrappers a test builds; their pooled sockets are closed afterwards (ResourceWarning
    is an error here)."""
    made = []
    yield made
    for c in made:
        c.delegate.close()


@pytest.fixture
def kv(server, clients):
    c = AsyncKV(port=server.port)
    clients.append(c)
    return c


@pytest.fixture
def key():
    """A unique key prefix: the server outlives the three loop kinds of one test."""
    return f"k{uuid.uuid4().hex[:8]}:"


def public(obj):
    return {n for n in dir(obj) if not n.startswith("_")}


def hub_calls():
    return _bridge._hub_for(asyncio.get_running_loop()).calls


async def wait_for(predicate, timeout=2.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- generated methods ---------------------------------------------------------------------


def test_methods_are_coroutine_functions_with_the_sync_metadata():
    names = [n for n, v in vars(sdk.KVClient).items() if inspect.isfunction(v) and n[0] != "_"]
    assert len(names) > 15
    undeclared = set(names) - {"find", "namespace", "iter_items"}
    for name in undeclared:
        method, sync = getattr(AsyncKV, name), getattr(sdk.KVClient, name)
        assert inspect.iscoroutinefunction(method), name
        assert inspect.signature(method) == inspect.signature(sync), name
        assert method.__doc__ == sync.__doc__ and method.__name__ == name
        assert method.__wrapped__ is sync
        assert method.__qualname__ == f"AsyncKV.{name}"
    # class and static methods stay class and static methods, and become coroutines too
    assert inspect.iscoroutinefunction(AsyncKV.from_url)
    assert inspect.signature(AsyncKV.from_url) == inspect.signature(sdk.KVClient.from_url)
    assert inspect.iscoroutinefunction(AsyncKV.parse_url)
    assert inspect.signature(AsyncKV.parse_url) == inspect.signature(sdk.KVClient.parse_url)
    # declared SyncMethod/AsyncIter members are plain functions with the same metadata
    assert not inspect.iscoroutinefunction(AsyncKV.find)
    assert inspect.signature(AsyncKV.find) == inspect.signature(sdk.KVClient.find)
    assert inspect.signature(AsyncKV) == inspect.signature(sdk.KVClient)


def test_help_reads_well():
    text = pydoc.render_doc(AsyncKV, renderer=pydoc.plaintext)
    assert "class AsyncKV(wrap(KVClient))" in text
    assert "The application's async KV client." in text
    assert "async get(self, key)" in text
    assert "The value of ``key``, or None." in text
    assert "async from_url(url, **kwargs)" in text
    assert "AsyncKV(host='127.0.0.1', port=0, *, timeout=5.0" in text


async def test_calls_round_trip_and_errors_pass_through(kv, key):
    c = kv
    assert await c.ping() == "PONG"
    assert await c.set(key + "a", "1") is True
    assert await c.get(key + "a") == "1"
    assert await c.incr(key + "a") == 2
    assert await c.keys(key) == [key + "a"]
    assert await c.delete(key + "a") is True and await c.get(key + "a") is None
    with pytest.raises(sdk.KVError, match="unknown command BOGUS"):
        await c.command("BOGUS")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    with pytest.raises(ConnectionRefusedError):
        await AsyncKV(port=closed_port).ping()


async def test_internal_calls_stay_sync_in_one_greenlet(kv, key):
    c = kv
    await c.set(key + "a", "1")
    before = hub_calls()
    assert await c.get_many([key + "a", key + "b", key + "a"]) == ["1", None, "1"]
    assert await c.get_or_set(key + "c", "3") == "3"
    # two awaited calls -> two greenlet jobs, although they made five sync get/set calls
    assert hub_calls() - before == 2


def test_sync_class_is_left_unchanged():
    before = dict(vars(sdk.KVClient))
    wrap(sdk.KVClient, register=False)
    assert dict(vars(sdk.KVClient)) == before  # same keys, same (identical) values
    assert not any(inspect.iscoroutinefunction(v) for v in before.values())


async def test_concurrent_calls_cooperate(server, kv, ticker):
    c = kv
    server.max_active = 0
    async with ticker() as t:
        start = time.monotonic()
        results = await asyncio.gather(*[c.remote_sleep(0.3) for _ in range(50)])
        elapsed = time.monotonic() - start
    assert results == ["OK"] * 50
    assert elapsed < 2.0  # one at a time would take 15 s
    assert server.max_active >= 40
    assert t.max_gap < 0.2
    # time.sleep in the SDK parks the greenlet too (the package is patched)
    start = time.monotonic()
    took = await asyncio.gather(*[c.pause(0.2) for _ in range(50)])
    assert time.monotonic() - start < 1.5 and min(took) >= 0.19


async def test_cancellation_runs_the_sdk_cleanup(server, kv, key):
    c = kv
    aborted = server.aborted
    task = asyncio.ensure_future(c.remote_sleep(10))
    await wait_for(lambda: c.delegate.in_flight == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert c.delegate.in_flight == 0  # the SDK's finally ran
    assert c.delegate.discarded == 1  # and closed the half-used connection...
    await wait_for(lambda: server.aborted == aborted + 1)  # ...which the server saw
    assert await c.ping() == "PONG"  # the client and the loop are fine
    assert await c.set(key, "v") and await c.get(key) == "v"


# --- construction --------------------------------------------------------------------------


class Probe(sdk.KVClient):
    def ping(self):
        self.ping_in_greenlet = greenasync.in_green_context()
        return super().ping()


AsyncProbe = wrap(Probe, register=False, patch=["sample_sdk"])  # not this test module


async def test_constructor_runs_in_the_caller_and_create_in_a_greenlet(server, clients, ticker):
    # Plain construction: synchronous, outside any greenlet, so constructor I/O is plain
    # blocking stdlib I/O on the loop thread (the shims fall back to the stdlib there).
    p = AsyncProbe(port=server.port, connect=True)
    clients.append(p)
    assert p.delegate.ping_in_greenlet is False
    async with ticker() as t:
        AsyncProbe(port=server.port, warmup=0.2)
        await asyncio.sleep(0.02)  # let the ticker see the stall
    assert t.max_gap >= 0.19  # the loop was blocked for the whole warmup
    # create(): the same construction inside a worker greenlet, cooperative
    p = await AsyncProbe.create(port=server.port, connect=True)
    clients.append(p)
    assert isinstance(p, AsyncProbe) and p.delegate.ping_in_greenlet is True
    async with ticker() as t:
        p = await AsyncProbe.create(port=server.port, warmup=0.2)
    assert t.max_gap < 0.1 and t.ticks >= 5
    assert p.delegate.port == server.port


async def test_from_sync(server):
    sync = sdk.KVClient(port=1)
    w = AsyncKV.from_sync(sync)
    assert type(w) is AsyncKV and w.delegate is sync
    # a subclass instance is accepted, and its overrides are the ones called
    w = AsyncKV.from_sync(Probe(port=server.port))
    assert await w.ping() == "PONG" and w.delegate.ping_in_greenlet is True
    w.delegate.close()
    expected = r"expects a sample_sdk\.KVClient instance, got sample_sdk\.Namespace"
    with pytest.raises(TypeError, match=expected):
        AsyncKV.from_sync(sdk.Namespace(sync, "x"))
    with pytest.raises(TypeError, match="got test_wrap.AsyncKV"):
        AsyncKV.from_sync(w)


# --- declarations --------------------------------------------------------------------------


async def test_navigation_without_io(server, kv):
    c = kv
    commands = server.commands
    users = c["users"]
    assert type(users) is AsyncNamespace and users.delegate.name == "users"
    assert type(c.users) is AsyncNamespace and c.users == users
    nested = c["users"]["eu"]
    assert type(nested) is AsyncNamespace and nested.delegate.name == "users:eu"
    assert type(c.namespace("x")) is AsyncNamespace
    assert server.commands == commands  # no I/O so far
    await c.users.set("bob", "1")
    assert await c.get("users:bob") == "1"
    assert await users.get("bob") == "1"
    # protocol probes never reach the library's __getattr__; private names are its call
    assert not hasattr(c, "__deepcopy__")
    assert copy.copy(c).delegate is c.delegate
    with pytest.raises(AttributeError):
        c._secret


async def test_chain_methods_and_async_cursor(server, kv, key):
    c = kv
    for k in ("a", "b", "c"):
        await c.set(key + k, k.upper())
    commands = server.commands
    cur = c.find(key)
    assert type(cur) is AsyncCursor
    assert cur.sort(reverse=True).limit(2) is cur  # sync, returns the wrapper itself
    assert server.commands == commands
    assert [kv async for kv in cur] == [(key + "c", "C"), (key + "b", "B")]
    assert cur.rewind() is cur  # the sync method returns None: still the wrapper
    assert await cur.to_list(1) == [(key + "c", "C")]
    other = cur.clone()  # a builder returning a *new* cursor gets a new wrapper
    assert type(other) is AsyncCursor and other is not cur and other.delegate is not cur.delegate
    assert await other.to_list(None) == [(key + "c", "C"), (key + "b", "B")]


class Steps:
    """A sync class whose generators record where each step runs."""

    def __init__(self):
        self.started = False
        self.closed = False

    def gen(self, n):
        self.started = True
        try:
            for i in range(n):
                yield i, greenasync.in_green_context()
        finally:
            self.closed = True

    def numbers(self, n):
        return iter(range(n))  # a plain iterator (no API of its own)

    def owner(self):
        return self


AsyncSteps = wrap(Steps, patch=False, register=False)


async def test_generators_and_iterators_become_async_iterators():
    s = AsyncSteps()
    it = await s.gen(3)
    assert type(it) is AsyncIterator
    assert [x async for x in it] == [(0, True), (1, True), (2, True)]  # every step in a greenlet
    it = await s.gen(5)
    assert await it.to_list(2) == [(0, True), (1, True)]
    await it.aclose()
    assert s.delegate.closed  # the generator's finally ran
    assert await (await s.numbers(4)).to_list(None) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        await (await s.numbers(4)).to_list(-1)
    assert await s.owner() is s  # a result that is the delegate comes back as the wrapper


class Lazy(Steps):
    def lazy(self, n):
        self.started = True
        return [n] * n


async def test_async_iter_declaration_runs_nothing_before_the_first_step():
    @wrap(Lazy, patch=False, register=False)
    class AsyncLazy:
        lazy = AsyncIter()
        gen = AsyncIter()

    s = AsyncLazy()
    it = s.lazy(2)  # no await: an async iterator at once
    assert type(it) is AsyncIterator and not s.delegate.started
    assert [x async for x in it] == [2, 2] and s.delegate.started
    assert [x async for x in s.gen(2)] == [(0, True), (1, True)]


async def test_context_managers(server, kv, key, clients):
    c = kv
    # the wrapped class's own protocol: __aenter__ returns the wrapper itself
    async with c as inside:
        assert inside is c
        await c.ping()
        assert c.delegate._idle
    assert not c.delegate._idle  # __exit__ (close) ran
    # a registered result type: Batch -> AsyncBatch, its exit runs execute() in a greenlet
    async with await c.batch() as b:
        assert type(b) is AsyncBatch
        assert await b.set(key + "a", "1") is b
        assert await c.get(key + "a") is None
    assert await c.get(key + "a") == "1" and b.delegate.sent == 1
    with pytest.raises(ZeroDivisionError):
        async with await c.batch() as b:
            await b.set(key + "b", "1")
            1 / 0
    assert await c.get(key + "b") is None and b.delegate.sent == 0  # __exit__ saw the error
    # an unregistered pure context manager (@contextmanager) -> AsyncContextManager
    cm = await c.reserved(key + "r")
    assert type(cm) is AsyncContextManager
    async with cm as held:
        assert held == key + "r" and await c.get(key + "r") == "reserved"
    assert await c.get(key + "r") is None
    # results of registered types come back wrapped from any wrapper, declared or not
    plain = wrap(sdk.KVClient, register=False, patch=False)(port=server.port)
    clients.append(plain)
    assert type(await plain.find(key)) is AsyncCursor
    assert type(await plain.batch()) is AsyncBatch


async def test_properties_and_attributes(server):
    c = AsyncKV(host="127.0.0.1", port=server.port)  # makes no connection
    assert c.address == ("127.0.0.1", server.port)  # read-only property of the sync class
    with pytest.raises(AttributeError, match=r"read-only on the wrapper .*\(writable=True\)"):
        c.address = ("x", 1)
    c.timeout = 2.5  # declared writable: reaches the delegate
    assert c.delegate.timeout == 2.5 and c.timeout == 2.5
    with pytest.raises(AttributeError, match="read-only"):
        c.in_flight = 3
    assert c.discarded == 0  # public instance attributes are readable without a declaration
    c.discarded = 7  # ...but writes never reach the delegate implicitly
    assert c.delegate.discarded == 0
    assert AsyncKV.DEFAULT_TIMEOUT == 5.0 and c.DEFAULT_TIMEOUT == 5.0
    assert AsyncKV.Error is sdk.KVError
    assert inspect.getattr_static(AsyncKV, "address").__doc__ == "The server's ``(host, port)``."


def test_declaration_errors_at_class_creation():
    expected = r"Bad\.nope = SyncMethod\(\): sample_sdk\.KVClient has no attribute 'nope'"
    with pytest.raises(AttributeError, match=expected):
        @wrap(sdk.KVClient, register=False, patch=False)
        class Bad:
            nope = SyncMethod()

    with pytest.raises(AttributeError, match="has no method 'address'"):
        @wrap(sdk.KVClient, register=False, patch=False)
        class Bad2:
            address = Chain()

    with pytest.raises(TypeError, match="is a method; declare it SyncMethod"):
        @wrap(sdk.KVClient, register=False, patch=False)
        class Bad3:
            get = Property()

    with pytest.raises(TypeError, match="classmethod: it cannot be chain"):
        @wrap(sdk.KVClient, register=False, patch=False)
        class Bad4:
            from_url = Chain()

    # Property() may name an instance attribute: it exists only on instances
    @wrap(sdk.KVClient, register=False, patch=False)
    class Good:
        port = Property()

    assert Good(port=3).port == 3


class Recorder:
    def record(self, *args, **kwargs):
        return args, kwargs


async def test_wrapper_arguments_are_unwrapped_at_top_level_only(server):  # no I/O
    rec = wrap(Recorder, patch=False, register=False)()
    c = AsyncKV(port=server.port)
    args, kwargs = await rec.record(c, 1, [c], other=c, n=2)
    assert args[0] is c.delegate and args[1] == 1
    assert args[2][0] is c  # containers are passed unchanged (documented)
    assert kwargs == {"other": c.delegate, "n": 2}
    # the constructor and create() unwrap as well
    ns = AsyncNamespace(c, "n")
    assert ns.delegate.client is c.delegate
    ns = await AsyncNamespace.create(client=c, name="n")
    assert ns.delegate.client is c.delegate


async def test_hand_written_methods_win_and_super_reaches_the_generated_one(server, clients, key):
    class Mixin:
        async def get(self, key):  # a mixin also wins over generated methods
            return ("mixin", await super().get(key))

    @wrap(sdk.KVClient, register=False)
    class Mine(Mixin):
        find = SyncMethod()

        async def set(self, key, value):
            return ("mine", await super().set(key, value.upper()))

        def ping(self):
            return "sync pong"

    m = Mine(port=server.port)
    clients.append(m)
    assert Mine.__mro__[1] is Mixin and Mine.__mro__[2].__name__ == "wrap(KVClient)"
    assert m.ping() == "sync pong"
    assert await m.set(key, "v") == ("mine", True)
    assert await m.get(key) == ("mixin", "V")
    assert type(m.find(key)) is AsyncCursor


async def test_subclassing_a_wrapped_class(server, clients, key):
    class Sub(AsyncKV):
        iter_items = SyncMethod()  # declarations work in plain subclasses too
        sets = 0  # not getattr(self, "sets", 0): AsyncKV navigates unknown names (c.users)

        async def get_upper(self, key):
            return (await self.get(key)).upper()

        async def set(self, key, value):
            self.sets += 1
            return await super().set(key, value)

    s = Sub(port=server.port)
    clients.append(s)
    await s.set(key, "v")
    assert s.sets == 1 and await s.get_upper(key) == "V"
    assert type(s.iter_items(key)) is AsyncIterator
    assert type(s["x"]) is AsyncNamespace
    url = f"kv://127.0.0.1:{server.port}"
    assert type(await Sub.from_url(url)) is Sub  # results of the own sync type keep the class
    assert type(await AsyncKV.from_url(url)) is AsyncKV
    assert type(Sub.from_sync(sdk.KVClient())) is Sub
    assert await AsyncKV.parse_url(url) == ("127.0.0.1", server.port)


async def test_wrapping_twice_gives_independent_classes(server, clients, key):
    A = wrap(sdk.KVClient, register=False)
    B = wrap(sdk.KVClient, register=False)
    assert A is not B and A.get is not B.get and not issubclass(A, B)
    A.extra = 1
    assert not hasattr(B, "extra")
    a, b = A(port=server.port), B(port=server.port)
    clients.extend([a, b])
    await a.set(key, "1")
    assert await b.get(key) == "1"
    assert type(await A.from_url(f"kv://127.0.0.1:{server.port}")) is A


async def test_registry_and_explicit_wraps(server):
    assert _registry[sdk.KVClient] is AsyncKV and _registry[sdk.Namespace] is AsyncNamespace
    Special = wrap(sdk.Namespace, register=False)
    assert _registry[sdk.Namespace] is AsyncNamespace  # register=False left it alone

    @wrap(sdk.KVClient, register=False)
    class K:
        namespace = Wraps(Special)  # a coroutine whose result is wrapped in Special
        __getitem__ = SyncMethod(wraps=Special)
        find = SyncMethod(wraps=sdk.Cursor)  # a sync class: resolved in the registry
        batch = SyncMethod(wraps=Recorder)  # nothing registered for it

    k = K(port=server.port)
    assert inspect.iscoroutinefunction(K.namespace)
    assert type(await k.namespace("a")) is Special
    assert type(k["a"]) is Special
    assert type(k.find("")) is AsyncCursor
    with pytest.raises(LookupError, match="no wrapper is registered"):
        k.batch()


async def test_redis_pipeline_and_scan_iter(redis_url):
    """A sync type with its own API (redis Pipeline) comes back as it is unless wrapped;
    wrapped and declared, `async with r.pipeline() as p` works."""
    AsyncPipeline = wrap(redis.client.Pipeline, register=False)

    @wrap(redis.Redis, register=False)
    class AsyncRedis:
        pipeline = SyncMethod(wraps=AsyncPipeline)  # builds a Pipeline: no I/O

    plain = wrap(redis.Redis, register=False).from_sync(redis.Redis.from_url(redis_url))
    r = AsyncRedis.from_sync(plain.delegate)
    prefix = f"greenasync-test:{uuid.uuid4().hex}:"
    try:
        p = await plain.pipeline()
        assert type(p) is redis.client.Pipeline
        p.reset()
        async with r.pipeline() as p:
            assert type(p) is AsyncPipeline
            assert await p.set(prefix + "a", 1) is p  # buffered: returns the pipeline
            await p.incr(prefix + "a")
            assert await p.execute() == [True, 2]
        assert await r.get(prefix + "a") == b"2"
        keys = await r.scan_iter(match=prefix + "*")  # a generator: async iterator
        assert type(keys) is AsyncIterator and await keys.to_list(None) == [(prefix + "a").encode()]
    finally:
        await r.delete(*[k async for k in await r.scan_iter(match=prefix + "*")] or [prefix])
        await r.close()


async def test_redis_under_concurrency_and_cancellation(redis_url):
    AsyncRedis = wrap(redis.Redis, register=False)
    r = await AsyncRedis.from_url(redis_url)  # an async classmethod: result wrapped
    assert type(r) is AsyncRedis
    prefix = f"greenasync-test:{uuid.uuid4().hex}:"
    # single_connection_client connects in the constructor; the async from_url runs that
    # construction in a greenlet (as create() would), so it does not block the loop
    single = await AsyncRedis.from_url(redis_url, single_connection_client=True)
    assert single.connection is not None  # connected already (a public instance attribute)
    try:
        # 30 clients parked in BLPOP at once, then released by pushes
        waiters = [asyncio.ensure_future(r.blpop(prefix + f"q{i}", timeout=5)) for i in range(30)]
        await asyncio.sleep(0.05)
        for i in range(30):
            await r.rpush(prefix + f"q{i}", i)
        results = await asyncio.gather(*waiters)
        assert sorted(int(v) for _, v in results) == list(range(30))
        # one shared connection (redis-py's RLock across send+read): replies stay matched
        vals = await asyncio.gather(*[single.incr(prefix + "n") for _ in range(40)])
        assert sorted(vals) == list(range(1, 41))
        got = await asyncio.gather(*[single.echo(f"m{i}") for i in range(40)])
        assert got == [f"m{i}".encode() for i in range(40)]
        # cancel a parked BLPOP: the next command on the client still reads its own reply
        task = asyncio.ensure_future(single.blpop(prefix + "never", timeout=5))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await single.echo("after") == b"after"
        assert await single.incr(prefix + "n") == 41
    finally:
        await r.delete(*[k async for k in await r.scan_iter(match=prefix + "*")] or [prefix])
        await single.close()
        await r.close()


# --- bad input and error messages ----------------------------------------------------------


def test_bad_input():
    with pytest.raises(TypeError, match=r"expects a class, got KVClient .*not an instance"):
        wrap(sdk.KVClient())
    with pytest.raises(TypeError, match="expects a class, got function"):
        wrap(lambda: None)
    with pytest.raises(TypeError, match="already a greenasync wrapper"):
        wrap(AsyncKV)
    with pytest.raises(TypeError, match="already inherits from a wrapper"):
        @wrap(sdk.Namespace, register=False, patch=False)
        class Twice(AsyncNamespace):
            pass
    with pytest.raises(TypeError, match="patch= expects"):
        wrap(sdk.Namespace, patch=[1], register=False)
    with pytest.raises(TypeError, match="abstract"):
        Wrapper()


def test_unknown_attribute_names_both_classes():
    ns = AsyncNamespace(None, "x")
    with pytest.raises(AttributeError) as info:
        ns.gett
    msg = str(info.value)
    assert "'AsyncNamespace' object has no attribute 'gett'" in msg
    assert "sample_sdk.Namespace" in msg
    assert info.value.name == "gett" and info.value.obj is ns
    with pytest.raises(AttributeError, match="publicly"):
        ns._client


def test_no_running_loop_gives_a_clear_error():
    c = AsyncKV(port=1)
    coro = c.ping()  # calling only builds a coroutine, as for any coroutine function
    assert inspect.iscoroutine(coro)
    expected = r"AsyncKV\.ping\(\) is a coroutine function .*`\.delegate`"
    with pytest.raises(greenasync.NoRunningLoopError, match=expected):
        coro.send(None)  # driven by something that is not a running asyncio loop
    errors = []

    def in_thread():
        for make in (lambda: c.get("k"), lambda: AsyncKV.from_url("kv://h:1"),
                     lambda: AsyncKV.create(), lambda: c.iter_items().__anext__(),
                     lambda: c.__aenter__()):
            try:
                make().send(None)
            except greenasync.NoRunningLoopError as exc:
                errors.append(str(exc))

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(5)
    assert [e.split("(")[0] for e in errors] == [
        "AsyncKV.get", "AsyncKV.from_url", "AsyncKV.create", "AsyncKV.iter_items.__anext__",
        "AsyncKV.__aenter__",
    ]
    # sync members need no loop at all
    assert type(c["x"]) is AsyncNamespace and c.address == ("127.0.0.1", 1)


# --- patching ------------------------------------------------------------------------------


def test_patch_parameter():
    assert AsyncKV.__greenasync_patched__ == ("sample_sdk",)
    _patch.unpatch("sample_sdk")
    assert sdk.socket is socket
    wrap(sdk.Namespace, register=False)  # the default patches the top-level package
    assert "sample_sdk" in _patch.patched()
    assert sdk.socket.__name__ == "greenasync.green.socket"
    assert sdk.time.__name__ == "greenasync.green.time"
    def patched_by(**kw):
        return wrap(sdk.Namespace, register=False, **kw).__greenasync_patched__

    assert patched_by(patch=False) == ()
    assert patched_by(patch=["sample_sdk"]) == ("sample_sdk",)
    assert patched_by(patch="sample_sdk") == ("sample_sdk",)
    with pytest.raises(ModuleNotFoundError):
        wrap(sdk.Namespace, patch=["no_such_package_xyz"], register=False)
    # never the stdlib, builtins, __main__ (pass them explicitly if you really mean it)
    assert wrap(contextlib.ExitStack, register=False).__greenasync_patched__ == ()
    assert wrap(dict, register=False).__greenasync_patched__ == ()
    Main = type("Main", (), {"__module__": "__main__"})
    assert wrap(Main, register=False).__greenasync_patched__ == ()
    assert "contextlib" not in _patch.patched() and "__main__" not in _patch.patched()


def test_sync_sdk_still_blocks_normally_from_plain_threads(server):
    # After patching, threads using the sync SDK get stdlib behaviour: real blocking calls
    # that overlap because they are in different threads, and real socket timeouts.
    client = sdk.KVClient(port=server.port)
    results = []
    closing = contextlib.closing
    threads = [threading.Thread(target=lambda: results.append(client.remote_sleep(0.2)))
               for _ in range(10)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert results == ["OK"] * 10 and time.monotonic() - start < 1.5
    client.close()
    with closing(sdk.KVClient(port=server.port, timeout=0.1)) as slow, pytest.raises(TimeoutError):
        slow.remote_sleep(1)


# --- API parity ----------------------------------------------------------------------------

# Names a wrapper has that the sync object has not, and why.
WRAPPER_ONLY = {
    "delegate": "the wrapped sync object",
    "from_sync": "adopt an existing sync object",
    "create": "build the delegate inside a greenlet",
}


def parity(sync_obj, wrapper):
    missing = public(sync_obj) - public(wrapper)
    extra = public(wrapper) - public(sync_obj) - set(WRAPPER_ONLY)
    not_async = sorted(
        n for n in public(sync_obj)
        if inspect.ismethod(getattr(sync_obj, n))
        and not inspect.iscoroutinefunction(getattr(wrapper, n))
    )
    for n in public(sync_obj):
        getattr(wrapper, n)  # every listed name resolves
    return missing, extra, not_async


def test_parity_sample_sdk(server):
    sync = sdk.KVClient(port=server.port)
    missing, extra, not_async = parity(sync, AsyncKV.from_sync(sync))
    assert missing == set()
    assert extra == set()
    # exactly the declared sync members
    assert not_async == ["find", "iter_items", "namespace"]
    cursor = sdk.Cursor(sync, "")
    missing, extra, not_async = parity(cursor, AsyncCursor.from_sync(cursor))
    assert missing == set() and extra == {"to_list"}  # async iteration helper
    assert not_async == ["clone", "limit", "rewind", "sort"]


def test_parity_redis():
    AsyncRedis = wrap(redis.Redis, register=False)
    sync = redis.Redis()  # no I/O until a command runs
    missing, extra, not_async = parity(sync, AsyncRedis.from_sync(sync))
    assert missing == set()  # includes the instance attributes (connection_pool, ...)
    assert extra == set()
    assert not_async == []  # every public method, I/O or not, is a coroutine function
    assert len(public(sync)) > 400
    sync.close()


def test_sync_method_dunder_on_an_empty_object_does_not_recurse():
    # The wrapper itself is falsy when its __len__ is 0: it must still be passed as `self`.
    class Bag:
        def __len__(self):
            return 0

    @greenasync.wrap(Bag, patch=False, register=False)
    class AsyncBag:
        __len__ = greenasync.SyncMethod()

    assert len(AsyncBag()) == 0
    assert not AsyncBag()


# -- compatible= stand-ins and `__iter__ = None` (used by greenasync.mongo) ----------------


class Real:
    def get(self):
        return "real"

    def copy(self):
        return Real()


class Fake:  # a duck-typed stand-in, as mongomock's classes are for pymongo's
    def get(self):
        return "fake"

    def copy(self):
        return Fake()


class Maker:
    def make(self):
        return Fake()


class NotIterable:  # pymongo's MongoClient/Database/Collection declare themselves so
    __iter__ = None

    def __next__(self):
        raise TypeError("not iterable")


async def test_wrap_compatible_classes_are_held_called_by_name_and_rewrapped():
    AsyncReal = greenasync.wrap(Real, patch=False, register=False, compatible=(Fake,))
    fake = AsyncReal.from_sync(Fake())
    assert type(fake) is AsyncReal and await fake.get() == "fake"
    copied = await fake.copy()  # a result of a compatible class comes back wrapped
    assert type(copied) is AsyncReal and type(copied.delegate) is Fake
    AsyncMaker = greenasync.wrap(Maker, patch=False, register=False)

    @greenasync.wrap(Maker, patch=False, register=False)
    class AsyncMakerWrapping:
        make = greenasync.Wraps(AsyncReal)  # wraps= accepts the compatible class too

    assert type(await AsyncMaker().make()) is Fake
    assert type(await AsyncMakerWrapping().make()) is AsyncReal
    with pytest.raises(TypeError, match="compatible= expects sync classes"):
        greenasync.wrap(Real, patch=False, register=False, compatible=(Fake(),))
    with pytest.raises(TypeError, match=r"expects a .*Real or .*Fake instance"):
        AsyncReal.from_sync(Maker())


def test_wrap_honours_iter_none():
    AsyncNot = greenasync.wrap(NotIterable, patch=False, register=False)
    assert not any(hasattr(AsyncNot, n) for n in ("__aiter__", "__anext__", "to_list"))


class Countdown:  # an iterator with a public next(), as pymongo's cursors have
    def __init__(self, n):
        self.n = n

    def next(self, park=False):
        if park:
            greenasync.sleep(0.001)  # the end arrives through the parked path too
        if self.n == 0:
            raise StopIteration
        self.n -= 1
        return self.n

    def drain_then_stop(self):
        self.n = 0
        raise StopIteration


@pytest.mark.parametrize("park", [False, True])
async def test_generated_next_ends_with_stop_async_iteration(park):
    AsyncCountdown = greenasync.wrap(Countdown, patch=False, register=False)
    c = AsyncCountdown(2)
    assert [await c.next(park), await c.next(park)] == [1, 0]
    with pytest.raises(StopAsyncIteration):
        await c.next(park)
    # Only a method named next() is translated: elsewhere StopIteration stays a RuntimeError.
    with pytest.raises(RuntimeError, match="StopIteration"):
        await c.drain_then_stop()
