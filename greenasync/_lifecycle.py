"""Lifecycle: ending worker greenlets (``shutdown()``, closed loops) and fork safety.

A worker parked for a call is resumed only by its loop (readiness, a deadline, a wake-up,
the awaiting task's cancellation). ``asyncio.run()`` cancels the tasks still pending when its
main coroutine ends, which throws ``CancelledError`` into their greenlets; but a worker can
outlive its loop's usefulness without that: ``loop.close()`` or Tornado's
``IOLoop.close()`` without cancelling, a loop left by ``KeyboardInterrupt`` that is never
run again, a worker still parked while unwinding a cancellation nobody waits for. It would
stay suspended forever with its sockets open. Three things end such workers:

* ``greenasync.shutdown()``: throws ``GreenletExit`` into every parked worker of the loop
  (the running one, or with none running every loop of this thread) and ends the idle ones.
  ``GreenletExit`` is raised at the wait, like a cancellation: ``finally`` blocks and the
  library's ``except BaseException`` cleanup run (redis-py, pymongo close the half-used
  connection), the awaiting task gets ``CancelledError``. Plain function, not a coroutine:
  it must also work after the loop stopped or closed, from the loop's thread.
* When a new loop's hub is made, the hubs of closed loops are retired
  (``_bridge._retire``): their idle workers were ended already; their parked ones now get
  the same ``GreenletExit``, from callbacks of the new loop (``retire_parked``). Only in the
  loop's own thread and root greenlet: a worker of another thread cannot be switched to.
* At interpreter exit greenlet itself kills nothing: a suspended greenlet collected during
  finalization is dropped without running (greenlet's ``murder_in_place``), and the kernel
  closes its sockets. No greenasync code runs at exit, so Ctrl-C ends a process with
  10,000 calls in flight promptly and with a plain ``KeyboardInterrupt`` traceback.

Fork. A child process inherits every hub: the loop bindings, the idle and parked workers, and
each hub's private epoll set, which after ``fork()`` is *the same kernel object* as the
parent's. Left as is, a child that closes an inherited socket (a library tidying up, a
garbage-collected client) would take its fd out of the parent's epoll set through the
socket shim's ``forget_fd``, and the parent's call parked on it would never wake; a child
whose inherited workers were collected or ended would run their cleanup (``shutdown()`` of a
socket, a goodbye message) on connections the parent still uses. So in the child the hubs
are dropped (a fresh start: new loops get new hubs and epoll sets, ``statistics()`` starts
at zero) and everything inherited is kept referenced forever in ``_graveyard``: never run,
never collected (collecting a suspended greenlet would throw ``GreenletExit`` into it).
"""

import logging
import os
import threading

from greenlet import GreenletExit, getcurrent

from . import _bridge, _watchdog

__all__ = ["shutdown"]

log = logging.getLogger("greenasync")

# Unwinding code that parks again (a lock in a ``finally``) is thrown into again, this often.
_THROWS = 3
_BATCH = 64  # workers ended per loop callback when a closed loop's hub is retired

# What a forked child inherited from its parent: hubs and their workers. Kept referenced so
# that nothing of it is ever run or collected in the child (see the module docstring).
_graveyard = []


def shutdown(loop=None):
    """End greenasync's worker greenlets of ``loop``; return the number of calls ended.

    Every call in flight (a worker parked at a wait) gets ``GreenletExit`` thrown in at its
    wait, as a cancellation would be: its ``finally`` blocks and the library's own cleanup
    run, so its sockets close, and the coroutine awaiting it gets ``CancelledError`` (if the
    loop still runs; a closed loop can run nothing more). Idle pooled workers are ended too;
    a running loop makes new ones for later calls.

    ``loop``: the running loop by default; with none running, every loop of this thread
    greenasync has served (stopped ones, say after ``KeyboardInterrupt`` left
    ``IOLoop.start()``, and closed ones). A closed loop's bookkeeping is dropped as well.

    A plain function: call it from a coroutine on the loop, or from sync code on the loop's
    thread after the loop stopped or closed (``finally:`` around ``IOLoop.start()``, after
    ``IOLoop.close()``). Raises ``RuntimeError`` inside a greenasync call, or for a loop of
    another thread (its greenlets can only be switched to from that thread).
    """
    here = getcurrent()
    if type(here) is _bridge._Worker:
        raise RuntimeError(
            "greenasync.shutdown() was called inside a greenasync call (a worker greenlet); "
            "call it from the event loop's own code: a coroutine, or sync code after the loop "
            "stopped"
        )
    ident = _bridge._get_ident()
    if loop is None:
        loop = _bridge._get_running_loop()
    if loop is not None:
        hub = _bridge._hubs.get(loop)
        if hub is None:
            return 0
        if hub.thread_id != ident or hub.root is not here:
            raise RuntimeError(
                f"greenasync.shutdown({loop!r}): that loop runs in another thread or "
                "greenlet; call shutdown() there (its greenlets can be ended only from it)"
            )
        hubs = [hub]
    else:
        hubs = [hub for hub in list(_bridge._hubs.values())
                if hub.thread_id == ident and hub.root is here]
    ended = 0
    for hub in hubs:
        ended += _end_workers(hub)
        if hub.loop.is_closed():
            _forget(hub)
    return ended


def _parked(hub):
    # Live workers of the hub that are suspended at a wait. (A worker resumed by a wake-up
    # still queued keeps its waiter until the resumption runs: parked as well.)
    return [w for w in list(hub.workers) if w.waiter is not None and not w.dead]


def _detach(worker):
    # From now on no task resumes the job: its waits are resumed by their wake-ups directly.
    # A run() still awaiting the wait is woken through the wait's future; at its next step
    # it reports how the job ended (CancelledError for GreenletExit, or while it still
    # unwinds; its value if it swallowed the exit and returned). On a closed loop a future
    # takes no callbacks, and nobody awaits anyway.
    job = worker.job
    if job is None or job.detached:
        return
    job.detached = True
    waiter = worker.waiter
    fut = waiter.future if waiter is not None else None
    if fut is not None and not fut.done() and not worker.hub.loop.is_closed():
        fut.set_result(None)


def _end_workers(hub):
    ended = 0
    for worker in _parked(hub):
        _detach(worker)
        if _end(hub, worker):
            ended += 1
    idle, hub.idle = hub.idle, []
    for worker in idle:
        _end(hub, worker)
    return ended


def _end(hub, worker):
    """Throw GreenletExit into ``worker`` (in the loop's root greenlet) until it has ended.
    True if it did. A worker that swallows it and finishes its job goes back to the idle
    pool first, and is taken out of it and ended there."""
    for _ in range(_THROWS):
        if worker.dead:
            return True
        if worker.waiter is None and worker in hub.idle:  # (a parked one is not idle)
            hub.idle.remove(worker)
        try:
            worker.throw(GreenletExit)
        except Exception:
            # An error escaped the worker's loop (a bug): the greenlet has ended with it.
            log.warning("greenasync: a worker greenlet raised while it was being ended",
                        exc_info=True)
    if not worker.dead:
        log.warning("greenasync: a worker greenlet kept waiting after %d GreenletExit; "
                    "left suspended", _THROWS)
        return False
    return True


def _forget(hub):
    if _bridge._hubs.get(hub.loop) is hub:
        del _bridge._hubs[hub.loop]
    if _bridge._last_hub is hub:
        _bridge._last_hub = None
    if hub.poller is not None:
        hub.poller.close()


def retire_parked(hub, loop):
    """End the parked workers of ``hub``, whose loop is closed, from callbacks of ``loop``
    (the new loop, running in this thread); ``_bridge._retire`` calls it."""
    if hub.thread_id != _bridge._get_ident():
        return  # another thread's greenlets: they end with their thread
    parked = _parked(hub)
    if not parked:
        return
    for worker in parked:
        _detach(worker)  # the hub's loop is closed

    def end(batch):
        if hub.root is not getcurrent():
            return  # the old loop ran in another greenlet; a re-park would switch there
        for worker in batch:
            _end(hub, worker)
        # Whatever went back to the idle pool while unwinding (a job that swallowed
        # GreenletExit) is ended as well.
        idle, hub.idle = hub.idle, []
        for worker in idle:
            _end(hub, worker)

    for i in range(0, len(parked), _BATCH):
        loop.call_soon(end, parked[i:i + _BATCH])


def _after_fork_in_child():
    # Runs in the child right after os.fork(), before any other Python code (see the module
    # docstring). Nothing inherited is switched to, closed or unregistered here.
    hubs = list(_bridge._hubs.values())
    last = _bridge._last_hub
    if last is not None and all(hub is not last for hub in hubs):
        hubs.append(last)
    for hub in hubs:
        _graveyard.append(hub)  # keeps its loop, epoll set and idle workers referenced
        _graveyard.extend(w for w in list(hub.workers) if not w.dead)
    _bridge._hubs.clear()
    _bridge._last_hub = None
    # The watchdog's figures are per loop too; a lock a sampler thread (gone in the child)
    # held at the fork would never be released.
    _watchdog._stats_lock = threading.Lock()
    _watchdog._loop_stalls.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
