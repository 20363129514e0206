"""Operability: the blocking watchdog and ``statistics()``.

The watchdog
------------
``greenasync.watchdog(threshold)`` reports every *stall* of an event loop: a stretch longer
than ``threshold`` seconds during which the loop could not run a timer that was due, because
its thread was busy in one callback (a coroutine step, a worker greenlet's stretch between
two parks) or blocked in a call that does not yield. Each report carries the stack that
stalled the loop, taken *while* it stalled, and names the likely cause.

How it works, and why this shape (learned from gevent's monitor thread, which samples the
hub from a thread, and Tornado's retired ``set_blocking_signal_threshold``, which armed
``SIGALRM`` around each callback: main thread only, a syscall per callback, and a signal
that interrupts the very system call it wants to report):

* Heartbeat (loop thread). A timer callback, ``_beat``, runs every ``interval`` seconds
  (``threshold / 5`` by default) and publishes ``(generation, due)``: when the next beat is
  due. One ``call_later`` per interval is all it costs the loop: no per-callback hook, so
  it works the same on asyncio, uvloop and Tornado, and a greenasync call pays nothing.
* Sampler (a daemon thread per watchdog). Every ``interval`` it compares the clock with
  ``due``. A beat that is late by ``lag`` proves the loop has not been able to run a due
  timer for ``lag`` seconds. From one interval before ``lag`` reaches the threshold, and
  every interval while it lasts, the sampler takes the loop thread's stack with
  ``sys._current_frames()``. That has to happen *during* the stall: once the loop runs
  again the culprit's frames are gone. It works because a thread blocked in a C call
  (``time.sleep``, ``poll``, ``recv``) has released the GIL, and a thread running Python
  code gives it up every ``sys.getswitchinterval()`` (5 ms). Each distinct stack is
  analysed once and counted; the report shows the one seen most often, so two stalls that
  run back to back in one callback are blamed on the longer.
* Greenlets. ``sys._current_frames()`` shows a thread's *running* greenlet only. That is
  exactly the stalling one: if a worker greenlet stalls the loop, the loop's own greenlet
  is suspended in the ``switch()`` into that worker. The worker's frames end at
  ``_Worker._main`` (a greenlet starts a fresh frame chain), which is how a worker is
  recognised; the loop-side frames (the ``await greenasync.run(...)`` that started the job,
  or the loop callback that resumed it) are then read from the suspended root greenlet's
  ``gr_frame`` and shown above the worker's frames.
* End of a stall. The next beat measures its own lateness on the loop thread and queues
  ``(generation, lateness)``; the sampler pairs it with the stack it took and reports.
  So the reported ``duration`` is a lower bound (the loop may have stalled up to one
  ``interval`` before the missed beat was due), a stall shorter than ``threshold`` is
  never reported, and one up to ``interval`` longer may be missed.
* A C call that holds the GIL (a huge ``sum``/``sort``/regex/``json``) keeps the sampler
  out until it returns; CPython then hands the GIL over at once, while the frame still
  points at that call, so the report names the right line and says the GIL was held. A
  beat that found the lateness but no stack at all (the whole process was paused, or the
  sampler lost the race) is reported too, without a stack.
* False alarms are filtered where they can be told apart: the loop not running (between
  ``run_until_complete`` calls) is no stall; a stack that shows the loop idle in its
  selector with a mostly idle CPU means the process was not scheduled, not that code
  stalled: reported with ``idle=True`` (the pytest fixture ignores those).
* Cause. Calls are identified without running user code: the source span of the
  instruction each frame is executing (``co_positions``, Python 3.11+) gives the callee's
  dotted name, resolved through the frame's locals/globals and static attribute lookup
  (never a property or ``__getattr__``). Frames of the stdlib and greenasync are plumbing;
  the innermost other frame is where the library made the call, and
  ``greenasync.patched()``/``greenasync.wrap()`` say whether that module is patched.
  The loop thread's CPU time over the stall (``pthread_getcpuclockid``) tells CPU-bound
  from blocked.

``statistics()``
----------------
Counters the bridge keeps per loop (one increment per call, one per park, which also
stores its kind on the Waiter), the live workers it tracks weakly (walked only when asked),
and what watchdogs saw: see :class:`Statistics` for every field.
"""

from __future__ import annotations

import builtins
import dis
import functools
import inspect
import linecache
import logging
import re
import sys
import threading
import time
import types
import weakref
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

from . import _bridge
from ._errors import NoRunningLoopError

__all__ = ["watchdog", "Watchdog", "Stall", "StallFrame", "statistics", "Statistics"]

log = logging.getLogger("greenasync.watchdog")

_monotonic = time.monotonic
_thread_time = time.thread_time
# The bottom frame of every worker greenlet, and the one that calls each job.
_WORKER_CODE = _bridge._Worker._main.__code__
try:
    import asyncio.events

    _HANDLE_RUN_CODE = asyncio.events.Handle._run.__code__  # per-callback, not "idle"
except AttributeError:  # pragma: no cover
    _HANDLE_RUN_CODE = None
_MISSING = object()
_MAX_TEXT_FRAMES = 40  # frames shown in Stall.stack (all are kept in Stall.frames)

_STDLIB_NAMES = frozenset(getattr(sys, "stdlib_module_names", ())) | frozenset(
    sys.builtin_module_names
)
if not hasattr(sys, "stdlib_module_names"):  # Python < 3.10: decide by file location
    import sysconfig

    _STDLIB_DIRS = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")})
else:
    _STDLIB_DIRS = ()
_NEVER_PATCHED = frozenset({"greenasync", "greenlet", "tornado", "uvloop"})

# C-level module names as users know them.
_MODULE_ALIASES = {"_socket": "socket", "posix": "os", "nt": "os", "_ssl": "ssl",
                   "_queue": "queue", "_select": "select"}

# Calls that block the calling thread (as described by _describe), with the name shown in
# a cause. A Python-level stdlib function (threading.Event.wait, socket.create_connection,
# queue.Queue.get, selectors.*.select) is recognised by the C primitive it ends up in.
_SOCKET_METHODS = ("recv", "recv_into", "recvfrom", "recvfrom_into", "recvmsg", "recvmsg_into",
                   "send", "sendall", "sendto", "sendmsg", "sendfile", "accept", "_accept",
                   "connect", "connect_ex")
_BLOCKING = {
    "time.sleep": "time.sleep",
    "select.select": "select.select",
    "select.poll.poll": "select.poll",
    "select.epoll.poll": "select.epoll",
    "select.devpoll.poll": "select.devpoll",
    "select.kqueue.control": "select.kqueue",
    **{f"socket.socket.{m}": f"socket.socket.{m} on a blocking stdlib socket"
       for m in _SOCKET_METHODS},
    **{f"socket.{f}": f"socket.{f}" for f in (
        "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo")},
    **{f"ssl._SSLSocket.{m}": f"ssl.SSLSocket.{m}" for m in (
        "read", "write", "do_handshake", "shutdown")},
    "_thread.lock.acquire": "threading.Lock.acquire",
    "_thread.lock.__enter__": "threading.Lock.acquire",
    "_thread.lock.acquire_lock": "threading.Lock.acquire",
    "_thread.RLock.acquire": "threading.RLock.acquire",
    "_thread.RLock.__enter__": "threading.RLock.acquire",
    "queue.SimpleQueue.get": "queue.SimpleQueue.get",
    "queue.SimpleQueue.put": "queue.SimpleQueue.put",
    **{f"os.{f}": f"os.{f}" for f in (
        "read", "readv", "write", "writev", "pread", "pwrite", "sendfile", "wait", "wait3",
        "wait4", "waitid", "waitpid", "system", "fsync")},
    **{f"signal.{f}": f"signal.{f}" for f in (
        "pause", "sigwait", "sigtimedwait", "sigwaitinfo")},
}

# Opcodes of a call in progress (3.11+; co_code is the unspecialised bytecode).
_CALL_OPS = frozenset(dis.opmap[name] for name in (
    "PRECALL", "CALL", "CALL_FUNCTION_EX", "CALL_KW", "BEFORE_WITH") if name in dis.opmap)
_CACHE = dis.opmap.get("CACHE", -1)
_CALL_RE = re.compile(r"\s*([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*\(")  # callee(...
_NAME_RE = re.compile(r"\s*([A-Za-z_]\w*(?:\s*\.\s*[A-Za-z_]\w*)*)\s*$")  # with lock:
_LAST_CALL_RE = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*\(")  # Python < 3.11


# --- records ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StallFrame:
    """One frame of the stalled loop thread, outermost first in :attr:`Stall.frames`."""

    filename: str
    lineno: int
    function: str
    module: Optional[str]  # the frame's ``__name__``, e.g. "redis._parsers.hiredis"
    line: str  # the source line, stripped ("" when the source is unavailable)
    greenlet: str  # "loop" (the loop's own greenlet) or "worker" (a greenasync worker)
    patched: Optional[str] = None  # the greenasync.patch()ed package covering the module
    wrapped: bool = False  # the module's package has a class passed to greenasync.wrap()

    @property
    def mark(self) -> str:
        """``"[patched: redis]"``, ``"[redis: wrapped, not patched]"`` or ``""``."""
        if self.patched is not None:
            return f"[patched: {self.patched}]"
        if self.wrapped:
            return f"[{(self.module or '').partition('.')[0]}: wrapped, not patched]"
        return ""


@dataclass(frozen=True)
class Stall:
    """One stall of an event loop, as reported by a :class:`Watchdog`.

    ``duration``: seconds the loop could not run a due timer (a lower bound, precise to the
    watchdog's ``interval``); for an ``ongoing`` report, the time so far.
    ``threshold``: the reporting watchdog's threshold.
    ``ongoing``: True for the one interim report of a stall still in progress after
    ``ongoing_after`` seconds (a hung loop never ends its stall); the final report follows
    when it ends.
    ``cause``: one line naming the likely cause, e.g. ``"select.poll in
    redis._parsers.hiredis: not patched; add patch=['redis']"``.
    ``stack``: the stack text (most recent call last), frames of patched/wrapped libraries
    marked; when a worker greenlet stalled, the loop-side frames come first.
    ``frames``: the same as :class:`StallFrame` records, outermost first.
    ``in_worker``: the stall happened inside a greenasync worker greenlet (a ``run()`` job).
    ``job``: that job's callable (dotted name), else None.
    ``cpu``: share of the measured part of the stall the loop thread spent on a CPU (0..1),
    or None when unknown; near 1 means CPU-bound, near 0 blocked (or not scheduled).
    ``idle``: the stack showed the loop idle in its selector and the CPU mostly idle: the
    process was not scheduled in time; no code of the loop stalled it.
    ``started``: wall-clock time (``time.time()``) the stall started (estimate).
    ``samples``: stacks sampled during the stall (one per ``interval`` once it neared the
    threshold); ``stack``/``frames``/``cause`` describe the one seen most often, i.e. where
    the loop spent most of the stall.
    ``loop``: the event loop.
    """

    duration: float
    threshold: float
    ongoing: bool
    cause: str
    stack: str
    frames: Tuple[StallFrame, ...]
    in_worker: bool
    job: Optional[str]
    cpu: Optional[float]
    idle: bool
    started: float
    samples: int
    loop: Any = field(repr=False, compare=False)

    @property
    def summary(self) -> str:
        """One line: duration, threshold and cause."""
        so_far = " so far (still stalled)" if self.ongoing else ""
        return (f"event loop stalled for {self.duration:.3f} s{so_far} (threshold "
                f"{self.threshold:.3f} s): {self.cause}")

    def __str__(self):
        return f"{self.summary}\n{self.stack}"


@dataclass(frozen=True)
class _Analysis:
    primitive: Optional[str]  # the innermost frame's current call ("select.poll.poll")
    entry: Optional[str]  # the call the library/user frame is making into the stdlib
    module: Optional[str]  # that frame's module
    function: str
    lineno: int
    plumbing: bool  # that frame is stdlib/greenasync (no library frame was found)
    patched: Optional[str]  # the patched package covering the module


class _Sample:
    """One distinct stack seen during a stall, analysed once, counted each time seen."""

    __slots__ = ("count", "frames", "stack", "in_worker", "job", "analysis", "idle_stack")

    def __init__(self):
        self.count = 1
        self.frames = ()
        self.stack = ""
        self.in_worker = False
        self.job = None
        self.analysis = None
        self.idle_stack = False


class _Episode:
    """What the sampler learns about one stall (one heartbeat generation) while it lasts."""

    __slots__ = ("gen", "when", "lag", "cpu", "samples", "total", "ongoing_sent")

    def __init__(self, gen, when, lag, cpu):
        self.gen = gen
        self.when = when  # monotonic time of the first sample
        self.lag = lag  # how late the beat was then
        self.cpu = cpu  # the loop thread's CPU time then (None if unknown)
        self.samples = {}  # stack key -> _Sample
        self.total = 0  # samples taken
        self.ongoing_sent = False

    def dominant(self):
        """The stack seen most often (the first seen on a tie), or None."""
        best = None
        for sample in self.samples.values():
            if best is None or sample.count > best.count:
                best = sample
        return best


_MAX_DISTINCT_STACKS = 16  # per stall: beyond that, new stacks are not analysed
_KEY_DEPTH = 4  # innermost frames that tell two samples apart


# --- the watchdog ----------------------------------------------------------------------

_stats_lock = threading.Lock()
_loop_stalls = weakref.WeakKeyDictionary()  # loop -> [stalls reported, longest duration]


def watchdog(threshold=0.1, *, loop=None, callback=None, interval=None, ongoing_after=_MISSING):
    """Start reporting stalls of an event loop longer than ``threshold`` seconds.

    Returns the running :class:`Watchdog`; stop it with ``stop()``, or use it as a context
    manager (``with greenasync.watchdog(0.1): ...``), usable from sync or async code.

    ``loop``: the loop to watch (default: the running loop; from another thread, pass it).
    ``callback``: called with one :class:`Stall` per report, in the watchdog's own thread:
    keep it short and never wait for the loop there (use ``loop.call_soon_threadsafe``).
    Default: a WARNING on the ``"greenasync.watchdog"`` logger (the record carries the
    Stall as ``record.greenasync_stall``).
    ``interval``: heartbeat and sampling period, default ``threshold / 5`` (a stall is
    measured to within one interval; each interval costs the loop one timer callback).
    ``ongoing_after``: a stall still going on after this many seconds is reported once more
    before it ends, with ``ongoing=True`` (default ``max(1.0, 10 * threshold)``; None: no
    interim report).

    Off unless started; several watchdogs may watch one loop. A watchdog also stops by
    itself when its loop is closed.
    """
    if loop is None:
        loop = _bridge._get_running_loop()
        if loop is None:
            raise NoRunningLoopError(
                "greenasync.watchdog() needs a running event loop: call it from a coroutine, "
                "or pass loop= (from another thread, the loop running there)"
            )
    return Watchdog(loop, threshold, callback=callback, interval=interval,
                    ongoing_after=ongoing_after)._start()


class Watchdog:
    """A running blocking watchdog on one loop; made by :func:`watchdog`.

    Attributes: ``loop``, ``threshold``, ``interval``, ``ongoing_after``; ``stalls`` (how
    many final reports it made), ``longest`` (the longest stall it reported, seconds),
    ``beats`` (heartbeats the loop ran: proof it was watching), ``running``.
    """

    def __init__(self, loop, threshold=0.1, *, callback=None, interval=None,
                 ongoing_after=_MISSING):
        threshold = float(threshold)
        if not threshold > 0:
            raise ValueError(f"watchdog threshold must be > 0 seconds, got {threshold!r}")
        if interval is None:
            interval = min(max(threshold / 5, 0.001), 1.0)
        interval = float(interval)
        if not 0 < interval <= threshold:
            raise ValueError(f"watchdog interval must be in (0, threshold], got {interval!r}")
        if ongoing_after is _MISSING:
            ongoing_after = max(1.0, 10 * threshold)
        elif ongoing_after is not None:
            ongoing_after = max(float(ongoing_after), threshold)
        if callback is not None and not callable(callback):
            raise TypeError(f"watchdog callback must be callable, got {callback!r}")
        self.loop = loop
        self.threshold = threshold
        self.interval = interval
        self.ongoing_after = ongoing_after
        self.callback = callback
        self.stalls = 0
        self.longest = 0.0
        # Written by the loop thread, read by the sampler. Each is replaced whole (one
        # attribute store is atomic under the GIL), never mutated in place.
        self._state = None  # (generation, monotonic time the next beat is due)
        self._thread_id = None  # the loop thread, learnt by the first callback there
        self._ancestors = None  # code objects below a loop callback: "the loop is idle"
        self._ends = deque()  # (generation, lateness, end time, loop thread CPU time)
        self._handle = None  # the pending beat's TimerHandle
        # The sampler's own state.
        self._episode = None  # _Episode: the stall in progress
        self._paused_gen = None  # a generation during which the loop was seen not running
        self._cpu_clock = None
        self._stopping = False
        self._stop_evt = threading.Event()
        self._lock = threading.Lock()
        self._thread = None

    # -- public ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._stopping and self._thread.is_alive()

    @property
    def beats(self) -> int:
        state = self._state
        return 0 if state is None else state[0]

    def stop(self):
        """Stop watching; idempotent, callable from any thread (or from the callback).

        Called on the loop thread, it first reports the stall that the calling callback may
        itself be in (``with watchdog(): time.sleep(1)`` reports that sleep). Every report
        is delivered before ``stop()`` returns (unless called from the callback itself).
        """
        with self._lock:
            if self._stopping:
                already = True
            else:
                already = False
                self._stopping = True
        if not already:
            if _bridge._get_ident() == self._thread_id:
                # We are on the loop thread, so whatever kept it from running the beat is
                # over: close the stall now, as the next beat would have (unless the loop
                # is not running at all: then no beat was due).
                if self.loop.is_running():
                    self._close_stall(_monotonic())
                if self._handle is not None:
                    self._handle.cancel()
            else:
                try:
                    self.loop.call_soon_threadsafe(self._cancel_beat)
                except RuntimeError:  # the loop is closed: nothing to cancel
                    pass
            self._stop_evt.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def __repr__(self):
        state = "running" if self.running else "stopped"
        return (f"<greenasync.Watchdog {state} threshold={self.threshold:g}s "
                f"interval={self.interval:g}s stalls={self.stalls} loop={self.loop!r}>")

    # -- loop thread ------------------------------------------------------------------------

    def _start(self):
        if _bridge._get_running_loop() is self.loop:
            self._start_on_loop(sys._getframe(2))  # watchdog()'s caller
        else:
            self.loop.call_soon_threadsafe(self._start_on_loop)
        self._thread = threading.Thread(target=self._sample_loop, daemon=True,
                                        name=f"greenasync-watchdog-{id(self):x}")
        self._thread.start()
        return self

    def _start_on_loop(self, caller=None):
        if self._stopping:
            return
        # Learn what lies below a loop callback now, not at the first beat: a stall may
        # start right away. From a loop callback (started from another thread) that is our
        # own caller chain; from a coroutine, what lies beyond its outermost coroutine frame.
        self._ancestors = _below_callbacks(sys._getframe(1) if caller is None else caller,
                                           from_callback=caller is None)
        self._thread_id = _bridge._get_ident()
        self._state = (0, _monotonic() + self.interval)
        self._handle = self.loop.call_later(self.interval, self._beat)

    def _beat(self):
        # The heartbeat: one timer callback per interval, the watchdog's only cost on the
        # loop. Lateness measured here, on the loop thread, is what ends a stall.
        if self._stopping:
            return
        now = _monotonic()
        self._close_stall(now)
        if self._ancestors is None:
            self._ancestors = _below_callbacks(sys._getframe(1), from_callback=True)
        gen = self._state[0] + 1
        self._state = (gen, now + self.interval)
        self._handle = self.loop.call_later(self.interval, self._beat)

    def _close_stall(self, now):
        state = self._state
        if state is None:
            return
        late = now - state[1]
        if late > self.threshold:
            self._ends.append((state[0], late, now, _thread_time()))

    def _cancel_beat(self):
        if self._handle is not None:
            self._handle.cancel()

    # -- sampler thread ------------------------------------------------------------------

    def _sample_loop(self):
        tick = self.interval
        try:
            while not self._stop_evt.wait(tick):
                if not self._check(_monotonic()):
                    break
        except BaseException:  # never die silently: a dead watchdog looks like a calm loop
            log.exception("greenasync watchdog thread failed; no more stall reports")
        finally:
            try:
                self._flush()
                episode = self._episode
                state = self._state
                if (episode is not None and self._stopping and state is not None
                        and state[0] == episode.gen and not episode.ongoing_sent):
                    # Stopped from another thread while the loop is still stalled: say so.
                    now = _monotonic()
                    lag = now - state[1]
                    if lag > self.threshold:
                        self._report(episode, lag, ongoing=True, cpu=None, end=now)
            except BaseException:
                log.exception("greenasync watchdog: final report failed")

    def _check(self, now):
        """One sampler tick; False when the loop is closed (the watchdog ends)."""
        self._flush()
        loop = self.loop
        if loop.is_closed():
            self._stopping = True
            return False
        state = self._state
        if state is None or self._thread_id is None:
            return True
        gen, due = state
        if not loop.is_running():
            # Between run_until_complete() calls the loop runs no timers, and that is no
            # stall: forget this generation (its late beat is dropped) and relearn where the
            # loop idles, as it may restart from elsewhere.
            self._paused_gen = gen
            self._episode = None
            self._ancestors = None
            return True
        if gen == self._paused_gen:
            return True
        lag = now - due
        # Start sampling one tick early: a stall that ends within a tick of crossing the
        # threshold would otherwise leave no stack. Samples of a stall that then stays
        # under the threshold are dropped with it.
        if lag + self.interval > self.threshold:
            episode = self._episode
            if episode is None or episode.gen != gen:
                self._episode = episode = _Episode(gen, now, lag, self._loop_cpu())
            self._sample(episode)
            if (self.ongoing_after is not None and lag >= self.ongoing_after
                    and not episode.ongoing_sent):
                episode.ongoing_sent = True
                self._report(episode, lag, ongoing=True, cpu=self._cpu_share(episode, now),
                             end=now)
        return True

    def _flush(self):
        """Report the stalls whose end the loop thread queued."""
        ends = self._ends
        while ends:
            gen, late, end, cpu_end = ends.popleft()
            if gen == self._paused_gen:
                continue
            episode = self._episode
            if episode is None or episode.gen != gen:
                episode = None
            cpu = None
            if episode is not None and episode.cpu is not None and end - episode.when > 0.005:
                cpu = max(0.0, min(1.0, (cpu_end - episode.cpu) / (end - episode.when)))
            self._report(episode, late, ongoing=False, cpu=cpu, end=end)
            if episode is not None:
                self._episode = None

    def _loop_cpu(self):
        """The loop thread's CPU time (seconds), read from this thread; None if unknown."""
        if self._cpu_clock is None:
            try:
                self._cpu_clock = time.pthread_getcpuclockid(self._thread_id)
            except (AttributeError, OSError, OverflowError):
                self._cpu_clock = False
        if self._cpu_clock is False:
            return None
        try:
            return time.clock_gettime(self._cpu_clock)
        except OSError:
            return None

    def _cpu_share(self, episode, now):
        if episode.cpu is None or now - episode.when <= 0.005:
            return None
        used = self._loop_cpu()
        if used is None:
            return None
        return max(0.0, min(1.0, (used - episode.cpu) / (now - episode.when)))

    def _sample(self, episode):
        """Take the loop thread's stack now; analyse it if it is a new one."""
        frame = sys._current_frames().get(self._thread_id)
        if frame is None:
            return
        try:
            key = []
            f = frame
            while f is not None and len(key) < _KEY_DEPTH:
                key.append((f.f_code, f.f_lineno))
                f = f.f_back
            key = tuple(key)
            episode.total += 1
            sample = episode.samples.get(key)
            if sample is not None:
                sample.count += 1
            elif len(episode.samples) < _MAX_DISTINCT_STACKS:
                sample = _Sample()
                _analyse_stack(sample, frame, self._ancestors)
                episode.samples[key] = sample
        finally:
            frame = f = None  # hold no frames of the loop thread beyond the sample

    def _report(self, episode, duration, *, ongoing, cpu, end):
        sample = episode.dominant() if episode is not None else None
        if sample is None or sample.analysis is None:
            cause = ("no stack: the watchdog thread did not get to run during the stall (the "
                     "whole process was paused or starved of CPU, or a C call held the GIL and "
                     "the loop's next heartbeat ran before the watchdog could look)")
            stack, frames, in_worker, job, idle = "(no stack was sampled)", (), False, None, False
        else:
            idle = sample.idle_stack and (cpu is None or cpu < 0.5)
            cause = _cause(sample.analysis, sample.in_worker, cpu, idle)
            if (not ongoing and not idle and episode.lag >= duration - self.interval
                    and duration > self.threshold + 2 * self.interval):
                # The first sample came only as the stall ended: the sampler could not get
                # the GIL before (a C call that holds it), though the line is still right.
                cause += ("; sampled only as the stall ended: the call held the GIL "
                          "(no other thread could run meanwhile)")
            stack, frames = sample.stack, sample.frames
            in_worker, job = sample.in_worker, sample.job
        started = time.time() - (_monotonic() - end) - duration
        stall = Stall(duration=duration, threshold=self.threshold, ongoing=ongoing, cause=cause,
                      stack=stack, frames=frames, in_worker=in_worker, job=job, cpu=cpu,
                      idle=idle, started=started,
                      samples=episode.total if episode is not None else 0, loop=self.loop)
        if not ongoing:
            self.stalls += 1
        self.longest = max(self.longest, duration)
        with _stats_lock:
            try:
                entry = _loop_stalls.get(self.loop)
                if entry is None:
                    entry = _loop_stalls[self.loop] = [0, 0.0]
            except TypeError:  # a loop that cannot be weakly referenced: not counted
                entry = [0, 0.0]
            if not ongoing:
                entry[0] += 1
            entry[1] = max(entry[1], duration)
        if self.callback is None:
            log.warning("%s", stall, extra={"greenasync_stall": stall})
            return
        try:
            self.callback(stall)
        except Exception:
            log.exception("greenasync watchdog callback %r failed", self.callback)


# --- stack analysis (runs in the sampler thread, while the loop thread stalls) -------------

_COROUTINE_FLAGS = inspect.CO_COROUTINE | inspect.CO_ITERABLE_COROUTINE | inspect.CO_ASYNC_GENERATOR


def _below_callbacks(frame, *, from_callback):
    """Code objects of the frames below a loop callback: the loop's dispatch, run_forever
    and whoever started the loop. A sampled stack whose innermost frame (the selector's
    aside) is one of these shows a loop waiting for events, not code stalling it; and they
    are the uninteresting outer part of every stall's stack.

    ``frame`` is a loop callback's caller (``from_callback``), or any frame of a coroutine
    step: then the frames beyond its outermost coroutine frame are the ones below.
    """
    if not from_callback:
        outermost = None
        f = frame
        while f is not None:
            if f.f_code.co_flags & _COROUTINE_FLAGS:
                outermost = f
            f = f.f_back
        if outermost is None:
            return None  # not in a coroutine: learn it at the first beat
        frame = outermost.f_back
    codes = set()
    while frame is not None:
        codes.add(frame.f_code)
        frame = frame.f_back
    codes.discard(_HANDLE_RUN_CODE)  # runs callbacks: not a frame of an idle loop
    return frozenset(codes) or None


def _analyse_stack(capture, frame, ancestors):
    """Fill ``capture`` (a _Sample) from the loop thread's current frame.

    Nothing here may run user code (no repr, no property, no ``__getattr__``) or keep
    frames afterwards. Everything read from live frames is read first, while this thread
    holds the GIL and the loop thread cannot move; reading source files (linecache) may
    release the GIL, so it comes after, working on copies.
    """
    own = []  # the running greenlet's frames, innermost first
    f = frame
    while f is not None:
        own.append(f)
        f = f.f_back
    loop_side = []
    fn = None
    if own and own[-1].f_code is _WORKER_CODE:
        capture.in_worker = True
        worker = _safe_local(own[-1], "self")
        fn = getattr(getattr(worker, "job", None), "fn", None)
        if fn is not None:
            capture.job = _describe(fn) or getattr(fn, "__qualname__", None)
        try:
            f = worker.hub.root.gr_frame  # the suspended loop greenlet, parked in a switch
        except Exception:
            f = None
        while f is not None:
            loop_side.append(f)
            f = f.f_back
        stalled = own
    else:
        loop_side, stalled = own, own

    # Where the library made the blocking call: the innermost frame that is not plumbing.
    infos = [_frame_info(f) for f in stalled]
    caller = next((i for i, info in enumerate(infos) if not info[2]), None)
    inner = _snapshot(stalled[0])
    outer = _snapshot(stalled[caller]) if caller else None
    job_is_c = capture.in_worker and stalled[0].f_code is _WORKER_CODE and fn is not None
    at = caller or 0
    function, module, plumbing = infos[at]
    lineno = stalled[at].f_lineno or 0

    # Idle: the loop thread is in its selector (or in the C loop, for uvloop), i.e. the
    # innermost frame apart from the selectors module's is one that runs below callbacks.
    if not capture.in_worker and ancestors:
        for f, info in zip(stalled, infos):
            if info[1] != "selectors":
                capture.idle_stack = f.f_code in ancestors
                break

    # The stack text starts at the loop callback: the frames below it (the loop's dispatch,
    # run_forever and whatever started the loop: a test runner's 60 frames) stay in
    # Stall.frames but are summarised in Stall.stack.
    below = 0
    if ancestors:
        for f in reversed(loop_side):
            if f.f_code not in ancestors and f.f_code is not _HANDLE_RUN_CODE:
                break
            below += 1

    # Plain data: (filename, lineno, name, module, greenlet side), outermost first.
    raw = [(f.f_code.co_filename, f.f_lineno or 0, *_frame_info(f)[:2], "loop")
           for f in reversed(loop_side)]
    if capture.in_worker:
        raw += [(f.f_code.co_filename, f.f_lineno or 0, *info[:2], "worker")
                for f, info in zip(reversed(stalled), reversed(infos))]
    del own, loop_side, stalled, frame, f
    # -- from here on no frame is touched --

    patched = _patched_packages()
    wrapped = _wrapped_tops()
    primitive = _describe(fn) if job_is_c else _current_callee(inner)  # run(time.sleep, 1)
    if caller is None:
        # Only stdlib/greenasync frames: the job itself is stdlib code (run(q.get)), or the
        # loop's own machinery is busy. Name the job, or the innermost call.
        entry = _describe(fn) if capture.in_worker and fn is not None else primitive
    elif caller == 0:
        entry = primitive
    else:
        entry = _current_callee(outer)
    capture.analysis = _Analysis(
        primitive=primitive, entry=entry, module=module, function=function, lineno=lineno,
        plumbing=plumbing, patched=_covering(module, patched) if module else None)
    frames = []
    for filename, line_no, name, mod, side in raw:
        line = linecache.getline(filename, line_no).strip() if line_no else ""
        top = (mod or "").partition(".")[0]
        frames.append(StallFrame(filename=filename, lineno=line_no, function=name, module=mod,
                                 line=line, greenlet=side,
                                 patched=_covering(mod, patched) if mod else None,
                                 wrapped=bool(top) and top in wrapped))
    capture.frames = tuple(frames)
    capture.stack = _format_stack(capture.frames, capture.job, below)


def _snapshot(frame):
    """What callee resolution needs from a live frame, copied: (code, lasti, lineno,
    locals, globals, builtins)."""
    try:
        local = dict(frame.f_locals)  # a snapshot of the fast locals: runs no user code
    except Exception:
        local = {}
    return (frame.f_code, frame.f_lasti, frame.f_lineno, local, frame.f_globals,
            frame.f_builtins)


def _safe_local(frame, name):
    try:
        return frame.f_locals.get(name)
    except Exception:
        return None


def _frame_info(f):
    """(function name, module name, plumbing?) for a frame."""
    code = f.f_code
    name = getattr(code, "co_qualname", code.co_name)
    try:
        mod = f.f_globals.get("__name__")
    except Exception:
        mod = None
    if not isinstance(mod, str):
        mod = None
    return name, mod, _is_plumbing(mod, code.co_filename)


def _is_plumbing(mod, filename):
    """The stdlib and greenasync: never where a library *decided* to block."""
    if mod is None:
        return False
    top = mod.partition(".")[0]
    if top == "greenasync":
        return True
    if _STDLIB_DIRS:
        return filename.startswith(_STDLIB_DIRS) and "site-packages" not in filename
    return top in _STDLIB_NAMES


def _format_stack(frames, job, below=0):
    lines = ["Stack of the stalled loop thread (most recent call last):"]
    if below >= len(frames):
        below = 0  # the loop itself is busy (no callback frame): show its frames
    shown = frames[below:][-_MAX_TEXT_FRAMES:]
    if below:
        lines.append(f"  ... {below} outer frames not shown: the event loop and what runs it")
    if len(frames) - below > len(shown):
        lines.append(f"  ... {len(frames) - below - len(shown)} more outer frames not shown")
    side = shown[0].greenlet if shown else "loop"
    for fr in shown:
        if fr.greenlet != side:
            side = fr.greenlet
            lines.append(f"  --- switched into a greenasync worker greenlet (job: {job}) ---")
        mark = fr.mark
        lines.append(f'  File "{fr.filename}", line {fr.lineno}, in {fr.function}'
                     + (f"   {mark}" if mark else ""))
        if fr.line:
            lines.append(f"    {fr.line}")
    return "\n".join(lines)


def _patched_packages():
    """Packages greenasync patches now, read without taking the patcher's lock (the loop
    thread might hold it while stalling)."""
    mod = sys.modules.get("greenasync._patch")
    if mod is None:
        return ()
    snap = getattr(mod, "_snapshot", None)
    if isinstance(snap, tuple):
        return snap
    try:
        return tuple(mod.patched())
    except Exception:
        return ()


def _wrapped_tops():
    mod = sys.modules.get("greenasync._wrap")
    registry = getattr(mod, "_registry", None)
    if not isinstance(registry, dict):
        return frozenset()
    try:
        classes = list(registry)
    except RuntimeError:
        return frozenset()
    return frozenset((getattr(c, "__module__", "") or "").partition(".")[0] for c in classes)


def _covering(module, packages):
    for pkg in packages:
        if pkg == "*":
            top = module.partition(".")[0]
            if top not in _STDLIB_NAMES and top not in _NEVER_PATCHED and top != "__main__":
                return pkg
        elif module == pkg or module.startswith(pkg + "."):
            return pkg
    return None


def _current_callee(snap):
    """Dotted name of what a frame (its ``_snapshot``) is calling, e.g. "select.poll.poll".

    Reads the source span of the executing instruction (Python 3.11+ ``co_positions``: a
    call's span is the whole call expression) and resolves its dotted callee statically.
    None when the frame is not in a call, or the callee is no dotted name.
    """
    code, lasti, lineno, local, glob, builtin = snap
    text = _call_text(code, lasti, lineno)
    if not text:
        return None
    m = _CALL_RE.match(text)
    enter = False
    if m is not None and not _closes_at_end(text, m.end() - 1):
        return None  # f(x)(y), super().g(): the callee is no dotted name
    if m is None:
        m = _NAME_RE.match(text)  # `with lock:` stalls in lock.__enter__
        if m is None:
            return None
        enter = True
    parts = [p.strip() for p in m.group(1).split(".")]
    obj = local.get(parts[0], _MISSING)
    if obj is _MISSING:
        obj = glob.get(parts[0], _MISSING)
    if obj is _MISSING:
        obj = (builtin if isinstance(builtin, dict) else vars(builtins)).get(parts[0], _MISSING)
    for name in parts[1:]:
        if obj is _MISSING:
            break
        obj = _static_attr(obj, name)
    if obj is _MISSING:
        return ".".join(parts) if not enter else None
    if enter:
        if isinstance(obj, (type, types.ModuleType)):
            return None
        enter_fn = _static_attr(obj, "__enter__")
        if enter_fn is _MISSING:
            return None
        obj = enter_fn
    return _describe(obj)


def _call_text(code, lasti, lineno):
    """Source of the call ``code`` is executing at ``lasti``: "poller.poll(300)", "lock"
    for a ``with lock:`` entry, or None when the instruction is no call (busy Python)."""
    filename = code.co_filename
    positions = getattr(code, "co_positions", None)
    if positions is None or lasti < 0:  # Python < 3.11: guess from the line
        line = linecache.getline(filename, lineno or 0)
        calls = _LAST_CALL_RE.findall(line)
        return f"{calls[-1]}()" if calls else None
    # co_code is the unspecialised bytecode; an outer frame's lasti may sit on the cache
    # entries that follow its CALL.
    raw_code = code.co_code
    i = lasti
    while 0 < i < len(raw_code) and raw_code[i] == _CACHE:
        i -= 2
    if i >= len(raw_code) or raw_code[i] not in _CALL_OPS:
        return None
    try:
        start, end, col, end_col = list(positions())[lasti // 2]
    except (IndexError, ValueError):
        return None
    if None in (start, end, col, end_col):
        return None
    lines = [linecache.getline(filename, n).encode() for n in range(start, end + 1)]
    if not lines or not lines[0]:
        return None
    # Column offsets are UTF-8 byte offsets.
    if start == end:
        raw = lines[0][col:end_col]
    else:
        raw = lines[0][col:] + b"".join(lines[1:-1]) + lines[-1][:end_col]
    return raw.decode("utf-8", "replace")


def _closes_at_end(text, open_at):
    depth = 0
    quote = None
    for i in range(open_at, len(text)):
        c = text[i]
        if quote is not None:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return not text[i + 1:].strip()
    return False


def _static_attr(obj, name):
    """``getattr`` that runs no Python code: no property, no ``__getattr__``."""
    try:
        if isinstance(obj, types.ModuleType):
            found = vars(obj).get(name, _MISSING)
            if found is _MISSING:
                std = vars(obj).get("__greenasync_stdlib__")  # a shim passing names through
                if isinstance(std, types.ModuleType):
                    found = vars(std).get(name, _MISSING)
            return found
        found = inspect.getattr_static(obj, name, _MISSING)
    except Exception:
        return _MISSING
    if isinstance(found, (staticmethod, classmethod)):
        return found.__func__
    if isinstance(found, property):
        return _MISSING
    if isinstance(found, (types.MemberDescriptorType, types.GetSetDescriptorType)) \
            and not isinstance(obj, type):
        try:
            return found.__get__(obj, type(obj))  # a C slot or getset: no Python code runs
        except Exception:
            return _MISSING
    return found


def _describe(obj):
    """A dotted name for a callable, by definition site: "time.sleep", "select.poll.poll",
    "socket.socket.recv", "_thread.lock.acquire", "mylib.client.Client.get"."""
    try:
        if isinstance(obj, types.MethodType):
            obj = obj.__func__
        if isinstance(obj, functools.partial):
            obj = obj.func
        if isinstance(obj, types.BuiltinFunctionType):  # C functions and bound C methods
            owner = obj.__self__
            if owner is None or isinstance(owner, types.ModuleType):
                return _dotted(obj.__module__ or getattr(owner, "__name__", None),
                               obj.__qualname__)
            cls = owner if isinstance(owner, type) else type(owner)
            return _dotted(cls.__module__, obj.__qualname__)
        if isinstance(obj, (types.MethodDescriptorType, types.WrapperDescriptorType,
                            types.ClassMethodDescriptorType, types.MethodWrapperType)):
            cls = getattr(obj, "__objclass__", None) or type(getattr(obj, "__self__", None))
            return _dotted(cls.__module__, obj.__qualname__)
        if isinstance(obj, (types.FunctionType, type)):
            return _dotted(obj.__module__, obj.__qualname__)
        cls = type(obj)
        return _dotted(cls.__module__, f"{cls.__qualname__}.__call__")
    except Exception:
        return None


def _dotted(module, qualname):
    module = _MODULE_ALIASES.get(module, module)
    return f"{module}.{qualname}" if module else qualname


def _display(name):
    """How a call is named in a cause."""
    if name is None:
        return None
    if name in _BLOCKING:
        return _BLOCKING[name]
    if name.startswith("greenasync.green."):
        return name[len("greenasync.green."):] + " (greenasync shim)"
    if name.startswith("greenasync._bridge."):
        return "greenasync." + name[len("greenasync._bridge."):]
    if name.startswith("builtins."):
        return name[len("builtins."):]
    return name


def _shim_io(entry, primitive):
    """True for a socket/ssl C method called by greenasync's own socket or ssl shim."""
    return (entry is not None and primitive is not None
            and entry.startswith(("greenasync.green.socket.", "greenasync.green.ssl."))
            and primitive.startswith(("socket.socket.", "ssl._SSLSocket.")))


def _cause(analysis, in_worker, cpu, idle):
    primitive, entry, module = analysis.primitive, analysis.entry, analysis.module
    function, lineno, patched_pkg = analysis.function, analysis.lineno, analysis.patched
    where = module or "?"
    if idle:
        return ("the loop thread was waiting for events in its selector when sampled: no code "
                "of the loop stalled it; the process or thread was not scheduled in time (an "
                "overloaded machine, another thread holding the GIL, or a paused process)")
    blocking = primitive in _BLOCKING or entry in _BLOCKING
    if blocking and _shim_io(entry, primitive):
        # The socket and ssl shims keep every fd non-blocking: a sample inside their C call
        # caught a syscall that returns at once (the thread was preempted there), not a wait.
        blocking = False
    name = _display(entry or primitive)
    if name is not None and primitive and entry and primitive != entry and blocking:
        name += f" (blocked in {_display(primitive)})"
    cpu_note = "" if cpu is None else f"; the loop thread was on a CPU {cpu:.0%} of the time"
    if blocking:
        if not in_worker:
            return (f"{name} in {where}: a blocking call on the event loop thread, outside "
                    "greenasync.run(); run it as `await greenasync.run(...)` with its library "
                    "patched, or use an async API" + cpu_note)
        top = where.partition(".")[0]
        if module is None or analysis.plumbing:
            return (f"{name} called directly as a greenasync job: the stdlib itself is never "
                    "patched; call the shim (greenasync.sleep, greenasync.green.*) or use "
                    "greenasync.to_thread()" + cpu_note)
        if patched_pkg is None and top == "__main__":
            return (f"{name} in {where}: not patched (greenasync patches packages, never "
                    "__main__: move this code into a module and patch that)" + cpu_note)
        if patched_pkg is None:
            return (f"{name} in {where}: not patched; add patch=['{top}'] "
                    f"(or call greenasync.patch('{top}'))" + cpu_note)
        return (f"{name} in {where}: {patched_pkg!r} is patched, but this call still reached "
                "the blocking stdlib (a reference patch() cannot rebind: see greenasync."
                f"patched()[{patched_pkg!r}].unreached; or an object made before patch()); "
                "greenasync.to_thread() works around it" + cpu_note)
    inside = " inside a greenasync job" if in_worker else " on the event loop thread"
    if cpu is not None and cpu < 0.25:
        hint = ("mostly off the CPU: probably a blocking call greenasync does not know (a C "
                "extension doing its own I/O?), or a machine too busy to schedule the loop "
                "thread; run a blocking call with greenasync.to_thread()")
    else:
        hint = ("CPU-bound work holds the loop: split it up or move it to a thread "
                "(greenasync.to_thread() / loop.run_in_executor())")
    if name is not None:
        return f"{name} in {where}{inside}, no known blocking call: {hint}" + cpu_note
    return (f"Python code in {function} ({where}, line {lineno}){inside} ran without yielding: "
            f"{hint}" + cpu_note)


# --- statistics ------------------------------------------------------------------------


@dataclass(frozen=True)
class Statistics:
    """A snapshot of greenasync's counters for one event loop (or summed over all).

    ``loops``: how many event loops the figures cover.
    ``workers``: live worker greenlets (running a job, parked, or idle in the pool).
    ``idle_workers``: workers in the pool waiting for a job.
    ``busy_workers``: workers in a job now (running or parked): ``workers - idle_workers``.
    ``parked``: waits in progress by kind: ``read``/``write`` (an fd: sockets, select/poll
    shims), ``sleep`` (``time.sleep``/``greenasync.sleep``), ``lock`` (hybrid threading and
    queue primitives, any ``Waiter.wait``), ``thread`` (``greenasync.to_thread``: a pool
    thread runs the call), ``await`` (``greenasync.await_``: a coroutine runs on the loop),
    ``yield`` (one loop round where a connection turns from sending to reading or back,
    while other calls are in flight).
    ``calls``: ``greenasync.run()`` calls started.
    ``parks``: waits that parked a worker (each gives the loop back until a wake-up).
    ``parks_by_kind``: ``parks`` split by the kinds above.
    ``switches``: switches from the loop into a worker greenlet (one per call started plus
    one per finished park: ``calls + parks - parked now``); each is matched by one back.
    ``cancellations``: cancellations delivered into a running job.
    ``spawned``: worker greenlets created (each costs ~13 µs; the pool reuses them).
    ``stalls``: stalls reported by watchdogs (final reports; see :func:`watchdog`).
    ``longest_stall``: the longest stall a watchdog reported, in seconds (0.0 if none).
    """

    loops: int
    workers: int
    idle_workers: int
    busy_workers: int
    parked: Dict[str, int]
    calls: int
    parks: int
    parks_by_kind: Dict[str, int]
    switches: int
    cancellations: int
    spawned: int
    stalls: int
    longest_stall: float

    def as_dict(self) -> dict:
        """The fields as a plain dict (fresh copies of the per-kind dicts)."""
        return asdict(self)


def _live_workers(hub):
    # A WeakSet cannot be iterated while the loop thread adds to it from another thread;
    # spawning is rare, so a retry settles it.
    for _ in range(5):
        try:
            return [w for w in list(hub.workers) if not w.dead]
        except RuntimeError:
            continue
    return [w for w in list(hub.idle) if not w.dead]


def statistics(loop=None) -> Statistics:
    """Counters of greenasync for ``loop``: the running loop by default; with no loop given
    and none running, summed over every loop greenasync has served (see :class:`Statistics`).

    Reads counters the bridge keeps anyway and walks the live workers (O(workers): ~1 ms
    for 10,000), so it costs nothing until called. Safe from any thread; figures read while
    the loop runs may be a few events apart from each other.
    """
    if loop is None:
        loop = _bridge._get_running_loop()
    if loop is not None:
        hub = _bridge._hubs.get(loop)
        hubs = [hub] if hub is not None else []
        loops = {loop}
        with _stats_lock:
            try:
                entry = _loop_stalls.get(loop)
            except TypeError:
                entry = None
            stall_entries = [entry] if entry is not None else []
    else:
        hubs = list(_bridge._hubs.values())
        loops = {id(h.loop) for h in hubs}
        with _stats_lock:
            items = list(_loop_stalls.items())
        loops |= {id(k) for k, _ in items}
        stall_entries = [v for _, v in items]
    kinds = _bridge.PARK_KINDS
    parked = [0] * len(kinds)
    by_kind = [0] * len(kinds)
    calls = spawned = idle = cancels = workers = 0
    for hub in hubs:
        calls += hub.calls
        spawned += hub.spawned
        cancels += hub.cancels
        idle += len(hub.idle)
        for i, n in enumerate(list(hub.park_kinds)):
            by_kind[i] += n
        for worker in _live_workers(hub):
            workers += 1
            waiter = worker.waiter  # read once: the loop thread may clear it meanwhile
            if waiter is not None:
                parked[waiter.kind] += 1
    parks = sum(by_kind)
    return Statistics(
        loops=len(loops),
        workers=workers,
        idle_workers=idle,
        busy_workers=workers - idle,
        parked=dict(zip(kinds, parked)),
        calls=calls,
        parks=parks,
        parks_by_kind=dict(zip(kinds, by_kind)),
        switches=calls + parks - sum(parked),
        cancellations=cancels,
        spawned=spawned,
        stalls=sum(e[0] for e in stall_entries),
        longest_stall=max((e[1] for e in stall_entries), default=0.0),
    )

