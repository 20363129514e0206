"""redis-py as an awaitable client: the sync redis-py, unchanged, behind ``greenasync.wrap``.

::

    from greenasync.redis import Redis

    r = Redis.from_url("redis://127.0.0.1:6379/0")    # no I/O yet; a redis.Redis inside
    await r.set("k", "v")                               # every command is a coroutine
    async with r.pipeline() as p:
        results = await p.set("a", 1).incr("a").get("a").execute()
    async with r.lock("resource", timeout=10, blocking_timeout=5):
        ...
    async for key in r.scan_iter("user:*"):
        ...
    p = r.pubsub()
    await p.subscribe("news")
    msg = await p.get_message(timeout=1.0)             # the loop keeps running meanwhile
    async for msg in p.listen():
        ...
    r.delegate                                         # the redis.Redis: the sync API,
                                                       # usable from plain threads at once

Importing this module patches the ``redis`` package (``greenasync.patch("redis")``): inside
a greenasync greenlet, redis-py's sockets, ``select.poll`` (the hiredis parser), sleeps
(``redis.retry`` backoff, ``redis.lock``, the WATCH retry), ``threading`` locks
(``single_connection_client``) and the ``BlockingConnectionPool`` queue cooperate with the
event loop; outside one they are the stdlib, so the same objects also work from threads.
Errors are redis-py's own (``redis.ConnectionError``, ``redis.TimeoutError``, ``WatchError``,
``LockError``...), raised unchanged. ``greenasync.unpatch("redis")`` turns all of that off for
this module too (patching is not reference-counted): call ``greenasync.patch("redis")`` again.
The classes here are built with ``register=False``: they name each other explicitly
(``wraps=``), and another ``greenasync.wrap(redis.Redis)`` in the app sees no change.

What is what (one line each in the class bodies below):

``Redis``
    Every command method is a coroutine function. ``pipeline()``, ``pubsub()``, ``lock()``,
    ``get_encoder()``, ``set_response_callback()`` and friends do no I/O: plain calls,
    returning wrapped objects. ``scan_iter``/``hscan_iter``/``sscan_iter``/``zscan_iter`` return
    async iterators at once (``async for``, no ``await``). ``from_url``/``from_pool`` are plain
    class methods like redis-py's. ``transaction(func, *watches, ...)`` passes ``func`` the
    wrapped ``Pipeline``; ``func`` may be a coroutine function (it is awaited) or a plain
    function. ``monitor()`` returns an awaitable ``Monitor`` (``async for`` over ``listen()``).
``Pipeline``
    As in ``redis.asyncio``: a buffered command (the default, or after ``multi()``) is a plain
    call returning the pipeline, so calls chain; in immediate mode (after ``await
    p.watch(...)`` and before ``multi()``) the same method returns a coroutine. The pipeline
    is itself awaitable (``await p.set(...)`` works in both modes). ``await p.execute()``,
    ``await p.watch()``, ``await p.reset()`` do the I/O; ``async with`` resets on exit.
``PubSub``
    ``await p.subscribe(...)``, ``await p.get_message(timeout=...)``, ``async for m in
    p.listen()``, ``async with r.pubsub() as p``.
``Lock``
    ``await lock.acquire()/release()/extend()/reacquire()/owned()/locked()``, ``async with``.
    With ``thread_local=True`` (redis-py's default) the token belongs to the asyncio *task*
    that acquired it, as redis-py's belongs to a thread: another task sharing the Lock object
    does not own it (``owned()`` is False, ``release()`` raises ``LockError``, where redis-py
    from another thread raises ``AttributeError``). Mind helpers that run a coroutine in a new
    task (``asyncio.wait_for`` before 3.12, ``gather``/``create_task``): acquire and release in
    the same task, or pass ``thread_local=False`` (one token per Lock object, shared).
    (Each awaited step runs as its own greenasync job and green ``threading.local`` is per
    job, so a plain ``wrap(redis.lock.Lock)`` would lose the token between steps.)
``ConnectionPool``/``BlockingConnectionPool``
    Wrappers over redis-py's pools (pass one, or a sync pool, as ``connection_pool=``). An
    exhausted ``BlockingConnectionPool`` parks the caller (up to its ``timeout``), never the
    loop. ``from_url`` is a plain class method; ``disconnect()`` etc. are coroutines.

Limits: constructing a client does no I/O unless ``single_connection_client=True`` (redis-py
connects in its constructor): then build it with ``await Redis.create(...)``, or the connect
blocks the loop once. Module commands (``r.json()``, ``r.ft()``, ``r.ts()``...) and
``register_script`` return redis-py's sync objects: run them with ``greenasync.run``.
Cluster and Sentinel clients are not wrapped here. ``run_in_thread`` runs a real thread.
"""

import asyncio
import functools
import inspect
import weakref

import redis
import redis.client
import redis.lock

import greenasync
from greenasync import AsyncIter, Chain, SyncMethod, Wraps

__all__ = ["Redis", "Pipeline", "PubSub", "Lock", "Monitor", "ConnectionPool",
           "BlockingConnectionPool", "from_url"]


@greenasync.wrap(redis.ConnectionPool, register=False)
class ConnectionPool:
    from_url = SyncMethod()
    get_encoder = SyncMethod()
    get_protocol = SyncMethod()
    owns_connection = SyncMethod()
    get_connection_count = SyncMethod()


@greenasync.wrap(redis.BlockingConnectionPool, register=False)
class BlockingConnectionPool:
    from_url = SyncMethod()
    get_encoder = SyncMethod()
    get_protocol = SyncMethod()
    owns_connection = SyncMethod()
    get_connection_count = SyncMethod()


# --- Lock: the token per asyncio task ------------------------------------------------------

# Each awaited step runs as its own greenasync job, and green ``threading.local`` is per job:
# a token set by ``acquire`` would be gone by ``release``. So the wrapper keeps the token of
# each task (the async "thread") and puts it in ``lock.local`` for the step's duration.
_tokens = weakref.WeakKeyDictionary()  # sync Lock -> WeakKeyDictionary(task -> token)
_NO_TASK = type("_NoTask", (), {"__slots__": ("__weakref__",)})()  # key outside a task


def _with_token(lock, key, name, args, kwargs):
    tokens = _tokens.get(lock)
    if tokens is None:
        tokens = _tokens.setdefault(lock, weakref.WeakKeyDictionary())
    lock.local.token = tokens.get(key)
    try:
        return getattr(lock, name)(*args, **kwargs)  # a lock_class subclass's override
    finally:
        token = getattr(lock.local, "token", None)
        if token is None:
            tokens.pop(key, None)
        else:
            tokens[key] = token


def _token_step(name):
    async def method(self, *args, **kwargs):
        d = self.delegate
        if not d.thread_local:
            return await greenasync.run(getattr(d, name), *args, **kwargs)
        key = asyncio.current_task() or _NO_TASK
        return await greenasync.run(_with_token, d, key, name, args, kwargs)

    functools.update_wrapper(method, getattr(redis.lock.Lock, name))
    method.__qualname__ = f"Lock.{name}"
    return method


@greenasync.wrap(redis.lock.Lock, register=False)
class Lock:
    register_scripts = SyncMethod()
    acquire = _token_step("acquire")
    release = _token_step("release")
    extend = _token_step("extend")
    reacquire = _token_step("reacquire")
    owned = _token_step("owned")
    _enter = _token_step("__enter__")
    _exit = _token_step("__exit__")

    async def __aenter__(self):
        await self._enter()
        return self

    async def __aexit__(self, exc_type, exc, tb):
        return await self._exit(exc_type, exc, tb)


# --- PubSub, Monitor -----------------------------------------------------------------------


@greenasync.wrap(redis.client.PubSub, register=False)
class PubSub:
    listen = AsyncIter()
    handle_message = SyncMethod()
    is_health_check_response = SyncMethod()
    run_in_thread = SyncMethod()


@greenasync.wrap(redis.client.Monitor, register=False)
class Monitor:
    listen = AsyncIter()


# --- Pipeline ------------------------------------------------------------------------------


@greenasync.wrap(redis.client.Pipeline, register=False)
class Pipeline:
    multi = Chain()
    get_encoder = SyncMethod()
    set_response_callback = SyncMethod()
    pipeline_execute_command = Chain()

    def __len__(self):  # the buffered commands (hand-written: see _wrap's `owner or wcls`)
        return len(self.delegate)

    def __bool__(self):  # as redis-py's: a pipeline is always true, even when empty
        return True

    def __await__(self):  # `await p.set(...)` in buffered mode: the pipeline itself
        return self
        yield  # noqa: unreachable (makes this a generator)


def _immediate(p, args):
    # redis.client.Pipeline.execute_command's own test for "send now" vs "buffer".
    return (p.watching or (args[:1] == ("WATCH",))) and not p.explicit_transaction


def _buffering(name, immediate, execute_command=False):
    """A pipeline command: buffered (plain call, returns the pipeline) or, in immediate
    mode, the generated coroutine method ``immediate``."""

    def method(self, *args, **kwargs):
        p = self.delegate
        if _immediate(p, args if execute_command else ()):
            return immediate(self, *args, **kwargs)
        result = getattr(p, name)(*args, **kwargs)
        return self if result is p else result

    functools.update_wrapper(method, immediate)
    method.__qualname__ = f"Pipeline.{name}"
    return method


def _command_names():
    # The command mixins' methods (redis.commands.*) plus execute_command: everything whose
    # I/O goes through Pipeline.execute_command. Generators and module-client factories
    # (json(), ft()...) stay as generated.
    skip = {"scan_iter", "hscan_iter", "sscan_iter", "zscan_iter", "register_script"}
    names, seen = set(), set()
    for base in redis.client.Pipeline.__mro__:  # the first definition wins (watch, unwatch)
        command = base.__module__.startswith("redis.commands") and \
            base.__module__ != "redis.commands.redismodules"
        for name, raw in vars(base).items():
            if name in seen:
                continue
            seen.add(name)
            if command and not name.startswith("_") and name not in skip and \
                    inspect.isfunction(raw):
                names.add(name)
    return names


for _name in sorted(_command_names()):
    setattr(Pipeline, _name, _buffering(_name, getattr(Pipeline, _name)))
Pipeline.execute_command = _buffering("execute_command", Pipeline.execute_command, True)
del _name


# --- Redis ---------------------------------------------------------------------------------


@greenasync.wrap(redis.Redis, register=False)
class Redis:
    from_url = SyncMethod()
    from_pool = SyncMethod()
    pipeline = SyncMethod(wraps=Pipeline)
    pubsub = SyncMethod(wraps=PubSub)
    lock = SyncMethod(wraps=Lock)
    monitor = Wraps(Monitor)
    get_encoder = SyncMethod()
    get_connection_kwargs = SyncMethod()
    get_retry = SyncMethod()
    set_retry = SyncMethod()
    set_response_callback = SyncMethod()
    load_external_module = SyncMethod()
    scan_iter = AsyncIter()
    hscan_iter = AsyncIter()
    sscan_iter = AsyncIter()
    zscan_iter = AsyncIter()

    async def transaction(self, func, *watches, **kwargs):
        """redis-py's ``transaction`` (WATCH, call ``func``, EXEC; retry on ``WatchError``):
        ``func`` gets the wrapped :class:`Pipeline` and may be a coroutine function."""

        def call(pipe):  # in the worker greenlet running redis-py's retry loop
            value = func(Pipeline.from_sync(pipe))
            if inspect.isawaitable(value) and type(value) is not Pipeline:  # (it is awaitable)
                value = greenasync.await_(value)
            return value

        return await greenasync.run(self.delegate.transaction, call, *watches, **kwargs)


def from_url(url, **kwargs):
    """``redis.from_url``: a wrapped :class:`Redis` for ``url`` (no I/O, see the limits)."""
    return Redis.from_url(url, **kwargs)
