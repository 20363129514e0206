"""Hybrid ``threading``: locks, conditions and locals that greenlets and OS threads share.

Contract
--------
``Lock``, ``RLock``, ``Condition``, ``Event``, ``Semaphore``, ``BoundedSemaphore`` and
``local`` are overridden; every other name (``Thread``, ``Timer``, ``get_ident``,
``current_thread``, ``Barrier``, ...) is the stdlib's own object.

* Every primitive works from greenasync worker greenlets and from OS threads *at once*.
  A greenlet that must wait parks (the event loop keeps running); a thread that must wait
  blocks, as with the stdlib. A release/notify/set from any greenlet or thread wakes
  either kind: a greenlet through ``Waiter.wake`` (thread-safe), a thread by releasing
  the private ``_thread`` lock it blocks on.
* Outside green context (plain threads, scripts, the loop thread outside a worker) the
  behaviour is the stdlib's, timeouts, errors and messages included. CPython's own
  ``test.lock_tests`` run against these classes (tests/test_lock_tests.py).
* ``RLock`` (and the default lock of ``Condition``) is owned by the current worker greenlet
  in green context, by the thread elsewhere: two greenlets never re-enter each other's
  RLock. ``Lock`` has no owner, like the stdlib's (any greenlet or thread may release it).
* Waiting is FIFO and a release hands the lock *directly* to the oldest waiter: no
  barging, no thundering herd. A waiter that times out or is cancelled leaves the queue
  cleanly; if ownership (or a notification) reached it at that very moment, it is kept
  (timeout: ``acquire`` returns True) or passed on (cancellation), so nothing deadlocks.
* Cancelling the task that awaits a parked greenlet raises ``asyncio.CancelledError`` out
  of ``Lock``/``RLock`` ``acquire`` and of every ``wait`` (``Condition.wait`` holds the lock
  again when it raises, as a ``with`` block expects). The internal locks of ``Event``,
  ``Semaphore``, ``queue`` and ``local`` are not cancellation points (see ``_Uncancellable``):
  ``Event.set()``/``Semaphore.release()`` never fail half-way; the cancellation is raised at
  the job's next park instead.
* Deadlock guard: code on the event loop's thread but *outside* a worker (a coroutine, a
  loop callback) that would block on a ``Lock``/``RLock`` (also a Condition's lock, a
  queue's mutex) held by a worker greenlet of that same thread, or queued behind one,
  would stop the only thread that can run that greenlet: it raises ``RuntimeError``
  instead of hanging. Waits that have no owner to inspect (``Condition.wait``,
  ``Event.wait``, ``Semaphore.acquire`` from a coroutine) cannot be checked: they block
  the thread as the stdlib would, so never make a coroutine wait for a greenlet that way.
* ``Condition(lock)`` accepts any lock. With one of ours, waiting and reacquiring both park
  in green context. With a foreign lock (a stdlib ``threading.Lock``/``RLock``) the wait for
  a notification still parks, but acquiring/reacquiring the foreign lock blocks the thread
  exactly as the stdlib would (and can deadlock the loop if another greenlet of the loop
  thread holds it across a park): pass a greenasync lock to avoid that.
* ``local`` is per job in green context (each ``greenasync.run()`` call sees its own
  attributes, even on a reused worker greenlet) and per thread elsewhere.

``Event``, ``Semaphore`` and ``BoundedSemaphore`` are the stdlib classes with their internal
``Condition(Lock())`` swapped for ours: their logic, repr and errors stay the stdlib's.

Not hybrid (stdlib pass-through, so they block the thread in green context): ``Thread``
(``join``), ``Barrier``, ``Timer``. Use ``greenasync.to_thread`` around such waits.
"""

import _thread
import threading as _std
from asyncio import CancelledError as _CancelledError
from collections import deque as _deque

from greenlet import getcurrent as _getcurrent

from .._bridge import Waiter as _Waiter
from .._bridge import _Worker

__greenasync_stdlib__ = _std
__greenasync_overrides__ = (
    "Lock",
    "RLock",
    "Condition",
    "Event",
    "Semaphore",
    "BoundedSemaphore",
    "local",
)

_allocate_lock = _thread.allocate_lock
_get_ident = _thread.get_ident
_TIMEOUT_MAX = _thread.TIMEOUT_MAX


def __getattr__(name):
    return getattr(_std, name)


def __dir__():
    return sorted(set(dir(_std)) | set(globals()))


def _me():
    """Who owns an RLock taken now: the worker greenlet in green context, else the thread."""
    g = _getcurrent()
    return g if type(g) is _Worker else _get_ident()


def _check_timeout(blocking, timeout):
    # The stdlib lock's argument rules and messages (only reached when timeout != -1): for
    # anything but an ordinary timeout, a fresh (free) lock parses the arguments exactly as
    # threading.Lock does (NaN, overflow, wrong type, non-blocking) and raises its error.
    if not (blocking and type(timeout) in (int, float) and 0 <= timeout <= _TIMEOUT_MAX):
        _allocate_lock().acquire(blocking, timeout)


def _loop_thread_worker(who):
    """True if ``who`` (an owner or a waiter's identity) is a worker greenlet of this thread."""
    return type(who) is _Worker and who.hub.thread_id == _get_ident()


class _Entry:
    """One waiting greenlet or thread, queued on a lock or a condition.

    ``granted`` is written only under the lock's mutex (or, for a condition, while its lock
    is held) and *before* ``wake()``: whoever wakes up, times out or is cancelled reads it
    to learn whether ownership/notification reached it, whatever order the events came in.
    """

    __slots__ = ("me", "count", "seq", "granted", "waiter", "lock")

    def __init__(self, me, count=1):
        self.me = me  # the owner identity this waiter takes over (lock) or its kind (condition)
        self.count = count  # recursion count to own the RLock with (Condition restores it)
        self.seq = 0  # a condition's enqueue counter when this wait started
        self.granted = False  # lock: True once handed over; condition: notify-time counter
        if type(me) is _Worker:
            self.waiter = _Waiter()  # one-shot; wake() is safe from any thread
            self.lock = None
        else:
            # A thread (or the loop thread outside a worker) blocks on a private lock that
            # is born locked; wake() releases it. Never reused, so a late wake is harmless.
            self.waiter = None
            self.lock = _allocate_lock()
            self.lock.acquire()

    def block(self, timeout):
        """Park (greenlet) or block (thread) until woken; False after ``timeout`` seconds
        (None: forever). A parked greenlet may raise CancelledError instead."""
        if self.waiter is not None:
            if timeout is not None and not 0 <= timeout <= _TIMEOUT_MAX:
                # What the thread branch's lock raises (NaN, too large), not a wait forever.
                _allocate_lock().acquire(True, timeout)
            return self.waiter.wait(timeout) is True
        if timeout is None:
            return self.lock.acquire()
        return self.lock.acquire(True, timeout)

    def wake(self):
        if self.waiter is not None:
            # From a plain thread this is call_soon_threadsafe into the greenlet's loop;
            # from the loop thread a call_soon. Either way the switch happens later, in a
            # loop callback: the releaser (maybe itself a greenlet) is never switched away.
            self.waiter.wake(True)
        else:
            self.lock.release()


class _Gate:
    """The state machine shared by Lock and RLock (see the module docstring).

    ``_block`` is a plain ``_thread`` lock that is locked exactly while the gate is owned:
    the uncontended path is one C call, no mutex. ``_mutex`` guards the FIFO and the
    hand-off; it is held for a few bytecodes and never across a park or a block.
    """

    __slots__ = ("_block", "_mutex", "_waiters", "_owner", "_count", "__weakref__")

    def __init__(self):
        self._block = _allocate_lock()
        self._mutex = _allocate_lock()
        # The FIFO of _Entry, made at the first contention: an empty deque costs ~760 bytes,
        # and a client keeps a lock per connection that is rarely contended.
        self._waiters = ()
        self._owner = None  # RLock: _me() of the owner; Lock: the acquiring greenlet
        self._count = 0

    def locked(self):
        return self._block.locked()

    def _at_fork_reinit(self):
        self._block = _allocate_lock()
        self._mutex = _allocate_lock()
        self._waiters = ()
        self._owner = None
        self._count = 0

    def _acquire_slow(self, me, count, blocking, timeout):
        if not blocking:
            return False
        with self._mutex:
            # Re-check under the mutex: the owner may have released since the fast path.
            # Taking the lock is allowed only if nobody queued first (FIFO).
            if not self._waiters and self._block.acquire(False):
                self._owner = me
                self._count = count
                return True
            if type(me) is not _Worker and (
                _loop_thread_worker(self._owner)
                or any(_loop_thread_worker(e.me) for e in self._waiters)
            ):
                # Blocking this thread would also freeze the greenlet that must run first.
                raise RuntimeError(
                    f"greenasync: blocking on this {type(self).__name__} would deadlock the "
                    "event loop's thread: it is held by (or promised to) a greenasync "
                    "greenlet of this same thread, which can only run once the loop runs "
                    "again. Take the lock inside greenasync.run() or from another thread."
                )
            entry = _Entry(me, count)
            if not self._waiters:  # () or a drained deque: nobody else holds a reference
                self._waiters = _deque()
            self._waiters.append(entry)
        try:
            if self._park(entry, None if timeout == -1 else timeout):
                return True  # wake() comes only after the hand-off: we own the lock
        except BaseException:
            # Cancelled (or killed) while parked. A release may have handed us the lock in
            # the same loop iteration (the wake-up was scheduled, then the cancellation
            # won): nobody will ever release it for us, so pass it on before leaving.
            if self._withdraw(entry):
                self._release_all()
            raise
        # Timed out. The hand-off and the timeout can race: if ownership reached us first
        # (granted under the mutex), we keep it and report success, as the lock is ours.
        return self._withdraw(entry)

    def _park(self, entry, timeout):
        return entry.block(timeout)

    def _withdraw(self, entry):
        """Leave the queue; return True if ownership had been handed over already."""
        with self._mutex:
            if entry.granted:
                return True
            self._waiters.remove(entry)
            return False

    def _release_all(self):
        self._owner = None
        self._count = 0
        self._block.release()
        if self._waiters:
            self._handoff()

    def _handoff(self):
        # Called after _block.release() whenever waiters were seen. Re-take _block for the
        # oldest waiter and make it the owner before waking it, so nobody can barge in
        # between. If _block was grabbed meanwhile (a fast path that saw no waiters a
        # moment ago), that owner's own release will hand off: no wake-up is lost.
        with self._mutex:
            if not self._waiters or not self._block.acquire(False):
                return
            entry = self._waiters.popleft()
            self._owner = entry.me
            self._count = entry.count
            entry.granted = True
        entry.wake()  # outside the mutex: a wake is a syscall (self-pipe) or a lock release


class Lock(_Gate):
    """A hybrid ``threading.Lock``: greenlets park, threads block, release wakes either."""

    __slots__ = ()

    def acquire(self, blocking=True, timeout=-1):
        if timeout != -1:
            _check_timeout(blocking, timeout)
        # Fast path: free and nobody queued. The owner is recorded only for the deadlock
        # guard (a Lock may be released by anyone, like the stdlib's).
        if not self._waiters and self._block.acquire(False):
            self._owner = _getcurrent()
            return True
        return self._acquire_slow(_getcurrent(), 1, blocking, timeout)

    __enter__ = acquire

    def release(self):
        self._owner = None
        self._block.release()  # RuntimeError("release unlocked lock"), as the stdlib
        if self._waiters:
            self._handoff()

    def __exit__(self, *exc):
        self.release()

    def __repr__(self):
        cls = type(self)
        state = "locked" if self._block.locked() else "unlocked"
        return f"<{state} {cls.__module__}.{cls.__qualname__} object at {id(self):#x}>"


class RLock(_Gate):
    """A hybrid reentrant lock, owned per worker greenlet in green context, per thread
    elsewhere."""

    __slots__ = ()

    def acquire(self, blocking=True, timeout=-1):
        if timeout != -1:
            _check_timeout(blocking, timeout)
        me = _getcurrent()
        if type(me) is not _Worker:
            me = _get_ident()
        # Reading _owner without the mutex is safe: only we can make it equal to us.
        if self._owner == me:
            self._count += 1
            return True
        if not self._waiters and self._block.acquire(False):
            self._owner = me
            self._count = 1
            return True
        return self._acquire_slow(me, 1, blocking, timeout)

    __enter__ = acquire

    def release(self):
        me = _getcurrent()
        if type(me) is not _Worker:
            me = _get_ident()
        if self._owner != me:
            raise RuntimeError("cannot release un-acquired lock")
        count = self._count = self._count - 1
        if not count:
            self._owner = None
            self._block.release()
            if self._waiters:
                self._handoff()

    def __exit__(self, *exc):
        self.release()

    # The private protocol threading.Condition uses: save/restore the recursion count.
    def _is_owned(self):
        return self._owner == _me()

    def _release_save(self):
        if self._owner != _me():
            raise RuntimeError("cannot release un-acquired lock")
        count = self._count
        self._release_all()
        return count

    def _acquire_restore(self, count):
        self._acquire_slow(_me(), count, True, -1)

    def _recursion_count(self):
        return self._count if self._owner == _me() else 0

    def __repr__(self):
        cls = type(self)
        state = "locked" if self._block.locked() else "unlocked"
        return (
            f"<{state} {cls.__module__}.{cls.__qualname__} object owner={self._owner!r} "
            f"count={self._count} at {id(self):#x}>"
        )


class _Uncancellable:
    """Mixin for the internal locks of Event/Semaphore/queue/local: not a cancellation point.

    They are held for a few bytecodes by stdlib code that never expects an exception while
    taking them: a CancelledError raised in ``Semaphore.release``, ``Event.set`` or
    ``Queue.task_done`` would lose a permit, a wake-up or a task count for good (``join``
    would hang). So a cancellation that arrives while queued here is postponed: keep
    waiting (the wait is short by construction), then re-arm it with the bridge's pending-
    cancellation flag, so the job's next park raises it.
    """

    __slots__ = ()

    def _park(self, entry, timeout):
        postponed = False
        while True:
            try:
                got = entry.block(timeout)
                break
            except _CancelledError:
                postponed = True
                with self._mutex:
                    if entry.granted:  # handed over as the cancellation came in
                        got = True
                        break
                    entry.waiter = _Waiter()  # the cancelled one-shot is spent: queue anew
        if postponed:
            _getcurrent().job.cancelled = True
        return got


class _InternalLock(_Uncancellable, Lock):
    __slots__ = ()


class _InternalRLock(_Uncancellable, RLock):
    __slots__ = ()


class Condition(_std.Condition):
    """A hybrid ``threading.Condition`` (default lock: a hybrid RLock).

    The stdlib class supplies acquire/release/``with``/``wait_for``/``notify_all``/repr and
    the adapters for the lock's private protocol; ``wait`` and ``notify`` are replaced so
    the queued waiters are greenlet-or-thread entries. The waiter list is guarded by the
    condition's own lock (held by whoever calls wait/notify), as in CPython.
    """

    def __init__(self, lock=None):
        super().__init__(RLock() if lock is None else lock)
        self._seq = 0  # counts waits; orders waiters for handing a notification on

    def wait(self, timeout=None):
        if not self._is_owned():
            raise RuntimeError("cannot wait on un-acquired lock")
        entry = _Entry(_me())
        self._seq += 1
        entry.seq = self._seq
        self._waiters.append(entry)  # before releasing the lock, so no notify is missed
        saved = self._release_save()
        error = None
        try:
            # As the stdlib: a timeout that is not > 0 (NaN included) only polls.
            entry.block(None if timeout is None else timeout if timeout > 0 else 0)
        except BaseException as exc:  # cancellation of a parked greenlet, KeyboardInterrupt
            error = exc
        # Hold the lock again whatever happened: the caller's `with` will release it. The
        # bridge delivers a cancellation once, so a retry after CancelledError parks
        # normally; a pending cancellation may surface here rather than in block().
        while True:
            try:
                self._acquire_restore(saved)
                break
            except _CancelledError as exc:
                error = exc
        # We hold the lock: the waiter list is ours to edit. The notification and the
        # timeout/cancellation can race; `granted` says which won, since notify sets it
        # while holding the lock and before waking us.
        if not entry.granted:
            self._waiters.remove(entry)
        elif error is not None:
            self._pass_on(entry.granted)
        if error is not None:
            try:
                raise error
            finally:
                error = None
        return bool(entry.granted)

    def _pass_on(self, mark):
        # A cancelled waiter must not swallow a notification: give it to the oldest waiter
        # that was already waiting when notify() ran (seq <= mark), as if notify() had
        # picked that one. Later waiters are not woken, so notify_all()/Event.set() never
        # cause a spurious wake-up this way (stdlib's Event.wait relies on that).
        waiters = self._waiters
        if waiters and waiters[0].seq <= mark:
            entry = waiters.popleft()
            entry.granted = mark
            entry.wake()

    def notify(self, n=1):
        if not self._is_owned():
            raise RuntimeError("cannot notify on un-acquired lock")
        waiters = self._waiters
        mark = self._seq
        while waiters and n > 0:
            entry = waiters.popleft()
            entry.granted = mark  # before wake(): see _Entry
            # A greenlet is resumed later by its loop (possibly another thread's), a
            # thread as soon as it gets the GIL; both then reacquire the lock we hold.
            entry.wake()
            n -= 1


class Event(_std.Event):
    """A hybrid ``threading.Event``: the stdlib's logic over a hybrid Condition(Lock())."""

    def __init__(self):
        super().__init__()
        self._cond = Condition(_InternalLock())


class Semaphore(_std.Semaphore):
    """A hybrid ``threading.Semaphore``: the stdlib's logic over a hybrid Condition(Lock())."""

    def __init__(self, value=1):
        super().__init__(value)
        self._cond = Condition(_InternalLock())


class BoundedSemaphore(Semaphore, _std.BoundedSemaphore):
    """A hybrid ``threading.BoundedSemaphore`` (also an instance of our Semaphore).

    MRO: our Semaphore (its __init__ swaps the Condition), then the stdlib
    BoundedSemaphore (its __init__, release and repr), then the stdlib Semaphore.
    """


# --- local -------------------------------------------------------------------------------

def _job_dicts(worker):
    # Storage lives on the bridge's job object: a worker is reused across greenasync.run()
    # calls, and each call must start with empty locals; they die with the job.
    job = worker.job
    dicts = job.locals
    if dicts is None:
        dicts = job.locals = {}
    return dicts


class _LocalImpl:
    __slots__ = ("args", "lock", "threads", "__weakref__")

    def __init__(self, args):
        self.args = args
        # Reentrant (an __init__ or property may touch other attributes) and hybrid (a
        # property that parks must not let another greenlet swap the dict under it).
        self.lock = _InternalRLock()
        self.threads = _thread._local()  # per-thread dicts, freed when the thread ends

    def get(self):
        g = _getcurrent()
        if type(g) is _Worker:
            return _job_dicts(g).get(self)
        return self.threads.__dict__.get("d")

    def new(self):
        d = {}
        g = _getcurrent()
        if type(g) is _Worker:
            _job_dicts(g)[self] = d
        else:
            self.threads.d = d
        return d


def _enter(self):
    # Point the instance's __dict__ at the current job's/thread's dict, under the lock
    # (the approach of the stdlib's _threading_local). Returns the lock to release.
    impl = object.__getattribute__(self, "_local__impl")
    lock = impl.lock
    lock.acquire()
    try:
        d = impl.get()
        if d is None:
            d = impl.new()
            object.__setattr__(self, "__dict__", d)
            cls = type(self)
            if cls.__init__ is not object.__init__:
                args, kw = impl.args
                cls.__init__(self, *args, **kw)  # as threading.local: once per context
        else:
            object.__setattr__(self, "__dict__", d)
    except BaseException:
        lock.release()
        raise
    return lock


_READ_ONLY_DICT = "%r object attribute '__dict__' is read-only"


class local:
    """Hybrid ``threading.local``: per job in green context, per thread elsewhere."""

    __slots__ = ("_local__impl", "__dict__", "__weakref__")

    def __new__(cls, /, *args, **kw):
        if (args or kw) and cls.__init__ is object.__init__:
            raise TypeError("Initialization arguments are not supported")
        self = object.__new__(cls)
        impl = _LocalImpl((args, kw))
        object.__setattr__(self, "_local__impl", impl)
        # The creating context's dict exists now; type.__call__ runs __init__ in it.
        object.__setattr__(self, "__dict__", impl.new())
        return self

    def __getattribute__(self, name):
        lock = _enter(self)
        try:
            return object.__getattribute__(self, name)
        finally:
            lock.release()

    def __setattr__(self, name, value):
        if name == "__dict__":
            raise AttributeError(_READ_ONLY_DICT % type(self).__name__)
        lock = _enter(self)
        try:
            return object.__setattr__(self, name, value)
        finally:
            lock.release()

    def __delattr__(self, name):
        if name == "__dict__":
            raise AttributeError(_READ_ONLY_DICT % type(self).__name__)
        lock = _enter(self)
        try:
            return object.__delattr__(self, name)
        finally:
            lock.release()
