"""The bridge: run sync code in reusable worker greenlets on the event loop's thread.

Who runs where
--------------
An event loop runs in one greenlet of its thread, the *root* (normally the thread's main
greenlet): every coroutine step and every loop callback runs there. A *worker* is a child
greenlet whose parent is the root. It runs one job (a sync callable) at a time and is
reused afterwards, because creating a greenlet costs ~13 µs here and a switch ~0.5 µs.

The switch protocol, which everything else relies on:

* ``run()`` is a coroutine, so it runs in the root, in the awaiting task's steps. It
  switches into a worker with a job, and switches into it again after every park: **the
  task that awaits a call is the one that resumes its worker**, one task step per stretch
  of sync code, exactly where a native asyncio client would resume its coroutine.
* A worker gives control back to the root in exactly two ways: it finished its job
  (``root.switch(_DONE)``) or it parked in ``Waiter._park`` (``root.switch(_PARKED)``).
  The root is suspended at exactly one ``switch()`` call at a time, so "switch to the root"
  always resumes whoever switched in last.
* A park makes a future; ``run()`` awaits it. Whatever ends the wait (the hub's epoll
  dispatch, its deadline timer, a ``Waiter.wake`` from any thread) calls ``Waiter._fire``
  in the root, which takes the waiter out of the hub's fd tables and deadline heap, stores
  the value and resolves the future; the task's next step switches the value in.
  ``_fire`` is one-shot: whichever event comes first wins, the rest are no-ops. The loop
  itself watches only the hub's epoll fd, which no greenlet ever removes (uvloop crashed
  when a greenlet removed the watcher whose callback had switched into it).
* A cancelled task delivers ``CancelledError`` into its worker at the wait (``_cancel``) and
  leaves: the job is then *detached*, and if its cleanup parks again, ``_fire`` resumes it
  directly from the loop callback, until it ends.

Why the task resumes its own worker rather than the readiness callback: it keeps the loop's
ready queue the only scheduler (FIFO per iteration, as for any task), a finished call's
objects die in the same task step in which the next call's are made (resumed from the
dispatch, a batch of 50 calls freed its objects in one phase and the next 50 made theirs in
another: CPython's young-generation counter then forced a collection every ~25 calls and a
full one every ~4,000, 5-7 µs per call at C=100), and the future it awaits is the one a
cancellation arrives through.

A call that never parks completes inside ``run()``'s first switch, with no future and no
loop iteration; a fairness rule (``_FAIR_SLICE``) still yields to the loop after a streak
of such calls, or one coroutine on a fast connection would starve all others. For the same
reason the socket shims call ``turnaround()`` where a connection turns from sending to
reading or back (see there).
"""

import asyncio
import contextvars
import inspect
import itertools
import select
import threading
import time
import types
import weakref
from heapq import heapify, heappop, heappush

from greenlet import GreenletExit, getcurrent, greenlet

from ._errors import ConcurrentUseError, MissingGreenletError, NoRunningLoopError

__all__ = [
    "run",
    "in_green_context",
    "sleep",
    "wait_readable",
    "wait_writable",
    "to_thread",
    "await_",
    "wait_any",
    "Waiter",
    "TIMED_OUT",
]

# The stdlib originals, captured once: the shims rebind names in other modules, never these.
_real_sleep = time.sleep
_monotonic = time.monotonic
_get_ident = threading.get_ident
_get_running_loop = asyncio._get_running_loop  # None instead of raising; public alias in 3.7+
_CancelledError = asyncio.CancelledError
_CoroutineType = types.CoroutineType
_iscoroutinefunction = inspect.iscoroutinefunction

_DONE = object()  # a worker finished its job (switched to the root)
_PARKED = object()  # a worker parked on a Waiter (switched to the root)


class _TimedOut:
    __slots__ = ()

    def __repr__(self):
        return "greenasync.TIMED_OUT"

    def __bool__(self):
        return False


#: What ``Waiter.wait`` returns when its timeout expired before a wake-up.
TIMED_OUT = _TimedOut()

# Fairness. On loopback a reply is often buffered already, so a call finishes without a
# wait; with no rule one coroutine calling in a loop never lets the loop run (a "convoy":
# p50 0.2 ms, p99 > 1 s measured at C=100). After a call that did not park, run() yields
# once to the loop if other callbacks are already queued (asyncio exposes its ready queue;
# yielding then costs nothing extra, that iteration was due anyway), and in any case once a
# streak of such calls has lasted _FAIR_SLICE seconds, so fds and timers get polled. Yielding
# on every call instead costs a loop iteration per call (~3 µs on asyncio here) when nobody
# else waits. The streak is timed, not counted: what the rule bounds is how long the loop
# waits, and calls range from 1 µs to milliseconds. (Counted, every 8th call yielded: a
# loop iteration per 8 trivial calls, 13% of their cost; a clock read per call, ~0.1 µs
# here, is 3-4%.)
_FAIR_SLICE = 0.0005

# Kinds of parked waits, for greenasync.statistics(): each park stores its kind on the
# Waiter (waits in progress are found through _Hub.workers, off the hot path) and bumps
# _Hub.park_kinds[kind] (totals; it replaces a plain `parks` counter). Measured: +0.03 µs
# on a ~4 µs park+resume.
PARK_KINDS = ("read", "write", "sleep", "lock", "thread", "await", "yield")
_READ, _WRITE, _SLEEP, _LOCK, _THREAD, _AWAIT, _YIELD = range(len(PARK_KINDS))

# Idle workers kept per loop; beyond that a finished worker simply ends (it is cheap to make
# another, and a burst of 10,000 parked calls should not pin 10,000 stacks forever).
_MAX_IDLE = 1024

# Readiness. Registering an fd with the loop for every wait (add_reader, then remove_reader
# when it fires) cost ~18 µs per wait on asyncio here (Python selector bookkeeping and two
# epoll_ctl calls) and ~7 µs on uvloop: most of a park. Instead each hub owns a private epoll
# set, edge-triggered, both directions: an fd joins it at its first wait and stays until its
# socket closes, and the loop watches only the epoll fd, once. Edge-triggered suits how every
# caller waits (try the non-blocking call first, wait only after EAGAIN: each later arrival
# is a new edge); readiness that nobody waits for is dropped without spinning, which a
# level-triggered set would not do for an idle pooled connection the server has closed. The
# loop's own fd table never sees our sockets, so a socket closed in another thread (pymongo's
# monitor resetting its pool) cannot leave a stale entry behind that would swallow the next
# registration of the same fd number by the loop or by an asyncio transport.
_EPOLL = getattr(select, "epoll", None)  # Linux; elsewhere each wait uses add_reader/remove_reader
_epoll_ids = itertools.count(1)  # a socket's _epoll_id is 0 until a hub registers it
if _EPOLL is not None:
    _EPOLL_MASK = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
    _EPOLL_READ = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
    _EPOLL_WRITE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR

# Deadlines. A loop timer per timed wait (call_later, cancelled when the fd wins, which is
# nearly always) cost ~5 µs on asyncio: a TimerHandle with a context copy, heap operations
# through TimerHandle.__lt__ in Python, and a heap rebuild when half of it is cancelled. The
# hub keeps its own heap of (deadline, seq, waiter) tuples, compared in C, with one loop
# timer armed for the earliest; a waiter woken otherwise leaves a stale entry, dropped when
# it reaches the top or when stale entries make up half of a big heap.
_seq = itertools.count()
_MAX_TIMER = 86400.0
_COMPACT_MIN = 256


class _Job:
    """One call of ``run()``: what to call, in which context, and how it ended."""

    __slots__ = (
        "fn", "args", "kwargs", "ctx", "result", "exc", "worker", "cancelled", "detached",
        "abandoned", "locals",
    )

    def __init__(self, fn, args, kwargs):
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        # Copy the caller's contextvars in, as asyncio.to_thread does: a value set around the
        # awaited call (pymongo.timeout(), a request id) is visible to the sync code, and what
        # the sync code sets does not leak back into the caller.
        self.ctx = contextvars.copy_context()
        self.result = None
        self.exc = None
        self.worker = None  # set while a worker runs the job
        self.cancelled = False  # a cancellation to deliver at the next park
        # No task resumes it any more (cancelled, or ended by shutdown): its waits are
        # resumed by Waiter._fire directly.
        self.detached = False
        self.abandoned = False  # its task was cancelled and left: nobody reads the outcome
        self.locals = None  # green.threading.local storage of this job, made on first use


class _Hub:
    """Per-event-loop state: the root greenlet, idle workers, fd waiters, counters."""

    __slots__ = (
        "loop", "root", "thread_id", "idle", "readers", "writers", "streak_end", "ready",
        "calls", "active", "park_kinds", "spawned", "cancels", "workers",
        "poller", "epoll_id", "deadlines", "stale", "timer", "timer_when",
    )

    def __init__(self, loop):
        self.loop = loop
        self.root = getcurrent()
        self.thread_id = _get_ident()
        self.idle = []
        self.readers = {}  # fd -> Waiter parked on readability
        self.writers = {}  # fd -> Waiter parked on writability
        self.streak_end = 0.0  # when the current streak of calls that did not park must yield
        # The loop's queue of ready callbacks, where the loop exposes it (asyncio's
        # BaseEventLoop, so Tornado's too); uvloop does not, and relies on the streak alone.
        ready = getattr(loop, "_ready", None)
        self.ready = ready if hasattr(ready, "__len__") else ()
        self.calls = 0
        self.active = 0  # jobs started and not ended (in flight: running, parked or detached)
        self.park_kinds = [0] * len(PARK_KINDS)  # parks since the hub was made, by kind
        self.spawned = 0
        self.cancels = 0
        # Every live worker, weakly: statistics() walks it (a worker is added when spawned,
        # which the pool makes rare; it leaves when the greenlet is collected).
        self.workers = weakref.WeakSet()
        self.poller = None  # the private epoll set, made at the first fd wait
        self.epoll_id = next(_epoll_ids)  # marks the sockets registered in self.poller
        self.deadlines = []  # heap of (time.monotonic() deadline, seq, Waiter)
        self.stale = 0  # entries of woken waiters still in the heap
        self.timer = None  # the loop timer for the earliest deadline
        self.timer_when = 0.0

    @property
    def parks(self):
        """Parks since the hub was made (all kinds)."""
        return sum(self.park_kinds)

    # -- readiness ------------------------------------------------------------------------

    def watch_fd(self, fd, owner):
        """Make sure ``fd`` is in the epoll set. ``owner`` is the green socket waiting on it
        (or None for a bare fd): a socket registered here carries this hub's ``epoll_id`` in
        its ``_epoll_id`` slot, and is known to be in the set (the hot path). A closed socket
        leaves the set through ``forget_fd``; a new socket object starts unmarked and
        registers afresh, whether its fd number was reused (after a close, or after a socket
        was collected without one) or it wraps an fd already in the set. (A slot rather than
        a table of weak references by fd: ~130 bytes less per connection, and a slot read
        per wait instead of a lookup and a call.)"""
        if owner is not None and owner._epoll_id == self.epoll_id:
            return
        poller = self.poller
        if poller is None:
            poller = self.poller = _EPOLL()
            self.loop.add_reader(poller.fileno(), self._dispatch)
        # Modify first: a bare fd (select/poll shims, public waits) is usually in the set
        # already, and modifying re-reports readiness that is there now (an edge set only
        # reports changes: a bare fd's waiter may not have tried the fd first). Not in the
        # set (a new fd, or a new file behind a reused fd number): register it.
        try:
            poller.modify(fd, _EPOLL_MASK)
        except FileNotFoundError:
            poller.register(fd, _EPOLL_MASK)
        if owner is not None:
            owner._epoll_id = self.epoll_id

    def forget_fd(self, fd):
        """Drop ``fd`` from the epoll set before its socket closes (any thread: epoll_ctl
        is thread-safe)."""
        poller = self.poller
        if poller is None:
            return
        try:
            poller.unregister(fd)
        except (OSError, ValueError):
            pass  # never registered, or the set is closed

    def _dispatch(self):
        # The loop's reader callback for the epoll fd, in the root greenlet. Each event
        # resumes the waiter parked on that fd and direction, if any (an edge nobody waits
        # for is dropped: the next wait starts with a non-blocking try). A resumed worker
        # may close fds or wait again before we look at the next event; lookups are fresh,
        # and a waiter woken for a reused fd number just retries (waits tolerate spurious
        # wake-ups).
        readers = self.readers
        writers = self.writers
        for fd, events in self.poller.poll(0):
            if events & _EPOLL_READ:
                waiter = readers.get(fd)
                if waiter is not None:
                    waiter._fire(True)
            if events & _EPOLL_WRITE:
                waiter = writers.get(fd)
                if waiter is not None:
                    waiter._fire(True)

    # -- deadlines ------------------------------------------------------------------------

    def add_deadline(self, waiter, timeout):
        when = _monotonic() + timeout
        heappush(self.deadlines, (when, next(_seq), waiter))
        if self.timer is None or when < self.timer_when:
            self._arm(when)

    def _arm(self, when):
        if self.timer is not None:
            self.timer.cancel()
        self.timer_when = when
        # Capped: an infinite or huge timeout needs no timer yet (uvloop refuses huge
        # delays); a timer that fires before the deadline is re-armed by _expire.
        delay = min(max(0.0, when - _monotonic()), _MAX_TIMER)
        self.timer = self.loop.call_later(delay, self._expire)

    def _expire(self):
        # The loop timer for the earliest deadline (root greenlet). Time out every waiter
        # whose deadline passed; each _fire runs its worker, which may add deadlines, so
        # the top of the heap is re-read every time.
        self.timer = None
        heap = self.deadlines
        # Deadlines are in time.monotonic(), not loop.time(): uvloop's clock counts whole
        # milliseconds, so its timers fire up to 1 ms early by ours, and a wait must not end
        # before its timeout (time.sleep never returns early). An early timer is re-armed.
        now = _monotonic()
        while heap:
            when, _, waiter = heap[0]
            if waiter.fired:
                heappop(heap)
                self.stale -= 1
            elif when <= now:
                heappop(heap)
                waiter._timed = False  # its entry is gone, not stale
                waiter._fire(TIMED_OUT)
            else:
                break
        # Waiters resumed above may have armed the timer for their own, later, deadlines.
        if heap and (self.timer is None or heap[0][0] < self.timer_when):
            self._arm(heap[0][0])

    def drop_deadline(self):
        # A timed waiter was woken by something else: its entry is now stale. Rebuild the
        # heap when stale entries are half of a big one (socket timeouts are long and
        # nearly never fire, so otherwise they would pile up for the whole timeout).
        self.stale += 1
        heap = self.deadlines
        if self.stale >= _COMPACT_MIN and self.stale * 2 >= len(heap):
            heap[:] = [entry for entry in heap if not entry[2].fired]
            heapify(heap)
            self.stale = 0


class _Worker(greenlet):
    """A reusable greenlet that runs ``run()`` jobs; ``type(getcurrent()) is _Worker``
    is how every helper decides whether it is in green context."""

    # Slots, not the greenlet's instance dict: ~100 bytes less per worker, and a worker is
    # kept per parked call.
    __slots__ = ("hub", "job", "waiter")

    def __init__(self, hub, job):
        super().__init__(self._main, hub.root)
        self.hub = hub
        # The first job is handed over here, not as a switch() argument: greenlet keeps the
        # arguments of the first switch alive until run() returns, which _main never does.
        self.job = job
        self.waiter = None  # the Waiter this worker is parked on, if any
        hub.spawned += 1
        hub.workers.add(self)

    def _main(self):
        # Few locals: this frame is at the bottom of the worker's own data stack (16 KB,
        # mmap), where every page the deepest call ever touched stays resident. Measured:
        # four more locals here put the peak of bench_memory's BLPOPs (redis-py's
        # importlib.metadata lookup under each new Connection) on a second page, +3.3 KB
        # per parked call.
        hub = self.hub
        job = self.job
        while True:
            job.worker = self
            self.job = job
            # The job runs in its copy of the caller's context as this greenlet's own context
            # (greenlet swaps it at every switch), not inside job.ctx.run(): that C call would
            # put one more interpreter frame on the C stack, which greenlet copies to the heap
            # at every park (~130 bytes per parked call).
            self.gr_context = job.ctx
            try:
                # A fixed argument count where it can be: fn(*args, **kwargs) is
                # CALL_FUNCTION_EX, which CPython 3.11 and 3.12 run in a nested call of the
                # interpreter's C function, and that C frame stays under every park of the
                # job, in the stack copy greenlet keeps on the heap: 368 bytes of a parked
                # BLPOP's 3,976. The wrappers call with (delegate, *args): mostly 1-3.
                args = job.args
                if job.kwargs:
                    job.result = job.fn(*args, **job.kwargs)
                elif not args:
                    job.result = job.fn()
                elif len(args) == 2:
                    job.result = job.fn(args[0], args[1])
                elif len(args) == 1:
                    job.result = job.fn(args[0])
                elif len(args) == 3:
                    job.result = job.fn(args[0], args[1], args[2])
                else:
                    job.result = job.fn(*args)
            except GreenletExit as exc:
                # Killed (shutdown, a closed loop, garbage collection): the awaiting run(), if
                # any, was woken by whoever killed us and reports a cancellation; end this
                # greenlet instead of reusing it.
                job.exc = exc
                self.job = job.worker = None
                hub.active -= 1
                return _DONE
            except BaseException as exc:
                job.exc = exc
            self.gr_context = None  # an idle worker keeps no context values alive
            self.job = job.worker = None
            hub.active -= 1
            if job.abandoned:
                job.exc = job.result = None  # tracebacks hold frames, and so sockets
            if len(hub.idle) >= _MAX_IDLE:
                return _DONE  # the greenlet ends; returning switches to the root
            hub.idle.append(self)
            job = args = None  # an idle worker must not keep the last call alive
            # Back to whoever is suspended in the root: run(), which reads job.result/exc,
            # or for a detached job the callback that resumed it. The next job is switched
            # in here.
            job = hub.root.switch(_DONE)


_hubs = {}  # loop -> _Hub; hubs of closed loops are dropped when the next loop's hub is made
_last_hub = None  # fast path: the hub used by the previous call


def _hub_for(loop):
    global _last_hub
    hub = _last_hub
    if hub is not None and hub.loop is loop:
        return hub
    hub = _hubs.get(loop)
    if hub is None:
        # A new loop: forget the hubs of closed ones (tests and asyncio.run() make a loop
        # per run), so their idle workers and the loops themselves can be collected.
        for old in [old for old in _hubs if old.is_closed()]:
            _retire(_hubs.pop(old), loop)
        hub = _hubs[loop] = _Hub(loop)
    _last_hub = hub
    return hub


def _retire(hub, loop):
    """End the idle workers of a closed loop's hub.

    An idle worker is suspended inside ``_main`` with itself and its hub in its frame: a
    cycle the garbage collector cannot see through a suspended greenlet, so dropping the hub
    alone would leak every idle worker with its stack. Throwing GreenletExit ends each one
    (it is raised at the idle switch, outside any job). Done in batches from the new loop,
    as ending a thousand greenlets takes ~17 ms. Workers of another thread cannot be
    switched to from here; they die with their thread.
    """
    from ._lifecycle import retire_parked  # its parked workers: GreenletExit, from `loop`

    retire_parked(hub, loop)
    if hub.poller is not None:
        hub.poller.close()  # its loop is closed: nothing polls it any more
    idle, hub.idle = hub.idle, []
    if not idle or hub.thread_id != _get_ident():
        return

    def end(batch):
        here = getcurrent()
        for worker in batch:
            worker.parent = here  # the ending worker returns here, not to the old root
            worker.throw(GreenletExit)

    for i in range(0, len(idle), 64):
        loop.call_soon(end, idle[i:i + 64])


def _running_hub(api):
    loop = _get_running_loop()
    if loop is None:
        raise NoRunningLoopError(
            f"{api} needs a running asyncio event loop; call it from a coroutine "
            "(for example inside asyncio.run(main()) or a Tornado handler), not from sync code"
        )
    hub = _hub_for(loop)
    if getcurrent() is not hub.root:
        raise RuntimeError(
            f"{api} was awaited outside the greenlet that runs the event loop; "
            "greenasync expects coroutines to run in the loop's own greenlet"
        )
    return hub


async def run(fn, /, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` in a worker greenlet on the running loop's thread.

    Wherever ``fn`` would block in a patched library (socket I/O, ``time.sleep``, a
    contended lock, ...) the greenlet parks and the loop runs other work. Returns ``fn``'s
    result or raises its exception (same object, traceback kept). The caller's contextvars
    are copied in. Cancelling the awaiting task throws ``asyncio.CancelledError`` into the
    greenlet at its current wait, so ``finally`` blocks and the library's own cleanup run.

    Raises :class:`NoRunningLoopError` when no event loop is running in this thread, and
    ``TypeError`` when ``fn`` is a coroutine function (after the call made its coroutine,
    which is closed): await that directly.
    """
    hub = _last_hub  # inlined fast path of _running_hub(): this is the per-call hot path
    if hub is None or hub.loop is not _get_running_loop() or getcurrent() is not hub.root:
        hub = _running_hub("greenasync.run()")
    hub.calls += 1
    hub.active += 1  # (the worker counts it down when the job ends)
    job = _Job(fn, args, kwargs)
    # First stretch: the worker runs fn until it finishes or parks, then switches back here.
    if hub.idle:
        worker = hub.idle.pop()
        state = worker.switch(job)
    else:
        worker = _Worker(hub, job)
        state = worker.switch()
    if state is _DONE:
        # Finished without a loop iteration; see _FAIR_SLICE for when we yield anyway.
        if hub.ready:
            hub.streak_end = 0.0
            await _yield_now()
        else:
            now = _monotonic()
            end = hub.streak_end
            if not end:
                hub.streak_end = now + _FAIR_SLICE  # the first call of a streak
            elif now >= end:
                hub.streak_end = 0.0
                await _yield_now()
    else:
        hub.streak_end = 0.0
        # Parked: wait for the waiter's wake-up, switch it in, until the job is done. Each
        # stretch runs in this task's step.
        while True:
            waiter = worker.waiter
            try:
                if waiter.future is None:
                    await _yield_now()  # ready at once (a yield): one loop round first
                else:
                    await waiter.future
            except BaseException:
                # Cancelled (or the coroutine closed, or anything thrown into it): the job
                # gets CancelledError at its wait, and no task resumes it any more.
                _cancel(job, worker, waiter)
                # The task keeps this exception, whose traceback keeps this frame: it must
                # not keep the job (its outcome's traceback holds the library's sockets).
                job = worker = waiter = None
                raise
            if job.detached:  # shutdown() took the job over meanwhile, and woke us
                if job.worker is not None:
                    job = worker = waiter = None
                    raise _CancelledError()  # still unwinding (parked again): left to it
                break  # it ended: report how
            if _resume(worker, waiter) is _DONE:
                break
    exc = job.exc
    if exc is not None:
        job.exc = None
        if isinstance(exc, GreenletExit):
            raise _CancelledError()  # ended by shutdown(): a cancellation for the caller
        try:
            raise exc
        finally:
            exc = None
    result = job.result
    # A sync function may return a coroutine (a factory), but an `async def` passed here is a
    # mistake that would otherwise surface as a coroutine object where a value was expected.
    # Checked only on a coroutine result: one type comparison per call.
    if type(result) is _CoroutineType and _iscoroutinefunction(fn):
        result.close()  # never awaited: no RuntimeWarning on top of the error
        raise TypeError(
            f"greenasync.run() runs sync code in a worker greenlet, but {fn!r} is a coroutine "
            "function: await it directly instead"
        )
    return result


@types.coroutine
def _yield_now():
    """Give the loop one round: the awaiting task is rescheduled at once (asyncio.sleep(0)
    without its timer checks)."""
    yield


def _cancel(job, worker, waiter):
    """The awaiting task was cancelled while its worker was parked on ``waiter``: deliver the
    cancellation into the worker (runs in the root, in the cancelled task's step).

    Like a task's cancellation, it is delivered once: cleanup code that waits again while
    unwinding (a lock in a ``finally``) parks normally, and is then resumed by its waiters
    directly (the job is detached: the task has left). The worker goes back to the idle pool
    only when the job has finished unwinding.
    """
    if job.detached:
        return  # ended meanwhile by shutdown(), which resolved our future to tell us
    job.detached = job.abandoned = True
    worker.hub.cancels += 1
    if not waiter.fired:
        # Throw CancelledError at the wait point: the watcher/timer go first, then the
        # worker unwinds until it parks again or ends, and switches back to us.
        waiter.fired = True
        waiter._cleanup()
        worker.throw(_CancelledError())
    else:
        # Woken already: the worker gets its value (a lock handed over must be seen as
        # taken), and its next park raises CancelledError instead.
        job.cancelled = True
        _resume(worker, waiter)
    # (If the job ended here, the worker dropped its outcome already: it is abandoned.)


def in_green_context():
    """True inside a greenasync worker greenlet (where waits park instead of blocking)."""
    return type(getcurrent()) is _Worker


class Waiter:
    """A one-shot wake-up for the current worker greenlet.

    Build it in green context, hand it to whoever will wake you (a lock's queue, a thread's
    callback), then ``wait()``. ``wake(value)`` may be called from any thread, any number of
    times: the first wake-up, timeout or cancellation wins and the rest are ignored.
    Every wake-up funnels through ``_fire``, on the loop thread: it resolves the future the
    awaiting ``run()`` waits on, and that task's step switches the worker in (a detached
    job's worker is resumed by ``_fire`` itself). One code path, so no double resume.
    """

    __slots__ = (
        "hub", "worker", "fired", "kind", "_table", "_fd", "_timed", "_more", "future",
        "value", "exc",
    )

    def __init__(self):
        worker = getcurrent()
        if type(worker) is not _Worker:
            raise MissingGreenletError(
                "greenasync.Waiter() needs a greenasync worker greenlet; "
                "only code run by greenasync.run() can park"
            )
        self.hub = worker.hub
        self.worker = worker
        self.fired = False
        self.kind = _LOCK  # what it waits for (an index into PARK_KINDS), set by _park
        self._table = None  # hub.readers/hub.writers while an fd watcher is registered
        self._fd = -1
        self._timed = False  # has an entry in the hub's deadline heap
        self._more = None  # further (table, fd) watches of a multi-fd wait (select/poll)
        self.future = None  # made by _park; run() awaits it (None: detached, or ready at once)
        self.value = None  # what the wait returns, and
        self.exc = None  # what it raises instead (set by _fire)

    def wake(self, value=None):
        """Resume the waiting greenlet with ``value``. Safe from any thread; never switches
        directly (the caller may itself be a worker greenlet or another thread)."""
        loop = self.hub.loop
        try:
            if _get_ident() == self.hub.thread_id:
                loop.call_soon(self._fire, value)
            else:
                loop.call_soon_threadsafe(self._fire, value)
        except RuntimeError:
            # The loop is closed: the parked greenlet can never run again, and a lock
            # release in a plain thread must not fail because of that.
            pass

    def wait(self, timeout=None):
        """Park until woken; return the wake-up value, or ``TIMED_OUT`` after ``timeout``
        seconds (``None`` waits forever). Raises ``CancelledError`` if the awaiting task is
        cancelled meanwhile. Counted as a ``"lock"`` wait by ``greenasync.statistics()``."""
        return self._park(timeout, _LOCK)

    def _park(self, timeout, kind=_LOCK):
        worker = self.worker
        job = worker.job
        if job is not None and job.cancelled:
            job.cancelled = False  # delivered once, here
            self.fired = True
            self._cleanup()
            raise _CancelledError()
        hub = self.hub
        if timeout is not None:
            if timeout != timeout:  # NaN: in the heap it would never fire, nor let others
                self.fired = True
                self._cleanup()
                raise ValueError("Invalid value NaN (not a number)")
            hub.add_deadline(self, timeout)
            self._timed = True
        self.kind = kind
        worker.waiter = self
        if not self.fired and job is not None and not job.detached:
            self.future = hub.loop.create_future()
        hub.park_kinds[kind] += 1
        try:
            # Park: the root resumes where it switched into this worker (run(), or a _fire
            # for a detached job).
            value = hub.root.switch(_PARKED)
        finally:
            worker.waiter = None
            if not self.fired:  # resumed by something other than _fire (a kill at shutdown)
                self.fired = True
                self._cleanup()
        return value

    def _fire(self, value, exc=None):
        # On the loop thread: a loop callback, cancel_wait() (maybe in a worker), or run().
        if self.fired:
            return
        self.fired = True
        self._cleanup()
        self.value = value
        self.exc = exc
        fut = self.future
        if fut is not None:
            if not fut.done():  # else its task was cancelled: run() delivers value, then that
                fut.set_result(None)
        elif getcurrent() is self.hub.root:
            _resume(self.worker, self)  # a detached job: nobody else will
        else:
            self.hub.loop.call_soon(_resume, self.worker, self)  # never worker to worker

    def _watch(self, fd, writing, owner=None):
        """Watch ``fd`` for this waiter (at most one waiter per fd and direction: a second
        one is a caller's bug, and asyncio would silently replace the first one's callback).
        ``owner`` is the socket object the fd belongs to, if known (see _Hub.watch_fd)."""
        hub = self.hub
        table = hub.writers if writing else hub.readers
        if fd in table:
            raise ConcurrentUseError(
                f"another greenlet is already waiting for fd {fd} to become "
                f"{'writable' if writing else 'readable'}; a connection cannot be shared by "
                "concurrent calls (use one connection per call, e.g. a pool)"
            )
        # Register first: it can fail (EPERM for a regular file, EMFILE making the epoll
        # set, a closed fd), and must then leave no table entry behind, or every later wait
        # on the fd would be a ConcurrentUseError.
        if _EPOLL is not None:
            hub.watch_fd(fd, owner)
        elif writing:
            hub.loop.add_writer(fd, self._fire, True)
        else:
            hub.loop.add_reader(fd, self._fire, True)
        table[fd] = self
        if self._table is None:
            self._table = table
            self._fd = fd
        else:
            if self._more is None:
                self._more = []
            self._more.append((table, fd))

    def _unwatch(self, table, fd):
        del table[fd]  # the fd stays in the epoll set for its next wait
        if _EPOLL is None:
            if table is self.hub.readers:
                self.hub.loop.remove_reader(fd)
            else:
                self.hub.loop.remove_writer(fd)

    def _cleanup(self):
        table = self._table
        if table is not None:
            self._table = None
            self._unwatch(table, self._fd)
            if self._more is not None:
                for table, fd in self._more:
                    self._unwatch(table, fd)
                self._more = None
        if self._timed:
            self._timed = False
            self.hub.drop_deadline()


def _resume(worker, waiter):
    # In the root: switch the outcome of ``waiter`` (the wait ``worker`` is parked at) in.
    # Returns when the worker parked again (_PARKED) or finished (_DONE).
    exc = waiter.exc
    if exc is None:
        return worker.switch(waiter.value)
    waiter.exc = None
    return worker.throw(exc)


class _Ready:
    """What ``worker.waiter`` is while the worker yields for its task (``_yield``): a wait
    that is over before it starts. Nothing can wake, time out or cancel it (a cancellation
    arriving meanwhile is delivered at the next park, as for any fired waiter), so one
    immutable instance per kind serves every worker: ``run()`` sees ``future is None``,
    gives the loop one round and switches ``value`` in."""

    __slots__ = ("kind",)
    fired = True
    future = None
    value = None
    exc = None

    def __init__(self, kind):
        self.kind = kind


_READY = [_Ready(kind) for kind in range(len(PARK_KINDS))]


def _fileno(fd):
    return fd if isinstance(fd, int) else fd.fileno()


def _wait_fd(fd, timeout, writing, owner=None):
    worker = getcurrent()
    if type(worker) is not _Worker:
        return _block_on_fd(fd, timeout, writing)
    waiter = Waiter()
    waiter._watch(fd, writing, owner)
    return waiter._park(timeout, _WRITE if writing else _READ) is True


def wait_any(readable, writable, timeout=None):
    """Wait until any fd in ``readable`` is readable or any in ``writable`` is writable.

    Returns True if something became ready, False on timeout; it does not say which fd
    (callers such as the select/poll shims re-poll with a zero timeout to find out).
    Outside green context it blocks the thread in ``poll``.
    """
    readable = [_fileno(fd) for fd in readable]
    writable = [_fileno(fd) for fd in writable]
    worker = getcurrent()
    if type(worker) is not _Worker:
        events = dict.fromkeys(readable, select.POLLIN)
        for fd in writable:
            events[fd] = events.get(fd, 0) | select.POLLOUT
        return _block_poll(events, timeout)
    waiter = Waiter()
    try:
        for fd in readable:
            waiter._watch(fd, False)
        for fd in writable:
            waiter._watch(fd, True)
    except BaseException:
        waiter.fired = True
        waiter._cleanup()
        raise
    kind = _READ if readable else _WRITE if writable else _SLEEP  # select([], [], [], t)
    return waiter._park(timeout, kind) is True


def _block_on_fd(fd, timeout, writing):
    # Outside green context: block the thread, exactly like a blocking select would.
    return _block_poll({fd: select.POLLOUT if writing else select.POLLIN}, timeout)


def _block_poll(events, timeout):
    poller = select.poll()
    for fd, mask in events.items():
        poller.register(fd, mask)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))  # round up
    return bool(poller.poll(ms))


def cancel_wait(fd, exc):
    """Throw ``exc`` into the greenlets of this thread's running loop that are parked on
    ``fd``; the socket shim calls it just before closing ``fd``.

    Without it a greenlet parked on a socket that another greenlet closes would never wake,
    and its stale registration would make the next socket that reuses the fd number fail
    with ConcurrentUseError. Watchers are removed now, while the fd is still open; the
    greenlets are resumed from a loop callback (the closer may itself be a worker).
    """
    loop = _get_running_loop()
    hub = _hubs.get(loop) if loop is not None else None
    if hub is None:
        return 0
    fd = _fileno(fd)
    cancelled = 0
    for table in (hub.readers, hub.writers):
        waiter = table.get(fd)
        if waiter is not None and not waiter.fired:
            waiter._fire(None, exc)  # watchers go now, while the fd is still open
            cancelled += 1
    return cancelled


def forget_fd(fd):
    """Drop ``fd`` from every hub's epoll set; the socket shim calls it just before it closes
    ``fd`` (in any thread), so no stale entry outlives the socket."""
    for hub in list(_hubs.values()):
        if hub.poller is not None:
            hub.forget_fd(fd)


def wait_readable(fd, timeout=None):
    """Wait until ``fd`` (an int or an object with ``fileno()``) is readable.

    Returns True when ready, False when ``timeout`` seconds passed first. In green context
    the greenlet parks; elsewhere the thread blocks (as ``select`` would). Raises
    :class:`ConcurrentUseError` if another greenlet already waits to read this fd.
    """
    return _wait_fd(_fileno(fd), timeout, False)


def wait_writable(fd, timeout=None):
    """Like :func:`wait_readable`, for writability."""
    return _wait_fd(_fileno(fd), timeout, True)


def wait_socket(sock, fd, writing, timeout):
    """The socket shim's wait: ``fd`` is ``sock``'s and ``sock`` just raised would-block,
    so its fd stays in the epoll set between waits (see _Hub.watch_fd)."""
    return _wait_fd(fd, timeout, writing, sock)


def turnaround():
    """The socket shims call this where a connection turns around: before reading after a
    send (the reply to a request), and before sending after a read (the next request).

    It yields once to the loop, if other calls are in flight or other callbacks are ready
    (in green context, unless the job is detached). Measured with redis-py at C=100 on
    loopback: without it, each coroutine did request, reply, request, ... in one stretch,
    because the server answers within the microseconds of library code in between, so
    requests reached the server one at a time, 60 µs apart: redis-server slept and was
    woken for every command (0.98 wake-ups per command against 0.03 with redis.asyncio,
    20.7 against 6.9 µs of client system time per command: the wake-up is paid inside
    ``sendto``). A yield at both turns splits each call into stretches the loop runs for
    all calls in turn: every ready call builds its request, then all send back to back,
    then all read; redis-server then reads many requests per wake-up, as it does for
    asyncio clients, whose awaits do the same. A stand-alone check (100 sockets, same work
    per command): recv-then-send per socket 0.94 server wake-ups per command, all receives
    then all sends 0.01. With no other call in flight a yield would only cost a loop round.
    """
    worker = getcurrent()
    if type(worker) is _Worker:
        hub = worker.hub
        if (hub.active > 1 or hub.ready) and not worker.job.detached:
            _yield(worker, _YIELD)


def _yield(worker, kind):
    job = worker.job
    hub = worker.hub
    if job.detached:  # no task to yield for: a loop callback resumes it
        waiter = Waiter()
        hub.loop.call_soon(waiter._fire, None)
        waiter._park(None, kind)
        return
    # The common case, twice per command at C >= 10 (turnaround): no Waiter and no _park,
    # whose checks are for waits that can be woken or time out (~0.5 µs of a ~3 µs yield).
    # (A pending cancellation, job.cancelled, exists only for a detached job: _cancel
    # detaches before it resumes the worker.)
    hub.park_kinds[kind] += 1
    worker.waiter = _READY[kind]
    try:
        hub.root.switch(_PARKED)
    finally:
        worker.waiter = None


def sleep(seconds):
    """``time.sleep`` that parks the greenlet in green context and blocks elsewhere."""
    worker = getcurrent()
    if type(worker) is not _Worker:
        _real_sleep(seconds)
        return
    if not -9223372036.854776 < seconds < 9223372036.854776:  # beyond 2**63 ns, or NaN:
        _real_sleep(seconds)  # time.sleep raises its own error at once (never waits forever)
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    if seconds == 0:
        _yield(worker, _SLEEP)  # still a real yield: the loop runs one round, like sleep(0)
    else:
        waiter = Waiter()
        waiter._park(seconds, _SLEEP)


def to_thread(fn, /, *args, **kwargs):
    """Call ``fn`` in the loop's default thread pool while the greenlet parks.

    For code that blocks where no shim reaches (a C extension doing its own I/O, heavy CPU).
    Outside green context it simply calls ``fn``. A cancellation stops waiting at once but
    cannot stop a thread that already started; its result is then dropped.
    """
    worker = getcurrent()
    if type(worker) is not _Worker:
        return fn(*args, **kwargs)
    ctx = contextvars.copy_context()
    fut = worker.hub.loop.run_in_executor(None, lambda: ctx.run(fn, *args, **kwargs))
    return _wait_future(fut, _THREAD)


def await_(awaitable):
    """From sync code in a worker greenlet, await ``awaitable`` on the loop; return its result.

    The greenlet parks while the loop runs the awaitable (as a task, in the greenlet's
    context). Cancelling the outer call cancels the task. Outside green context it raises
    :class:`MissingGreenletError`: there is no loop for plain sync code to wait on.
    """
    worker = getcurrent()
    if type(worker) is not _Worker:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()  # avoid "coroutine was never awaited" on top of our error
        raise MissingGreenletError(
            "greenasync.await_() called outside a greenasync greenlet; in a coroutine use "
            "`await`, and call await_() only from sync code run by greenasync.run()"
        )
    fut = asyncio.ensure_future(awaitable, loop=worker.hub.loop)
    return _wait_future(fut, _AWAIT)


def _wait_future(fut, kind=_THREAD):
    if not fut.done():
        waiter = Waiter()
        fut.add_done_callback(waiter._fire)  # done callbacks run on the loop, in the root
        try:
            waiter._park(None, kind)
        except BaseException:
            fut.remove_done_callback(waiter._fire)
            fut.cancel()
            raise
    return fut.result()
