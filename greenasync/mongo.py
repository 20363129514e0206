"""pymongo as an awaitable, Motor-style client: sync pymongo, unchanged, behind ``greenasync.wrap``.

::

    from greenasync.mongo import GridFSBucket, MongoClient

    client = MongoClient("mongodb://127.0.0.1:27017", maxPoolSize=10)   # no I/O yet
    coll = client.shop.orders                   # client["shop"]["orders"]: no I/O
    await coll.insert_one({"sku": "abc", "qty": 3})
    doc = await coll.find_one({"sku": "abc"})
    async for doc in coll.find({"qty": {"$gt": 1}}).sort("qty").limit(10):
        ...
    docs = await coll.aggregate([{"$match": {"qty": 3}}]).to_list()
    async with await client.start_session() as s:
        await s.with_transaction(callback)      # async def callback(session): ...
    async with coll.watch(max_await_time_ms=500) as stream:
        change = await stream.try_next()        # None when nothing happened meanwhile
    bucket = GridFSBucket(client.shop)
    file_id = await bucket.upload_from_stream("a.txt", b"data")
    data = await (await bucket.open_download_stream(file_id)).read()
    await client.close()
    client.delegate                             # the pymongo.MongoClient: the sync API,
                                                # usable from plain threads at once

Importing this module patches the ``pymongo`` and ``gridfs`` packages
(``greenasync.patch("pymongo", "gridfs")``): inside a greenasync greenlet pymongo's sockets,
its pool's ``maxConnecting``/``maxPoolSize`` conditions, server selection (a condition its
monitor *threads* notify), ``pymongo.timeout()`` deadlines and retry sleeps cooperate with the
event loop; outside one they are the stdlib, so the same client also works from threads.
Errors are pymongo's own (``DuplicateKeyError``, ``ServerSelectionTimeoutError``,
``NetworkTimeout``...), raised unchanged. The classes are built with ``register=False``: they
name each other explicitly (``wraps=``), and another ``greenasync.wrap(pymongo.MongoClient)``
in the app sees no change. ``greenasync.unpatch("pymongo")`` turns the cooperation off for this
module too (patching is not reference-counted); build clients after patching (a client built
before ``patch`` keeps stdlib locks).

What is what (one line each in the class bodies below):

``MongoClient``, ``Database``, ``Collection``
    Every method doing I/O is a coroutine function. Navigation does no I/O and returns wrapped
    objects: ``client.db``, ``client["db"]``, ``get_database``, ``db.coll``, ``db["coll"]``,
    ``get_collection``, ``with_options``, ``coll.database``, ``db.client``.
    ``find()``/``find_raw_batches()`` return a :class:`Cursor` without I/O; ``aggregate()``,
    ``aggregate_raw_batches()``, ``list_indexes()`` and ``list_search_indexes()`` return a
    *latent* :class:`CommandCursor` at once, which sends the command at its first await (as
    Motor; pymongo 4 sends it in the call); ``list_collections()``, ``list_databases()`` and
    ``cursor_command()`` are awaited and return a :class:`CommandCursor`. ``watch()`` returns a
    :class:`ChangeStream` at once. ``async with MongoClient(...) as client`` closes it.
``Cursor``, ``CommandCursor``
    Chaining (``sort``, ``limit``, ``skip``, ``batch_size``, ``hint``, ...) is a plain call
    returning the same wrapper. ``async for``, ``await cursor.next()`` (``StopAsyncIteration``
    at the end), ``await cursor.to_list(n)`` (``n`` optional; all of it in one greenlet step),
    ``await cursor.close()``, ``async with``; ``try_next()`` on command cursors. A cursor from
    ``GridFSBucket.find()`` yields :class:`GridOut` wrappers.
``ChangeStream``
    ``async for change in stream``, ``await stream.try_next()``, ``await stream.next()``,
    ``async with`` (opens it at entry, closes it at exit), ``resume_token``, ``alive``. The
    ``aggregate`` that opens the server cursor runs at the first step.
``ClientSession``
    ``async with await client.start_session() as s``; ``await s.with_transaction(callback)``
    runs pymongo's retry loop with ``callback``, a coroutine function taking this wrapped
    session; ``async with s.start_transaction():`` commits (or aborts) at exit;
    ``async with s.bind():`` passes ``s`` implicitly to the calls inside (pymongo 4.17+).
``GridFSBucket``, ``GridIn``, ``GridOut``
    ``GridFSBucket(db)``; ``open_upload_stream()`` is a plain call returning a ``GridIn``
    (``await write()``, ``await close()``, ``async with``); ``await open_download_stream()``
    returns a ``GridOut`` (``await read()``, ``async for chunk in grid_out``,
    ``await stream_to_handler(tornado_handler)``).

mongomock, for unit tests without a server: ``MongoClient.from_sync(mongomock.MongoClient())``
gives the same wrapper classes over mongomock's objects (``compatible=`` in each ``wrap``), and
the same awaitable API, as far as mongomock implements pymongo's: it has no sessions, no
``watch()``, and GridFS needs ``mongomock.gridfs.enable_gridfs_integration()``. Calls over
mongomock also run in worker greenlets; they never park.

Limits: each awaited step runs as its own job in whichever worker greenlet is free, so a step
sees the caller's contextvars (``pymongo.timeout()`` works) but a contextvar set *inside* a step
does not come back; ``s.bind()`` therefore sets pymongo's session variable in the caller.
Properties are read in the caller and do no I/O, except ``GridOut`` attributes on a file not
yet opened (``await grid_out.open()`` first; ``open_download_stream`` opens it). A
``mongodb+srv://`` URI resolves its SRV record in pymongo's constructor with dnspython, which
is not patched: that query blocks the loop once (build such a client at startup).
Client-side field-level encryption (``ClientEncryption``) is not wrapped. The differences
from Motor 3.7's API are listed below (``MOTOR_DIFFERENCES``; tests/test_mongo_parity.py
introspects Motor and fails on any other).
"""

import functools
import inspect
import itertools

import gridfs
import pymongo
import pymongo.change_stream
import pymongo.client_session
import pymongo.collection
import pymongo.command_cursor
import pymongo.cursor
import pymongo.database
import pymongo.errors

import greenasync
from greenasync import Chain, Property, SyncMethod, Wraps

try:
    import mongomock
except ImportError:  # optional: only the stand-in classes need it
    mongomock = None

__all__ = ["MongoClient", "Database", "Collection", "Cursor", "CommandCursor", "ChangeStream",
           "ClientSession", "GridFSBucket", "GridIn", "GridOut", "MOTOR_DIFFERENCES"]

# Motor 3.7 names that greenasync.mongo lacks or gives another kind, one line of reason each.
# "*.name" is any class. tests/test_mongo_parity.py introspects Motor against this table.
MOTOR_DIFFERENCES = {
    "*.get_io_loop": "absent: objects are bound to no loop; each await runs on the awaiting loop",
    "*.io_loop": "absent: as get_io_loop",
    "*.wrap": "absent: Motor's internal re-wrapper; use Class.from_sync(pymongo_object)",
    "*.each": "absent: Motor's callback iteration; use async for",
    "*.fetch_next": "absent: deprecated since Motor 2.2; use async for or await cursor.next()",
    "*.next_object": "absent: deprecated since Motor 2.2; use async for or await cursor.next()",
    "*.__enter__": "absent: Motor defines it only to raise; without it `with` raises TypeError",
    "*.__exit__": "absent: as __enter__",
    "MongoClient.close": "a coroutine: pymongo's close() does I/O (endSessions, after a "
                         "server selection); Motor blocks the loop on it",
    "GridOut.close": "a coroutine: closing a partly read file kills its chunk cursor (I/O)",
    "ClientEncryption": "absent: not wrapped (needs pymongocrypt); "
                        "greenasync.wrap(pymongo.encryption.ClientEncryption) if needed",
}

greenasync.patch("pymongo", "gridfs")


def _mock(*names):
    """mongomock's stand-ins for one pymongo class (empty without mongomock)."""
    if mongomock is None:
        return ()
    return tuple(functools.reduce(getattr, name.split("."), mongomock) for name in names)


def _plain(args):
    return tuple(a.delegate if isinstance(a, greenasync.Wrapper) else a for a in args)


def _plain_kw(kwargs):
    return {k: v.delegate if isinstance(v, greenasync.Wrapper) else v for k, v in kwargs.items()}


# --- sync stand-ins for what Motor opens lazily ---------------------------------------------


class _LatentCommandCursor:
    """A pymongo ``CommandCursor`` whose command runs at the first step that needs it.

    pymongo 4's ``aggregate()``/``list_indexes()`` send their command when called; Motor's
    return a cursor at once. This sync object has CommandCursor's public API and opens the real
    cursor inside the first step (so in a worker greenlet).
    """

    def __init__(self, open_cursor, args, kwargs, batch_size_option=False):
        self._open = functools.partial(open_cursor, *args, **kwargs)
        self._batch_size_option = batch_size_option  # the command takes batchSize= (aggregate)
        self._batch_size = None
        self._cursor = None

    def _get(self):  # None if closed before it was opened: an exhausted cursor
        if self._cursor is None and self._open is not None:
            open_cursor, self._open = self._open, None
            if self._batch_size is not None and self._batch_size_option:
                open_cursor = functools.partial(open_cursor, batchSize=self._batch_size)
            self._cursor = open_cursor()
            if self._batch_size is not None:
                self._cursor.batch_size(self._batch_size)
        return self._cursor

    def batch_size(self, batch_size):
        if self._cursor is None:
            self._batch_size = batch_size  # for the first batch too, as Motor's
        else:
            self._cursor.batch_size(batch_size)
        return self

    def next(self):
        cursor = self._get()
        if cursor is None:
            raise StopIteration
        return next(cursor)  # mongomock's list_indexes() is a plain generator

    __next__ = next

    def __iter__(self):
        return self

    def try_next(self):
        cursor = self._get()
        return None if cursor is None else cursor.try_next()

    def to_list(self, length=None):
        cursor = self._get()
        return [] if cursor is None else cursor.to_list(length)

    def close(self):
        self._open = None  # never opened: nothing to kill, and it never will be
        if self._cursor is not None:
            self._cursor.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def alive(self):
        return self._open is not None if self._cursor is None else self._cursor.alive

    @property
    def cursor_id(self):
        return None if self._cursor is None else self._cursor.cursor_id

    @property
    def address(self):
        return None if self._cursor is None else self._cursor.address

    @property
    def session(self):
        return None if self._cursor is None else self._cursor.session


class _LatentChangeStream:
    """A pymongo ``ChangeStream`` whose ``watch()`` (an aggregate) runs at the first step."""

    def __init__(self, watch, args, kwargs):
        self._watch = functools.partial(watch, *args, **kwargs)
        self._stream = None

    def _get(self):  # None if closed before it was opened: an exhausted stream
        if self._stream is None and self._watch is not None:
            watch, self._watch = self._watch, None
            self._stream = watch()
        return self._stream

    def try_next(self):
        stream = self._get()
        return None if stream is None else stream.try_next()

    def next(self):
        stream = self._get()
        if stream is None:
            raise StopIteration
        return stream.next()

    __next__ = next

    def __iter__(self):
        return self

    def close(self):
        self._watch = None
        if self._stream is not None:
            self._stream.close()

    def __enter__(self):
        self._get()
        return self

    def __exit__(self, *exc_info):
        self.close()

    @property
    def alive(self):
        return self._watch is not None if self._stream is None else self._stream.alive

    @property
    def resume_token(self):
        return None if self._stream is None else self._stream.resume_token


def _latent(sync, name, batch_size_option=False):
    """A plain method returning a latent :class:`CommandCursor` for ``sync.name``."""

    def method(self, *args, **kwargs):
        d = self.delegate
        cursor = _LatentCommandCursor(getattr(d, name), _plain(args), _plain_kw(kwargs),
                                      batch_size_option)
        return CommandCursor.from_sync(cursor)

    functools.update_wrapper(method, getattr(sync, name))
    method.__doc__ = (f"Return a :class:`CommandCursor` at once, without I/O: pymongo's "
                      f"``{name}`` runs at the cursor's first await.\n\n{method.__doc__ or ''}")
    return method


def _watch(sync):
    def watch(self, *args, **kwargs):
        stream = _LatentChangeStream(self.delegate.watch, _plain(args), _plain_kw(kwargs))
        return ChangeStream.from_sync(stream)

    functools.update_wrapper(watch, sync.watch)
    watch.__doc__ = ("Return a :class:`ChangeStream` at once, without I/O: pymongo's ``watch`` "
                     "(an aggregate) runs at its first step or ``async with``.\n\n"
                     + (watch.__doc__ or ""))
    return watch


# --- cursors -------------------------------------------------------------------------------

_DONE = object()


def _take(iterator, length):
    return list(iterator if length is None else itertools.islice(iterator, length))


class _Iteration:
    """``async for``, ``next()`` and ``to_list()`` with Motor's semantics, over any sync
    iterator: pymongo's cursors, the latent cursor, mongomock's cursors."""

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await greenasync.run(next, self.delegate, _DONE)  # never StopIteration
        if item is _DONE:
            raise StopAsyncIteration
        return GridOut.from_sync(item) if type(item) is gridfs.GridOut else item

    async def next(self):
        """The next document; ``StopAsyncIteration`` when the cursor is exhausted."""
        return await self.__anext__()

    async def to_list(self, length=None):
        """The next ``length`` documents (all the rest if None), fetched in one greenlet step:
        as many round trips as batches, but one loop iteration (Motor's ``to_list``)."""
        if length is not None:
            if not isinstance(length, int):
                raise TypeError(f"length must be an int, not {length!r}")
            if length < 0:
                raise ValueError("length must be non-negative")
        items = await greenasync.run(_take, self.delegate, length)
        if type(self.delegate) is gridfs.GridOutCursor:
            items = [GridOut.from_sync(item) for item in items]
        return items


@greenasync.wrap(gridfs.GridOut, register=False)
class GridOut:
    _id = Property()
    __getattr__ = SyncMethod()  # file-document fields: no I/O once opened
    readable = SyncMethod()
    seek = SyncMethod()
    seekable = SyncMethod()
    tell = SyncMethod()
    write = SyncMethod()

    async def open(self):
        """Load the file document (``open_download_stream`` already did); returns self."""
        await greenasync.run(self.delegate.open)
        return self

    def __aiter__(self):
        return self

    async def __anext__(self):  # chunks, as Motor (pymongo's sync iteration yields lines)
        chunk = await self.readchunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def stream_to_handler(self, request_handler):
        """Write this file to a :class:`tornado.web.RequestHandler`, one chunk at a time,
        flushing after each (set the headers first)."""
        async for chunk in self:
            request_handler.write(chunk)
            await request_handler.flush()


@greenasync.wrap(pymongo.cursor.Cursor, register=False,
                 compatible=(gridfs.GridOutCursor, *_mock("collection.Cursor")))
class Cursor(_Iteration):
    add_option = Chain()
    allow_disk_use = Chain()
    batch_size = Chain()
    collation = Chain()
    comment = Chain()
    hint = Chain()
    limit = Chain()
    max = Chain()
    max_await_time_ms = Chain()
    max_scan = Chain()
    max_time_ms = Chain()
    min = Chain()
    remove_option = Chain()
    skip = Chain()
    sort = Chain()
    where = Chain()
    rewind = Chain()
    clone = SyncMethod()
    __copy__ = SyncMethod()
    __deepcopy__ = SyncMethod()

    @property
    def collection(self):
        """The :class:`Collection` this cursor reads."""
        return Collection.from_sync(self.delegate.collection)


@greenasync.wrap(pymongo.command_cursor.CommandCursor, register=False,
                 compatible=(_LatentCommandCursor, *_mock("command_cursor.CommandCursor")))
class CommandCursor(_Iteration):
    batch_size = Chain()


@greenasync.wrap(pymongo.change_stream.ChangeStream, register=False,
                 compatible=(_LatentChangeStream,))
class ChangeStream:
    async def next(self):
        """The next change, waiting for one; ``StopAsyncIteration`` once closed."""
        return await self.__anext__()


# --- sessions ------------------------------------------------------------------------------


class _Bound:
    """``async with s.bind():`` pymongo's session variable, set in the *caller's* context so
    that every step started inside (each copies that context) sees the session."""

    def __init__(self, session, end_session):
        self._session, self._end_session = session, end_session
        self._context = session.delegate.bind(end_session=False)

    async def __aenter__(self):
        self._context.__enter__()  # no I/O: a ContextVar.set
        return self._session

    async def __aexit__(self, *exc_info):
        self._context.__exit__(*exc_info)
        if self._end_session:
            await self._session.end_session()


@greenasync.wrap(pymongo.client_session.ClientSession, register=False)
class ClientSession:
    start_transaction = SyncMethod()  # `async with s.start_transaction():` commits at exit
    advance_cluster_time = SyncMethod()
    advance_operation_time = SyncMethod()

    @property
    def client(self):
        """The :class:`MongoClient` this session was started from."""
        return MongoClient.from_sync(self.delegate.client)

    async def with_transaction(self, callback, read_concern=None, write_concern=None,
                               read_preference=None, max_commit_time_ms=None):
        """pymongo's ``with_transaction`` (start, run ``callback``, commit; retry on transient
        errors for up to 120 s): ``callback`` is a coroutine function taking this session, as
        in Motor (a plain function works too). Returns what ``callback`` returned."""

        def call(session):  # in the worker greenlet running pymongo's retry loop
            value = callback(self)
            return greenasync.await_(value) if inspect.isawaitable(value) else value

        return await greenasync.run(self.delegate.with_transaction, call, read_concern,
                                    write_concern, read_preference, max_commit_time_ms)

    def bind(self, end_session=True):
        """``async with s.bind():`` passes this session implicitly to the operations inside
        (pymongo 4.17+); ends the session at exit unless ``end_session=False``."""
        return _Bound(self, end_session)


# --- collections, databases, the client ----------------------------------------------------

_Collection, _Database = pymongo.collection.Collection, pymongo.database.Database


@greenasync.wrap(_Collection, register=False, compatible=_mock("collection.Collection"))
class Collection:
    __getattr__ = SyncMethod()  # coll.sub: the sub-collection "coll.sub"
    __getitem__ = SyncMethod()
    __call__ = SyncMethod()  # pymongo's TypeError, naming the method you meant
    with_options = SyncMethod()
    find = SyncMethod(wraps=Cursor)
    find_raw_batches = SyncMethod(wraps=Cursor)
    aggregate = _latent(_Collection, "aggregate", batch_size_option=True)
    aggregate_raw_batches = _latent(_Collection, "aggregate_raw_batches", batch_size_option=True)
    list_indexes = _latent(_Collection, "list_indexes")
    list_search_indexes = _latent(_Collection, "list_search_indexes")
    watch = _watch(_Collection)

    @property
    def database(self):
        """The :class:`Database` this collection belongs to."""
        return Database.from_sync(self.delegate.database)

    def __bool__(self):  # as the delegate's (pymongo's raises NotImplementedError)
        return bool(self.delegate)


@greenasync.wrap(_Database, register=False, compatible=_mock("database.Database"))
class Database:
    __getattr__ = SyncMethod(wraps=Collection)
    __getitem__ = SyncMethod(wraps=Collection)
    get_collection = SyncMethod(wraps=Collection)
    with_options = SyncMethod()
    create_collection = Wraps(Collection)
    list_collections = Wraps(CommandCursor)
    cursor_command = Wraps(CommandCursor)
    aggregate = _latent(_Database, "aggregate", batch_size_option=True)
    watch = _watch(_Database)

    @property
    def client(self):
        """The :class:`MongoClient` of this database."""
        return MongoClient.from_sync(self.delegate.client)

    def __bool__(self):  # as the delegate's (pymongo's raises NotImplementedError)
        return bool(self.delegate)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"'Database' object is not callable: MongoClient has no method "
                        f"{self.name!r} (client.{self.name} is a database)")


@greenasync.wrap(pymongo.MongoClient, register=False, compatible=_mock("MongoClient"))
class MongoClient:
    __getattr__ = SyncMethod(wraps=Database)
    __getitem__ = SyncMethod(wraps=Database)
    get_database = SyncMethod(wraps=Database)
    get_default_database = SyncMethod(wraps=Database)
    start_session = Wraps(ClientSession)
    list_databases = Wraps(CommandCursor)
    append_metadata = SyncMethod()
    eq_props = SyncMethod()
    watch = _watch(pymongo.MongoClient)


# --- GridFS --------------------------------------------------------------------------------


@greenasync.wrap(gridfs.GridIn, register=False)
class GridIn:
    _id = Property()
    __getattr__ = SyncMethod()  # extra file-document fields
    read = SyncMethod()  # io's UnsupportedOperation, as pymongo
    readable = SyncMethod()
    seekable = SyncMethod()
    writeable = SyncMethod()


@greenasync.wrap(gridfs.GridFSBucket, register=False)
class GridFSBucket:
    open_upload_stream = SyncMethod(wraps=GridIn)
    open_upload_stream_with_id = SyncMethod(wraps=GridIn)
    open_download_stream = Wraps(GridOut)
    open_download_stream_by_name = Wraps(GridOut)
    find = SyncMethod(wraps=Cursor)  # its items are GridOut wrappers


def _differences():
    width = max(len(name) for name in MOTOR_DIFFERENCES)
    return "\n".join(f"    {name:<{width}}  {reason}" for name, reason in MOTOR_DIFFERENCES.items())


__doc__ += f"\nDifferences from Motor 3.7 (``MOTOR_DIFFERENCES``)::\n\n{_differences()}\n"
