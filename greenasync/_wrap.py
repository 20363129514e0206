"""The user-facing decorator: an awaitable facade over an unchanged sync class.

::

    @greenasync.wrap(redis.Redis)        # or: AsyncRedis = greenasync.wrap(redis.Redis)
    class AsyncRedis:
        scan_iter = AsyncIter()          # `async for k in r.scan_iter()`, no await first

    r = AsyncRedis(host="127.0.0.1")     # builds redis.Redis(host=...) in the caller
    await r.set("k", "v")                # redis.Redis.set runs in a worker greenlet
    r.delegate                           # the redis.Redis instance

Every public method of the sync class (whole MRO, names not starting with ``_``) becomes a
coroutine function with the same name, signature, docstring and ``__wrapped__``; class and
static methods become async class/static methods; properties, descriptors and constants pass
through. The functions are built once per wrapped class; a call costs one ``greenasync.run``
plus a few attribute reads. The sync class is never modified: its methods calling each other
stay plain sync calls inside the one greenlet.

Declarations in the class body, one line each (hand-written methods always win)::

    SyncMethod()           call directly, no greenlet (for methods doing no I/O)
    Chain()                call directly, return the wrapper: cur.sort("x").limit(3)
    Property()             read-only passthrough; Property(writable=True) also sets
    Wraps(Target)          coroutine method whose result is wrapped in Target
    AsyncIter()            an async iterator at once; the sync call runs at the first step

``SyncMethod``/``AsyncIter`` take ``wraps=`` too (a wrapper class, or a sync class looked up in
the registry at first use). Dunders are generated only for the protocols below; declare
others: ``__getitem__ = SyncMethod()`` and ``__getattr__ = SyncMethod()`` give
``client["db"]`` and ``client.db``. A declaration naming a method the sync class lacks fails
when the class is built (``Property`` may name an instance attribute).

Results: the delegate itself comes back as the wrapper; an instance of exactly a wrapped
sync class comes back wrapped (the caller's own class for its own sync type, else the
registry: each ``wrap()`` registers, the last wins, ``register=False`` opts out); generators
and plain iterators become :class:`AsyncIterator` (``async for``, ``to_list(n)``); context
managers with no public methods of their own become :class:`AsyncContextManager`; other
objects (a redis ``Pipeline``) come back unchanged unless their type is wrapped. A sync class
with ``__enter__``/``__exit__`` gets ``__aenter__``/``__aexit__``, one with ``__iter__`` or
``__next__`` gets ``__aiter__``/``__anext__``/``to_list``; every step runs in a greenlet. A
generated ``next()`` (pymongo's cursors have one) raises StopAsyncIteration at the end, as
``__anext__`` does; a StopIteration from any other method arrives as a RuntimeError, which is
what Python makes of a StopIteration leaving a coroutine.
Arguments that are wrappers are replaced by their delegate (positional and keyword, top level
only: scanning containers would cost O(n) per bulk call and change what the sync code gets).

Construction: ``Async(*a, **kw)`` builds the delegate synchronously in the caller, where the
patched shims *are* the stdlib: constructor I/O (redis ``single_connection_client=True``, an
eager connect) is plain blocking I/O on the loop thread. ``await Async.create(*a, **kw)``
runs the construction in a greenlet instead; ``Async.from_sync(obj)`` adopts an existing
object (neither runs a subclass's ``__init__``); a sync ``create``/``from_sync`` wins over
ours. ``Async(SomeClass)`` with one class argument on the class ``wrap()`` returned decorates
it; subclass ``Async`` or use ``create()`` if the sync constructor takes one class argument.

Stand-ins: ``wrap(Sync, compatible=(Fake, ...))`` lets one wrapper class hold instances of
duck-typed stand-ins too (mongomock's classes for pymongo's): members are still generated from
``Sync`` and reach a stand-in by name (a method it lacks raises its ``AttributeError`` when
called), ``from_sync`` accepts it, a result whose type is exactly ``Fake`` comes back wrapped
as one of type ``Sync`` would, and a ``wraps=`` naming this wrapper accepts ``Fake`` instances
too. The stand-ins' packages are not patched.

Patching: ``wrap`` scoped-patches the sync class's top-level package (``patch=True``) unless
that is the stdlib, ``builtins``, ``__main__`` or greenasync. An in-house SDK in the app's own
package patches that package, which is safe: every shim is the stdlib outside a greenlet.
``patch=["pkg", ...]`` replaces the default, ``patch=False`` patches nothing.

Limits: a class built at runtime is opaque to type checkers (``wrap()`` is untyped, so a
wrapped class and its members are ``Any``; typed ready-made wrappers need stubs or generated
code). Each step runs in whichever worker greenlet is free, so state bound to the running
greenlet does not carry from one awaited step to the next (an RLock taken in ``__enter__``
and released in ``__exit__``, a contextvar token set in one call and reset in another).
Properties are read in the caller: one that does I/O blocks (hand-write an async method). A
sync member named ``delegate`` is reachable only as ``w.delegate.delegate``.
"""

import functools
import inspect
import sys
import types

from ._bridge import _get_running_loop, run
from ._errors import NoRunningLoopError

__all__ = ["wrap", "Wrapper", "SyncMethod", "Chain", "Property", "Wraps", "AsyncIter",
           "AsyncIterator", "AsyncContextManager"]

_MISSING = object()
_END = object()  # next(it, _END): StopIteration cannot cross run() (a Future refuses it)
_ITER = object()
_CM = object()
# Types no method ever needs to convert: checked first, so most results cost one set lookup.
_PLAIN = frozenset(
    {type(None), bool, int, float, complex, str, bytes, bytearray, memoryview, list, tuple,
     dict, set, frozenset}
)
_registry = {}  # exact sync type -> wrapper class
_plans = {}  # type -> wrapper class, _ITER, _CM or None; cleared whenever _registry changes


def _name(cls):
    return f"{cls.__module__}.{cls.__qualname__}"


def _lookup(sync, name):
    """The raw attribute as the sync class's MRO defines it, or _MISSING (no descriptors run)."""
    for base in sync.__mro__:
        if name in base.__dict__:
            return base.__dict__[name]
    return _MISSING


# --- arguments in, results out -------------------------------------------------------------

_WRAPPERS = set()  # every Wrapper subclass (__init_subclass__): `type(a) in` beats isinstance


def _unwrap(args):
    for a in args:
        if type(a) in _WRAPPERS:
            return tuple(a.delegate if type(a) in _WRAPPERS else a for a in args)
    return args


def _unwrap_kw(kwargs):
    for v in kwargs.values():
        if type(v) in _WRAPPERS:
            return {k: v.delegate if type(v) in _WRAPPERS else v for k, v in kwargs.items()}
    return kwargs


def _plan_for(t):
    wcls = _registry.get(t)  # exact type: a subclass may add state or API the wrapper lacks
    if wcls is not None:
        return wcls
    own_api = any(not n.startswith("_") and callable(getattr(t, n, None)) for n in dir(t))
    iterator = hasattr(t, "__next__") and getattr(t, "__iter__", None) is not None
    if t is types.GeneratorType or (iterator and not own_api):
        return _ITER
    if hasattr(t, "__enter__") and hasattr(t, "__exit__") and not own_api:
        return _CM
    return None


def _adopt(wcls, obj):
    self = object.__new__(wcls)
    self.delegate = obj
    return self


def _convert(wcls, owner, result, protocols=True, wraps=None):
    """Map a sync result to what the caller of a wrapper sees (see the module docstring).
    ``wcls`` is the calling wrapper class (or None), ``owner`` the calling wrapper (or None)."""
    t = type(result)
    if t in _PLAIN:
        return result
    if owner is not None and result is owner.delegate:
        return owner
    if wraps is not None:
        target = wraps()
        if isinstance(result, target.__greenasync_types__):
            return _adopt(target, result)
    if wcls is not None and t in wcls.__greenasync_types__:
        return _adopt(wcls, result)
    plan = _plans.get(t, _MISSING)
    if plan is _MISSING:
        plan = _plans[t] = _plan_for(t)
    if plan is None or (not protocols and plan in (_ITER, _CM)):
        return result
    if plan is _ITER:
        return AsyncIterator(result, wraps=wraps)
    if plan is _CM:
        return AsyncContextManager(result)
    return _adopt(plan, result)


def _target(wraps):
    """``wraps=`` as a zero-argument resolver; a sync class is looked up at first use."""
    if wraps is None or (isinstance(wraps, type) and issubclass(wraps, Wrapper)):
        return wraps and (lambda: wraps)
    if not isinstance(wraps, type):
        raise TypeError(f"wraps= expects a wrapper class or a sync class, got {wraps!r}")

    def resolve():
        try:
            return _registry[wraps]
        except KeyError:
            raise LookupError(f"wraps={_name(wraps)}: no wrapper is registered for it") from None

    return resolve


def _no_loop(label):
    # Only a coroutine driven by something other than a running asyncio loop gets here.
    return NoRunningLoopError(
        f"{label}() is a coroutine function and needs a running asyncio event loop: await it "
        "inside a coroutine (asyncio.run(main()), a Tornado handler); for a blocking call use "
        "the sync object, `.delegate`"
    )


async def _run(label, fn, *args):
    try:
        return await run(fn, *args)
    except NoRunningLoopError:
        if _get_running_loop() is None:
            raise _no_loop(label()) from None
        raise


def _call_named(name, d, /, *args, **kwargs):
    # The delegate is an instance of a *subclass* of the wrapped class: honour its overrides.
    return getattr(d, name)(*args, **kwargs)


# --- generated members ---------------------------------------------------------------------


def _kind(raw):
    if isinstance(raw, staticmethod):
        return "static"
    if isinstance(raw, (classmethod, types.ClassMethodDescriptorType)):
        return "class"
    return "method"


def _hot_method(sync, name, raw, wraps):
    """The coroutine function for one sync instance method: the per-call hot path."""
    fn = raw if inspect.isfunction(raw) else None  # anything else is looked up per call

    async def method(self, *args, **kwargs):
        d = self.delegate
        if args:
            args = _unwrap(args)
        if kwargs:
            kwargs = _unwrap_kw(kwargs)
        try:
            if type(d) is sync and fn is not None:
                result = await run(fn, d, *args, **kwargs)
            else:
                result = await run(_call_named, name, d, *args, **kwargs)
        except NoRunningLoopError:
            if _get_running_loop() is None:
                raise _no_loop(f"{type(self).__qualname__}.{name}") from None
            raise
        if type(result) in _PLAIN:
            return result
        return _convert(type(self), self, result, True, wraps)

    return method


def _ending_with_stop_async_iteration(method):
    """An iterator's ``next()`` ends with StopAsyncIteration, as ``__anext__`` does: the sync
    StopIteration cannot leave a coroutine (it arrives as a RuntimeError caused by it)."""

    async def next(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except RuntimeError as exc:
            if isinstance(exc.__cause__, StopIteration):
                raise StopAsyncIteration from None
            raise

    return next


def _member(sync, name, raw, mode="async", wraps=None):
    """Build the wrapper's member for sync method ``name``; ``mode`` is "async" (a coroutine
    function), "sync" (SyncMethod), "chain" (Chain) or "iter" (AsyncIter)."""
    kind = _kind(raw)
    if kind == "method" and mode == "async":
        method = _hot_method(sync, name, raw, wraps)
        if name == "next":
            method = _ending_with_stop_async_iteration(method)
    elif kind != "method" and mode not in ("async", "sync"):
        raise TypeError(f"{_name(sync)}.{name} is a {type(raw).__name__}: it cannot be {mode}")
    else:
        if kind == "method":
            fn = raw if inspect.isfunction(raw) else None

            def call(self, args, kwargs):
                d = self.delegate
                args, kwargs = _unwrap(args), _unwrap_kw(kwargs)
                if type(d) is sync and fn is not None:
                    return fn(d, *args, **kwargs)
                return getattr(d, name)(*args, **kwargs)
        else:
            bound = raw.__get__(None, sync)

            def call(owner, args, kwargs):
                return bound(*_unwrap(args), **_unwrap_kw(kwargs))

        def split(args):  # -> (wrapper class or None, wrapper or None, remaining args)
            if kind == "static":
                return None, None, args
            if kind == "class":
                return args[0], None, args[1:]
            return type(args[0]), args[0], args[1:]

        if mode == "async":  # class and static methods
            async def method(*args, **kwargs):
                wcls, _, args = split(args)
                label = lambda: f"{(wcls or sync).__qualname__}.{name}"  # noqa: E731
                result = await _run(label, call, wcls, args, kwargs)
                return _convert(wcls, None, result, True, wraps)
        elif mode == "sync":
            def method(*args, **kwargs):
                wcls, owner, args = split(args)
                return _convert(wcls, owner, call(wcls if owner is None else owner, args, kwargs), True, wraps)
        elif mode == "chain":
            def method(self, *args, **kwargs):
                result = call(self, args, kwargs)
                # In-place APIs return the object or None; a builder returning a new object
                # of a wrapped type gets a new wrapper rather than silently losing it.
                if result is None or result is self.delegate:
                    return self
                return _convert(type(self), self, result, False)
        else:  # "iter": nothing runs until the first step, which is in a greenlet
            def method(self, *args, **kwargs):
                return AsyncIterator(None, start=lambda: call(self, args, kwargs), wraps=wraps,
                                     label=f"{type(self).__qualname__}.{name}")
    # Name, doc, and __wrapped__ (which inspect.signature follows) from the sync function.
    wrapped = getattr(raw, "__func__", raw if inspect.isfunction(raw) else getattr(sync, name))
    functools.update_wrapper(method, wrapped)
    return {"static": staticmethod, "class": classmethod}.get(kind, lambda f: f)(method)


def _getattr_member(sync, wraps=None):
    """``__getattr__ = SyncMethod()``: navigation such as ``client.db`` through the delegate."""

    def __getattr__(self, name):
        if name == "delegate" or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(name)  # protocol probes (copy, pickle) never reach the library
        return _convert(type(self), self, getattr(self.delegate, name), True, wraps)

    return functools.update_wrapper(__getattr__, sync.__getattr__)


class _Passthrough:
    """Reads (and, if writable, sets) an attribute of the delegate; wraps wrapped types."""

    def __init__(self, name, doc=None, writable=False, constant=False):
        self.name = name
        self.__doc__ = doc
        self.writable = writable
        self.constant = constant  # class-level access returns the sync class's value

    def __get__(self, obj, owner=None):
        if obj is None:
            return getattr(owner.__greenasync_sync__, self.name) if self.constant else self
        return _convert(type(obj), obj, getattr(obj.delegate, self.name), False)

    def __set__(self, obj, value):
        if not self.writable:
            raise AttributeError(
                f"{type(obj).__qualname__}.{self.name} is read-only on the wrapper "
                f"(declare `{self.name} = Property(writable=True)` to set it on the delegate)"
            )
        setattr(obj.delegate, self.name, value.delegate if type(value) in _WRAPPERS else value)


def _auto_member(sync, name, raw):
    if isinstance(raw, property):
        return _Passthrough(name, raw.__doc__, writable=raw.fset is not None)
    if isinstance(raw, (staticmethod, classmethod, types.ClassMethodDescriptorType,
                        functools.partialmethod)) or inspect.isfunction(raw) or \
            (callable(raw) and hasattr(raw, "__get__") and not isinstance(raw, type)):
        return _member(sync, name, raw)  # functions, C method descriptors
    if hasattr(type(raw), "__get__") and not isinstance(raw, type):
        # Other descriptors (cached_property, __slots__ members, getset): like a property.
        writable = hasattr(type(raw), "__set__") or isinstance(raw, functools.cached_property)
        return _Passthrough(name, getattr(raw, "__doc__", None), writable=writable)
    # Constants, nested classes, callables that do not bind (functools.partial): read at
    # class level from the sync class, at instance level from the delegate.
    return _Passthrough(name, None, writable=True, constant=True)


def _protocol_members(sync, ns):
    """``__aenter__``/``__aexit__``, ``__aiter__``/``__anext__``/``to_list`` from the sync
    class's context-manager and iterator protocols."""

    def label(self, n):
        return lambda: f"{type(self).__qualname__}.{n}"

    if _lookup(sync, "__enter__") is not _MISSING and _lookup(sync, "__exit__") is not _MISSING:
        async def __aenter__(self):
            d = self.delegate
            result = await _run(label(self, "__aenter__"), type(d).__enter__, d)
            return _convert(type(self), self, result)

        async def __aexit__(self, exc_type, exc, tb):
            d = self.delegate
            return await _run(label(self, "__aexit__"), type(d).__exit__, d, exc_type, exc, tb)

        ns.update(__aenter__=__aenter__, __aexit__=__aexit__)
    if _lookup(sync, "__iter__") is None:
        return  # `__iter__ = None` declares the class not iterable (pymongo's MongoClient)
    is_iterator = _lookup(sync, "__next__") is not _MISSING
    if is_iterator or _lookup(sync, "__iter__") is not _MISSING:
        def _iterator(self):
            d, label = self.delegate, type(self).__qualname__
            return AsyncIterator(d if is_iterator else None, start=lambda: d, label=label)

        def __aiter__(self):
            """An async iterator over the delegate: every step runs in a worker greenlet."""
            return self if is_iterator else _iterator(self)

        async def __anext__(self):
            item = await _run(label(self, "__anext__"), _iterator(self)._step)
            if item is _END:
                raise StopAsyncIteration
            return item

        async def to_list(self, length=None):
            """The next ``length`` items (all remaining if None), fetched in one greenlet call."""
            return await _iterator(self).to_list(length)

        ns["__aiter__"] = __aiter__
        if is_iterator:
            ns["__anext__"] = __anext__
        ns.setdefault("to_list", to_list)


# --- declarations --------------------------------------------------------------------------


class _Declaration:
    _mode = "async"  # what _member builds
    _needs_callable = True

    def __init__(self, *, wraps=None):
        self.wraps = wraps

    def __repr__(self):
        return f"{type(self).__name__}()"

    def _build(self, cls, name):
        sync = cls.__greenasync_sync__
        raw = _lookup(sync, name)
        if self._needs_callable and (raw is _MISSING or not callable(getattr(sync, name))):
            what = "has no attribute" if raw is _MISSING else "has no method"
            raise AttributeError(
                f"{cls.__qualname__}.{name} = {self!r}: {_name(sync)} {what} {name!r}"
            )
        return self._make(sync, name, raw, _target(self.wraps))

    def _make(self, sync, name, raw, wraps):
        return _member(sync, name, raw, self._mode, wraps)


class SyncMethod(_Declaration):
    """Call the sync method directly in the caller, with no greenlet: for methods doing no
    I/O. Its result is converted like any other (wrapped types come back wrapped)."""

    _mode = "sync"

    def _make(self, sync, name, raw, wraps):
        if name == "__getattr__":
            return _getattr_member(sync, wraps)
        return _member(sync, name, raw, "sync", wraps)


class Chain(_Declaration):
    """Call the sync method directly and return the wrapper itself, for fluent APIs:
    ``cursor.sort("x").limit(3)``. A builder that returns a *new* object gets it wrapped."""

    _mode = "chain"


class AsyncIter(_Declaration):
    """Return an :class:`AsyncIterator` at once (``async for x in w.scan()``); the sync call
    and every ``next()`` run in a greenlet, the call at the first step."""

    _mode = "iter"


class Wraps(_Declaration):
    """A coroutine method whose result, if an instance of ``target``'s sync class, comes back
    wrapped in ``target`` (a wrapper class, or a sync class resolved in the registry)."""

    def __init__(self, target):
        super().__init__(wraps=target)

    def __repr__(self):
        return f"Wraps({getattr(self.wraps, '__qualname__', self.wraps)})"


class Property(_Declaration):
    """Pass an attribute of the delegate through, read-only unless ``writable=True``. May name
    an instance attribute (one the sync class sets in ``__init__``)."""

    _needs_callable = False

    def __init__(self, *, writable=False):
        super().__init__()
        self.writable = writable

    def __repr__(self):
        return f"Property(writable={self.writable})"

    def _make(self, sync, name, raw, wraps):
        if inspect.isfunction(raw) or isinstance(raw, (staticmethod, classmethod)):
            raise TypeError(
                f"{name} = {self!r}: {_name(sync)}.{name} is a method; "
                "declare it SyncMethod() or leave it to become a coroutine"
            )
        doc = raw.__doc__ if hasattr(type(raw), "__get__") else None  # not a constant's type doc
        return _Passthrough(name, doc, self.writable)


# --- the wrapper base class ----------------------------------------------------------------


class Wrapper:
    """Base of every class :func:`wrap` builds. ``delegate`` is the wrapped sync object."""

    __greenasync_sync__ = None  # the wrapped sync class
    __greenasync_types__ = ()  # it and the compatible= classes: what an instance may wrap
    __greenasync_patched__ = ()  # packages wrap() patched for it

    def __new__(cls, *args, **kwargs):
        if cls.__dict__.get("_greenasync_decoratable_") and len(args) == 1 and not kwargs and \
                isinstance(args[0], type):
            return _decorate(cls, args[0])  # `@wrap(Sync)` over a class body
        if cls.__greenasync_sync__ is None:
            raise TypeError("greenasync.Wrapper is abstract: build classes with greenasync.wrap()")
        return object.__new__(cls)

    def __init_subclass__(cls, **kwargs):
        # Turn declarations into members, for decorated bodies and plain subclasses alike.
        super().__init_subclass__(**kwargs)
        _WRAPPERS.add(cls)
        declared = [n for n, v in cls.__dict__.items() if isinstance(v, _Declaration)]
        for name in declared:
            setattr(cls, name, cls.__dict__[name]._build(cls, name))
        _set_qualnames(cls, declared, cls.__qualname__)

    @classmethod
    def from_sync(cls, obj):
        """Wrap an existing sync object (an instance of the wrapped class, of a
        ``compatible=`` class, or of a subclass of either)."""
        if not isinstance(obj, cls.__greenasync_types__):
            expected = " or ".join(_name(t) for t in cls.__greenasync_types__)
            raise TypeError(
                f"{cls.__qualname__}.from_sync() expects a {expected} instance, "
                f"got {_name(type(obj))}"
            )
        return _adopt(cls, obj)

    @classmethod
    async def create(cls, *args, **kwargs):
        """Like ``cls(*args, **kwargs)``, but the construction (and any I/O the sync
        constructor does) runs in a worker greenlet, cooperatively."""
        return await _run(lambda: f"{cls.__qualname__}.create", _construct, cls, args, kwargs)

    def __getattr__(self, name):
        # Only reached when normal lookup failed: forward public *instance* attributes of the
        # delegate (class-level names were generated already), refuse everything else.
        if not name.startswith("_") and name != "delegate":
            d = self.__dict__.get("delegate", _MISSING)
            value = getattr(d, "__dict__", {}).get(name, _MISSING)
            if value is not _MISSING:
                return _convert(type(self), self, value, False)
        sync = type(self).__greenasync_sync__
        err = AttributeError(
            f"{type(self).__qualname__!r} object has no attribute {name!r} "
            f"(nor has the {_name(sync)} it wraps{', publicly' if name.startswith('_') else ''})"
        )
        err.name, err.obj = name, self  # Python's "Did you mean ...?" hint reads these
        raise err

    def __dir__(self):
        extra = getattr(self.__dict__.get("delegate"), "__dict__", {})
        return sorted(set(object.__dir__(self)) | {n for n in extra if not n.startswith("_")})

    def __repr__(self):
        return f"{type(self).__qualname__}({self.__dict__.get('delegate', '<no delegate>')!r})"

    def __eq__(self, other):
        if type(other) in _WRAPPERS:
            return self.delegate == other.delegate
        return NotImplemented

    def __hash__(self):
        return hash(self.delegate)


def _construct(cls, args, kwargs):
    # Not cls(*args): with a single class argument that would mean `@wrap(Sync)` decoration.
    self = object.__new__(cls)
    self.__init__(*args, **kwargs)
    return self


class AsyncIterator:
    """``async for`` over a sync iterator; every ``next()`` runs in a worker greenlet.

    ``delegate`` is the sync iterator (None until the first step if it is built lazily).
    """

    __slots__ = ("delegate", "_start", "_wraps", "_label")

    def __init__(self, iterator, *, start=None, wraps=None, label="AsyncIterator"):
        # `iterator`: the sync iterator; if None, `start` (a zero-argument callable returning
        # an iterable) runs in the greenlet at the first step: nothing runs before.
        self.delegate = iterator
        self._start = start
        self._wraps = wraps
        self._label = label

    def __aiter__(self):
        return self

    def _step(self):
        it = self.delegate
        if it is None:
            it = self.delegate = iter(self._start())
            self._start = None
        item = next(it, _END)
        return item if item is _END else _convert(None, None, item, False, self._wraps)

    async def __anext__(self):
        item = await _run(lambda: f"{self._label}.__anext__", self._step)
        if item is _END:
            raise StopAsyncIteration
        return item

    def _take(self, length):
        items = []
        while length is None or len(items) < length:
            item = self._step()
            if item is _END:
                break
            items.append(item)
        return items

    async def to_list(self, length=None):
        """The next ``length`` items (all remaining if None), fetched in one greenlet call."""
        if length is not None and length < 0:
            raise ValueError("to_list() length must be non-negative or None")
        return await _run(lambda: f"{self._label}.to_list", self._take, length)

    async def aclose(self):
        """Close the sync iterator (a generator's ``finally`` runs in a greenlet)."""
        close = getattr(self.delegate, "close", None)
        if close is not None:
            await _run(lambda: f"{self._label}.aclose", close)


class AsyncContextManager:
    """``async with`` over a sync context manager; ``__enter__``/``__exit__`` run in a greenlet."""

    __slots__ = ("delegate",)

    def __init__(self, cm):
        self.delegate = cm

    async def __aenter__(self):
        d = self.delegate
        result = await _run(lambda: "AsyncContextManager.__aenter__", type(d).__enter__, d)
        return _convert(None, None, result)

    async def __aexit__(self, *exc_info):
        d = self.delegate
        return await _run(lambda: "AsyncContextManager.__aexit__", type(d).__exit__, d, *exc_info)


# --- wrap() --------------------------------------------------------------------------------


def _never_patched(top):
    if top in ("", "builtins", "__main__", "greenasync"):
        return True
    names = getattr(sys, "stdlib_module_names", None)  # 3.10+
    if names is not None:
        return top in names
    mod = sys.modules.get(top)
    return mod is not None and "site-packages" not in (getattr(mod, "__file__", None) or "")


def _packages(sync, patch):
    if patch is False or patch is None:
        return ()
    if patch is True:
        top = (sync.__module__ or "").partition(".")[0]
        return () if _never_patched(top) else (top,)
    packages = (patch,) if isinstance(patch, str) else tuple(patch)
    if not all(isinstance(p, str) and p for p in packages):
        raise TypeError(f"patch= expects True, False or package names, got {patch!r}")
    return packages


def _register(sync, wcls):
    _registry[sync] = wcls
    _plans.clear()


def wrap(sync_cls, *, patch=True, register=True, compatible=()):
    """Build an awaitable facade class over ``sync_cls`` (see the module docstring).

    Use it as ``Async = wrap(Sync)``, or as ``@wrap(Sync)`` on a class body holding
    declarations and hand-written methods. Patches the sync class's top-level package
    first (``patch=``); registers the result so other wrappers return it (``register=``).
    ``compatible=`` names classes whose instances the wrapper may hold too (see the module
    docstring).
    """
    if not isinstance(sync_cls, type):
        raise TypeError(
            f"greenasync.wrap() expects a class, got {type(sync_cls).__name__} {sync_cls!r} "
            "(pass the class itself, e.g. wrap(redis.Redis), not an instance)"
        )
    if issubclass(sync_cls, Wrapper):
        raise TypeError(f"{sync_cls.__qualname__} is already a greenasync wrapper")
    compatible = tuple(compatible)
    if not all(isinstance(c, type) and not issubclass(c, Wrapper) for c in compatible):
        raise TypeError(f"compatible= expects sync classes, got {compatible!r}")
    packages = _packages(sync_cls, patch)
    if packages:
        from . import _patch  # late: the patcher imports every shim

        _patch.patch(*packages)
    qualname = f"Async{sync_cls.__name__}"
    ns = {
        "__module__": sys._getframe(1).f_globals.get("__name__", __name__),
        "__qualname__": qualname,
        "__doc__": f"Awaitable facade over :class:`{_name(sync_cls)}` (greenasync.wrap): its "
        "public methods are coroutine functions running the sync method in a worker greenlet."
        + (f"\n\n{inspect.cleandoc(sync_cls.__doc__)}" if sync_cls.__doc__ else ""),
        "__greenasync_sync__": sync_cls,
        "__greenasync_types__": (sync_cls, *compatible),
        "__greenasync_patched__": packages,
        "_greenasync_decoratable_": True,
    }
    seen = set()
    for base in sync_cls.__mro__[:-1]:  # not object
        for name, raw in base.__dict__.items():
            if name in seen:
                continue
            seen.add(name)
            # `delegate` is ours; a sync `create`/`from_sync` shadows the factories (parity).
            if not name.startswith("_") and name != "delegate":
                ns[name] = _auto_member(sync_cls, name, raw)
    _protocol_members(sync_cls, ns)

    def __init__(self, *args, **kwargs):
        self.delegate = sync_cls(*_unwrap(args), **_unwrap_kw(kwargs))

    __init__.__doc__ = (f"Build the sync {sync_cls.__qualname__} with the same arguments, "
                        "synchronously in the caller (see create() for a cooperative build).")
    try:
        sig = inspect.signature(sync_cls)
        params = list(sig.parameters.values())
        positional_only = any(p.kind == p.POSITIONAL_ONLY for p in params)
        self_param = inspect.Parameter("self", 0 if positional_only else 1)  # help() shows no "/"
        __init__.__signature__ = sig.replace(parameters=[self_param, *params])
    except (TypeError, ValueError):
        pass  # some C classes have no introspectable signature
    ns["__init__"] = __init__
    cls = type(qualname, (Wrapper,), ns)
    _set_qualnames(cls, list(ns), qualname)
    if register:
        for t in cls.__greenasync_types__:
            _register(t, cls)
    return cls


def _set_qualnames(cls, names, prefix):
    # Generated functions read "AsyncRedis.get" in reprs and help(), not the sync qualname.
    for name in names:
        value = cls.__dict__.get(name)
        fn = getattr(value, "__func__", value)
        if isinstance(fn, types.FunctionType):
            fn.__qualname__ = f"{prefix}.{name}"


def _decorate(gen, body):
    """``@wrap(Sync) class Body(...)``: rebuild Body on top of the generated class."""
    if issubclass(body, Wrapper):
        raise TypeError(
            f"@wrap({gen.__greenasync_sync__.__qualname__}) over {body.__qualname__}, which "
            "already inherits from a wrapper: decorate a plain class (mixins are fine), or "
            "subclass the wrapper without @wrap"
        )
    del gen._greenasync_decoratable_
    sync = gen.__greenasync_sync__
    gen.__name__ = gen.__qualname__ = f"wrap({sync.__name__})"  # help(): class Body(wrap(Redis))
    ns = dict(body.__dict__)
    ns.pop("__dict__", None)
    ns.pop("__weakref__", None)
    slots = ns.get("__slots__", ())
    for slot in (slots,) if isinstance(slots, str) else slots:
        ns.pop(slot, None)  # type() recreates slot descriptors
    ns["__qualname__"] = body.__qualname__
    bases = tuple(b for b in body.__bases__ if b is not object) + (gen,)
    final = type(body)(body.__name__, bases, ns)
    _set_qualnames(gen, list(gen.__dict__), final.__qualname__)
    # Zero-argument super() in the body refers to the class through a `__class__` cell that
    # still points at the discarded body: repoint it (as dataclasses does for slots=True).
    for value in ns.values():
        for f in (value, getattr(value, "__func__", None), getattr(value, "fget", None),
                  getattr(value, "fset", None)):
            code = getattr(f, "__code__", None)
            if code is not None and "__class__" in code.co_freevars:
                cell = f.__closure__[code.co_freevars.index("__class__")]
                if cell.cell_contents is body:
                    cell.cell_contents = final
    for t in gen.__greenasync_types__:
        if _registry.get(t) is gen:
            _register(t, final)
    return final
