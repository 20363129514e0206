"""The hybrid threading shim: greenlets and OS threads sharing one set of primitives.

Real threads and real worker greenlets throughout. Stall bounds are generous (100 ms)
against holds of 250+ ms, so a blocked loop fails clearly while a busy machine does not.
"""

import asyncio
import threading
import time

import pytest
from greenlet import getcurrent

import greenasync
from greenasync.green import threading as gt
from helpers import start_thread, wait_until

HOLD = 0.25  # how long a holder keeps a primitive
STALL = 0.1  # the longest loop stall tolerated while someone waits HOLD


def start_green(fn, *args):
    return asyncio.ensure_future(greenasync.run(fn, *args))


# Factories returning (acquire, release) over a fresh primitive that admits one holder.
def _lock_like(factory):
    def make():
        prim = factory()
        return prim, prim.acquire, prim.release

    return make


ONE_HOLDER = {
    "Lock": _lock_like(gt.Lock),
    "RLock": _lock_like(gt.RLock),
    "Condition": _lock_like(gt.Condition),
    "Semaphore": _lock_like(gt.Semaphore),
    "BoundedSemaphore": _lock_like(gt.BoundedSemaphore),
}


# --- parking and waking ------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ONE_HOLDER))
async def test_greenlet_vs_greenlet_contention_parks(ticker, kind):
    _, acquire, release = ONE_HOLDER[kind]()
    events = []

    def holder():
        acquire()
        events.append(("held", time.monotonic()))
        greenasync.sleep(HOLD)  # parks while holding
        events.append(("released", time.monotonic()))
        release()

    def contender():
        acquire()  # must park, not block the loop thread (which would deadlock)
        events.append(("got", time.monotonic()))
        release()

    async with ticker() as t:
        first = start_green(holder)
        await wait_until(lambda: events)
        await asyncio.gather(first, start_green(contender))
    assert [name for name, _ in events] == ["held", "released", "got"]
    assert events[2][1] - events[0][1] >= HOLD * 0.9
    assert t.max_gap < STALL, t.max_gap
    assert t.ticks >= 10


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore"])
async def test_greenlet_parked_on_thread_held_lock_woken_by_release(ticker, kind):
    _, acquire, release = ONE_HOLDER[kind]()
    held = threading.Event()
    stamps = {}

    def thread_holder():
        acquire()
        held.set()
        time.sleep(HOLD)
        stamps["released"] = time.monotonic()
        release()  # from a plain thread: wakes the parked greenlet through its loop

    def green_waiter():
        acquire()
        stamps["got"] = time.monotonic()
        release()

    async with ticker() as t:
        thread_done = start_thread(thread_holder)
        await wait_until(held.is_set)
        await greenasync.run(green_waiter)
        await thread_done
    assert stamps["got"] >= stamps["released"]
    assert t.max_gap < STALL, t.max_gap
    assert t.ticks >= 10


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Semaphore"])
async def test_thread_blocked_on_greenlet_held_lock(ticker, kind):
    _, acquire, release = ONE_HOLDER[kind]()
    stamps = {}

    def green_holder():
        acquire()
        stamps["held"] = time.monotonic()
        greenasync.sleep(HOLD)
        stamps["released"] = time.monotonic()
        release()  # hands the lock to the blocked thread

    def thread_waiter():
        timed_out = acquire(True, 0.05)  # (blocking, timeout) for all three kinds
        acquire()
        stamps["got"] = time.monotonic()
        release()
        return timed_out

    async with ticker() as t:
        holder = start_green(green_holder)
        await wait_until(lambda: "held" in stamps)
        timed_out = await start_thread(thread_waiter)
        await holder
    assert timed_out is False
    assert stamps["got"] >= stamps["released"]
    assert t.max_gap < STALL, t.max_gap


async def test_greenlets_of_two_loops_share_a_lock():
    # The holder is a greenlet of another event loop in another thread: its release wakes
    # our greenlet through our loop (call_soon_threadsafe), and vice versa.
    lock = gt.Lock()
    stamps = {}

    def other_green_holder():
        with lock:
            stamps["held"] = time.monotonic()
            greenasync.sleep(HOLD)
            stamps["released"] = time.monotonic()

    def other_loop():
        asyncio.run(greenasync.run(other_green_holder))

    def green_waiter():
        with lock:
            stamps["got"] = time.monotonic()

    other = start_thread(other_loop)
    await wait_until(lambda: "held" in stamps)
    await greenasync.run(green_waiter)
    await other
    assert stamps["got"] >= stamps["released"]


async def test_condition_notify_from_thread_wakes_parked_greenlet(ticker):
    # pymongo's shape: a request waits on a condition that a monitor *thread* notifies.
    cond = gt.Condition(gt.Lock())
    servers = []

    def monitor():
        time.sleep(HOLD)
        with cond:
            servers.append("primary")
            cond.notify_all()

    def select_server():
        t0 = time.monotonic()
        with cond:
            ok = cond.wait_for(lambda: servers, timeout=10)
        return ok, time.monotonic() - t0

    async with ticker() as t:
        thread_done = start_thread(monitor)
        ok, elapsed = await greenasync.run(select_server)
        await thread_done
    assert ok == ["primary"]
    assert HOLD * 0.9 <= elapsed < 5
    assert t.max_gap < STALL, t.max_gap


async def test_event_set_from_thread_wakes_parked_greenlets(ticker):
    event = gt.Event()
    results = []

    def waiter():
        results.append(event.wait(10))

    async with ticker() as t:
        greens = [start_green(waiter) for _ in range(5)]
        thread_done = start_thread(lambda: (time.sleep(HOLD), event.set()))
        await asyncio.gather(*greens, thread_done)
    assert results == [True] * 5
    assert t.max_gap < STALL, t.max_gap


async def test_timeouts_in_green_context(ticker):
    lock, rlock = gt.Lock(), gt.RLock()
    cond, event, sem = gt.Condition(), gt.Event(), gt.Semaphore(0)
    lock.acquire()  # held by this thread (the loop thread, outside any worker)
    rlock.acquire()

    def timed(fn, *args, **kwargs):
        t0 = time.monotonic()
        result = fn(*args, **kwargs)
        return result, time.monotonic() - t0

    def all_timeouts():
        out = {
            "Lock": timed(lock.acquire, timeout=0.1),
            "RLock": timed(rlock.acquire, timeout=0.1),
            "Event": timed(event.wait, 0.1),
            "Semaphore": timed(sem.acquire, timeout=0.1),
        }
        with cond:
            out["Condition"] = timed(cond.wait, 0.1)
        return out

    async with ticker() as t:
        results = await greenasync.run(all_timeouts)
    for name, (result, elapsed) in results.items():
        assert result is False, name
        assert 0.08 <= elapsed < 1.0, (name, elapsed)
    assert t.max_gap < STALL, t.max_gap
    # The timed-out waiters left the queues: a release frees the locks for anyone.
    lock.release()
    rlock.release()
    assert not lock.locked()
    assert await greenasync.run(lambda: lock.acquire(False) and rlock.acquire(False))


# --- cancellation ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
async def test_cancel_parked_acquire_leaves_lock_usable(kind):
    lock = getattr(gt, kind)()
    lock.acquire()  # held by the loop thread
    got = []

    def contender(name):
        with lock:
            got.append(name)

    first = start_green(contender, "first")
    second = start_green(contender, "second")
    await asyncio.sleep(0.05)  # both parked, "first" ahead in the FIFO
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    lock.release()
    await asyncio.wait_for(second, 5)
    assert got == ["second"]
    assert await greenasync.run(lambda: lock.acquire(False))  # free again, FIFO empty


@pytest.mark.parametrize("kind", ["Lock", "RLock"])
async def test_cancel_racing_handoff_passes_lock_on(kind):
    lock = getattr(gt, kind)()
    lock.acquire()
    got = []

    def contender(name):
        with lock:
            got.append(name)
            greenasync.sleep(0.01)

    first = start_green(contender, "first")
    second = start_green(contender, "second")
    await asyncio.sleep(0.05)
    # Same loop iteration: the cancellation is queued first, then release() hands the
    # lock to "first" and schedules its wake-up. "first" sees CancelledError while owning
    # the lock; it must pass it on to "second" instead of keeping it forever.
    first.cancel()
    lock.release()
    assert lock.locked()  # handed over to "first" already, not merely released
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 5)
    assert got == ["second"]
    assert await greenasync.run(lambda: lock.acquire(False))


async def test_cancel_racing_notify_passes_notification_on():
    cond = gt.Condition()
    woken = []

    def waiter(name):
        with cond:
            woken.append((name, cond.wait(5)))
            assert cond._is_owned()  # wait() returns holding the lock, cancelled or not

    first = start_green(waiter, "first")
    second = start_green(waiter, "second")
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    with cond:
        first.cancel()
        cond.notify(1)  # goes to "first", which is being cancelled
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 5)
    # "second" was woken by the notification "first" could not use, not by its timeout.
    assert woken == [("second", True)]
    assert time.monotonic() - t0 < 2.5
    assert not cond._waiters


async def test_cancel_racing_semaphore_release_passes_permit_on():
    sem = gt.Semaphore(0)
    got = []

    def acquirer(name):
        if sem.acquire(timeout=5):
            got.append(name)

    first = start_green(acquirer, "first")
    second = start_green(acquirer, "second")
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    first.cancel()
    sem.release()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 5)
    assert got == ["second"]
    assert time.monotonic() - t0 < 2.5


async def test_cancel_during_condition_wait_reacquires_before_raising():
    cond = gt.Condition(gt.Lock())
    after = []

    def waiter():
        with cond:
            try:
                cond.wait()
            finally:
                after.append(cond._lock.locked())

    task = start_green(waiter)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert after == [True]  # held again inside wait's caller, then released by `with`
    assert not cond._lock.locked()
    assert not cond._waiters


# --- ownership -----------------------------------------------------------------------------


async def test_rlock_is_owned_per_greenlet():
    rlock = gt.RLock()
    seen = {}

    def owner():
        rlock.acquire()
        seen["owner_in"] = True
        greenasync.sleep(0.15)
        seen["reentered"] = rlock.acquire(False)  # reentrant for its owner
        seen["count"] = rlock._recursion_count()
        rlock.release()
        rlock.release()

    def other():
        seen["other_try"] = rlock.acquire(False)  # not reentrant for another greenlet
        seen["other_is_owned"] = rlock._is_owned()
        try:
            rlock.release()
        except RuntimeError as exc:
            seen["other_release"] = str(exc)
        with rlock:  # parks until the owner fully releases
            seen["other_got_count"] = rlock._recursion_count()

    first = start_green(owner)
    await wait_until(lambda: "owner_in" in seen)
    with pytest.raises(RuntimeError, match="cannot release un-acquired lock"):
        rlock.release()  # the loop thread itself is not the owner either
    await asyncio.gather(first, start_green(other))
    assert seen == {
        "owner_in": True,
        "other_try": False,
        "other_is_owned": False,
        "other_release": "cannot release un-acquired lock",
        "reentered": True,
        "count": 2,
        "other_got_count": 1,
    }


async def test_condition_default_lock_is_owned_per_greenlet():
    cond = gt.Condition()
    seen = []

    def owner():
        with cond:
            greenasync.sleep(0.1)

    def other():
        try:
            cond.wait(0.01)
        except RuntimeError as exc:
            seen.append(str(exc))

    await asyncio.gather(start_green(owner), start_green(other))
    assert seen == ["cannot wait on un-acquired lock"]


# --- local ---------------------------------------------------------------------------------


async def test_local_isolates_concurrent_greenlets_threads_and_loop():
    loc = gt.local()
    loc.token = "loop thread"

    def job(i):
        before = getattr(loc, "token", None)
        loc.token = f"job {i}"
        greenasync.sleep(0.02)  # all jobs are parked here at once
        return before, loc.token

    def in_thread():
        before = getattr(loc, "token", None)
        loc.token = "thread"
        return before, loc.token

    results = await asyncio.gather(*(greenasync.run(job, i) for i in range(20)))
    assert results == [(None, f"job {i}") for i in range(20)]
    assert await start_thread(in_thread) == (None, "thread")
    assert loc.token == "loop thread"


async def test_local_does_not_leak_between_jobs_on_a_reused_worker():
    class Local(gt.local):
        def __init__(self, default):
            self.inits = getattr(self, "inits", 0) + 1
            self.value = default

    loc = Local("fresh")

    def first_job():
        loc.value = "first job's secret"
        return getcurrent(), loc.value, loc.inits

    def second_job():
        return getcurrent(), loc.value, loc.inits, sorted(loc.__dict__)

    worker1, value1, inits1 = await greenasync.run(first_job)
    worker2, value2, inits2, attrs = await greenasync.run(second_job)
    assert worker1 is worker2  # same worker greenlet, reused...
    assert (value1, inits1) == ("first job's secret", 1)
    assert (value2, inits2) == ("fresh", 1)  # ...but a fresh local, __init__ re-run
    assert attrs == ["inits", "value"]
    assert loc.value == "fresh"  # the loop thread's own copy is untouched


async def test_local_keeps_redis_lock_tokens_apart():
    # redis-py's Lock keeps its token in threading.local(); patching gives it ours. Two
    # greenlets sharing one Lock object must not see (and so release) each other's token.
    fakeredis = pytest.importorskip("fakeredis")
    import redis.lock

    lock = redis.lock.Lock(fakeredis.FakeRedis(), "resource", timeout=30, thread_local=True)
    lock.local = gt.local()  # what greenasync.patch("redis") arranges
    seen = {}

    def first():
        assert lock.acquire(blocking=False)
        seen["first_token"] = lock.local.token
        greenasync.sleep(0.05)  # "second" runs meanwhile
        seen["first_token_after"] = lock.local.token
        seen["first_owned"] = lock.owned()
        lock.redis.delete("resource")  # Lock.release() runs Lua, which fakeredis lacks

    def second():
        seen["second_acquired"] = lock.acquire(blocking=False)
        seen["second_token"] = getattr(lock.local, "token", None)

    await asyncio.gather(start_green(first), start_green(second))
    assert seen["first_token"] is not None
    assert seen["first_token_after"] == seen["first_token"]
    assert seen["first_owned"] is True
    assert (seen["second_acquired"], seen["second_token"]) == (False, None)
    # A later job on a reused worker starts without a token, then gets its own.
    later = await greenasync.run(
        lambda: (getattr(lock.local, "token", None), lock.acquire(blocking=False), lock.local.token)
    )
    assert later[:2] == (None, True)
    assert later[2] not in (None, seen["first_token"])


# --- everything at once ----------------------------------------------------------------------


async def test_mixed_threads_and_greenlets_stress():
    cond = gt.Condition(gt.Lock())
    state = {"count": 0}
    n_threads, per_thread = 4, 40
    n_greens, per_green = 200, 3
    total = n_threads * per_thread + n_greens * per_green

    def increment(pause):
        with cond:
            value = state["count"]
            pause()  # let others run while we hold the lock: lost updates would show
            state["count"] = value + 1
            cond.notify_all()

    def green_worker():
        for _ in range(per_green):
            increment(lambda: greenasync.sleep(0))

    def thread_worker():
        for _ in range(per_thread):
            increment(lambda: time.sleep(0.0001))

    def wait_total():
        with cond:
            return cond.wait_for(lambda: state["count"] == total, timeout=30)

    t0 = time.monotonic()
    watchers = [start_green(wait_total) for _ in range(3)] + [start_thread(wait_total)]
    await asyncio.sleep(0.01)
    jobs = [start_thread(thread_worker) for _ in range(n_threads)]
    jobs += [start_green(green_worker) for _ in range(n_greens)]
    await asyncio.wait_for(asyncio.gather(*jobs), 40)
    assert await asyncio.wait_for(asyncio.gather(*watchers), 10) == [True] * 4
    assert state["count"] == total
    assert not cond._lock.locked() and not cond._waiters
    assert time.monotonic() - t0 < 30


# --- the loop-thread deadlock guard ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["Lock", "RLock", "Condition"])
async def test_loop_thread_blocking_on_greenlet_held_lock_raises(kind):
    prim = getattr(gt, kind)()
    held = []

    def holder():
        with prim:
            held.append(True)
            greenasync.sleep(0.1)

    task = start_green(holder)
    await wait_until(lambda: held)
    # Sync calls from the coroutine: the loop thread, outside any worker greenlet.
    with pytest.raises(RuntimeError, match="would deadlock the event loop's thread"):
        prim.acquire()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="would deadlock"):
        prim.acquire(timeout=5)
    assert time.monotonic() - t0 < 1  # raised at once, not after the timeout
    assert prim.acquire(False) is False  # a non-blocking try is harmless
    await task
    assert prim.acquire() is True  # once the greenlet released it, all is normal
    prim.release()


async def test_loop_thread_queued_behind_a_greenlet_raises():
    lock = gt.Lock()
    may_release = threading.Event()

    def thread_holder():
        with lock:
            may_release.wait(10)

    holder = start_thread(thread_holder)
    await wait_until(lock.locked)
    green = start_green(lock.acquire)  # parks in the FIFO, first in line
    await asyncio.sleep(0.02)
    # The thread's release would hand the lock to that greenlet, which cannot run while
    # this thread blocks behind it in the queue.
    with pytest.raises(RuntimeError, match="would deadlock"):
        lock.acquire()
    may_release.set()
    assert await asyncio.wait_for(green, 5) is True
    await holder
    lock.release()


# --- module shape ------------------------------------------------------------------------------


def test_shim_overrides_and_passes_everything_else_through():
    assert gt.__greenasync_stdlib__ is threading
    for name in gt.__greenasync_overrides__:
        assert getattr(gt, name) is not getattr(threading, name), name
    for name in ("Thread", "Timer", "get_ident", "current_thread", "Barrier", "TIMEOUT_MAX"):
        assert getattr(gt, name) is getattr(threading, name)
    assert set(dir(threading)) <= set(dir(gt))
    # No private helper of the shim shadows a different stdlib object of the same name.
    for name, value in vars(gt).items():
        if name in vars(threading) and not name.startswith("__"):
            if name not in gt.__greenasync_overrides__:
                assert value is getattr(threading, name), name


def test_hybrid_classes_are_stdlib_subclasses_where_the_stdlib_allows():
    assert isinstance(gt.Condition(), threading.Condition)
    assert isinstance(gt.Event(), threading.Event)
    assert isinstance(gt.Semaphore(), threading.Semaphore)
    bounded = gt.BoundedSemaphore(2)
    assert isinstance(bounded, threading.BoundedSemaphore)
    assert isinstance(bounded, gt.Semaphore)
    with pytest.raises(ValueError, match="released too many times"):
        bounded.release()


# --- internal locks are not cancellation points ------------------------------------------------


@pytest.mark.parametrize("kind", ["Event.set", "Semaphore.release"])
async def test_cancel_while_queued_on_an_internal_lock_is_postponed(kind):
    prim = gt.Event() if kind == "Event.set" else gt.Semaphore(0)
    operation = prim.set if kind == "Event.set" else prim.release
    thread_has_it, let_go = threading.Event(), threading.Event()
    after = []

    def thread_holder():
        with prim._cond:  # the internal lock that set()/release() must take
            thread_has_it.set()
            let_go.wait(10)

    def job():
        operation()  # parks: the thread holds the internal lock
        after.append("completed")
        try:
            greenasync.sleep(5)  # the postponed cancellation surfaces at the next park
        except asyncio.CancelledError:
            after.append("cancelled at the next park")
            raise

    holder = start_thread(thread_holder)
    await wait_until(thread_has_it.is_set)
    task = start_green(job)
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task  # the awaiting task is cancelled at once...
    assert after == []
    let_go.set()
    await holder
    await wait_until(lambda: len(after) == 2, timeout=2)
    # ...while the greenlet finished the operation instead of abandoning it half-way.
    assert after == ["completed", "cancelled at the next park"]
    assert prim.is_set() if kind == "Event.set" else prim.acquire(False)
