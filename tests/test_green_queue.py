"""The hybrid queue shim: stdlib queues whose blocking calls park greenlets.

Producers and consumers mix worker greenlets and real OS threads; a blocked greenlet must
leave the loop running (ticker) and be woken by a put/get/task_done from either side.
"""

import asyncio
import queue
import threading
import time

import pytest

import greenasync
from greenasync.green import queue as gq
from helpers import start_thread, wait_until

HOLD = 0.25
STALL = 0.1


def start_green(fn, *args):
    return asyncio.ensure_future(greenasync.run(fn, *args))


async def test_put_get_between_greenlets(ticker):
    q = gq.Queue()

    def consumer():
        return [q.get() for _ in range(3)]  # parks on the first get: nothing queued yet

    def producer():
        for item in ("a", "b", "c"):
            greenasync.sleep(HOLD / 3)
            q.put(item)

    async with ticker() as t:
        got, _ = await asyncio.gather(start_green(consumer), start_green(producer))
    assert got == ["a", "b", "c"]
    assert t.max_gap < STALL, t.max_gap
    assert t.ticks >= 10


async def test_thread_put_wakes_parked_greenlet_get(ticker):
    q = gq.Queue()
    stamps = {}

    def thread_producer():
        time.sleep(HOLD)
        stamps["put"] = time.monotonic()
        q.put("from thread")

    def green_consumer():
        item = q.get(timeout=10)
        stamps["got"] = time.monotonic()
        return item

    async with ticker() as t:
        producer = start_thread(thread_producer)
        assert await greenasync.run(green_consumer) == "from thread"
        await producer
    assert stamps["got"] >= stamps["put"]
    assert t.max_gap < STALL, t.max_gap


async def test_greenlet_put_wakes_blocked_thread_get(ticker):
    q = gq.Queue()

    def green_producer():
        greenasync.sleep(HOLD)
        q.put("from greenlet")

    async with ticker() as t:
        consumer = start_thread(lambda: q.get(timeout=10))
        await greenasync.run(green_producer)
        assert await consumer == "from greenlet"
    assert t.max_gap < STALL, t.max_gap


async def test_get_timeout_parks_then_raises_empty(ticker):
    q = gq.Queue()

    def timed_get():
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):  # the stdlib's exception class
            q.get(timeout=0.1)
        return time.monotonic() - t0

    async with ticker() as t:
        elapsed = await greenasync.run(timed_get)
    assert 0.08 <= elapsed < 1.0
    assert t.max_gap < STALL, t.max_gap
    with pytest.raises(queue.Empty):
        q.get_nowait()


async def test_bounded_put_parks_until_a_thread_gets(ticker):
    q = gq.Queue(maxsize=1)
    q.put("first")

    def green_put():
        t0 = time.monotonic()
        with pytest.raises(queue.Full):
            q.put("refused", timeout=0.1)
        refused_after = time.monotonic() - t0
        q.put("second")  # parks until the thread below takes "first"
        return refused_after

    async with ticker() as t:
        putter = start_green(green_put)
        consumer = start_thread(lambda: (time.sleep(HOLD), q.get(), q.get(timeout=10))[1:])
        refused_after = await putter
        assert await consumer == ("first", "second")
    assert 0.08 <= refused_after < 1.0
    assert t.max_gap < STALL, t.max_gap


async def test_task_done_and_join_across_threads_and_greenlets(ticker):
    q = gq.Queue()
    done = []
    n_items = 40
    for i in range(n_items):
        q.put(i)

    def green_worker():
        while True:
            try:
                item = q.get(timeout=0.05)
            except queue.Empty:
                return
            greenasync.sleep(0.001)
            done.append(item)
            q.task_done()

    def thread_worker():
        while True:
            try:
                item = q.get(timeout=0.05)
            except queue.Empty:
                return
            time.sleep(0.001)
            done.append(item)
            q.task_done()

    def joiner():
        q.join()  # parks until every item was marked done, by greenlets or threads
        return len(done)

    async with ticker() as t:
        join_task = start_green(joiner)
        workers = [start_green(green_worker) for _ in range(2)]
        workers += [start_thread(thread_worker) for _ in range(2)]
        assert await asyncio.wait_for(join_task, 10) == n_items
        await asyncio.gather(*workers)
    assert sorted(done) == list(range(n_items))
    assert q.unfinished_tasks == 0
    assert t.max_gap < STALL, t.max_gap


@pytest.mark.parametrize(
    "cls, expected",
    [(gq.Queue, [3, 1, 2]), (gq.LifoQueue, [2, 1, 3]), (gq.PriorityQueue, [1, 2, 3])],
)
async def test_queue_kinds_keep_their_order_and_park(cls, expected):
    q = cls()
    ready = gq.SimpleQueue()

    def consumer():
        first = q.get(timeout=10)  # parks: empty until the thread puts
        ready.get(timeout=10)  # parks until the thread has queued three more
        return first, [q.get_nowait() for _ in range(3)]

    def producer():
        time.sleep(0.05)
        q.put(0)
        while q.qsize():  # the parked consumer took it
            time.sleep(0.002)
        for item in (3, 1, 2):
            q.put(item)
        ready.put(True)

    task = start_green(consumer)
    await start_thread(producer)
    assert await asyncio.wait_for(task, 10) == (0, expected)


async def test_simple_queue_is_hybrid(ticker):
    q = gq.SimpleQueue()

    def green_get():
        t0 = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.1)
        return time.monotonic() - t0, q.get(timeout=10)

    async with ticker() as t:
        task = start_green(green_get)
        await start_thread(lambda: (time.sleep(HOLD), q.put("late")))
        elapsed, item = await task
    assert 0.08 <= elapsed < 1.0
    assert item == "late"
    assert t.max_gap < STALL, t.max_gap


async def test_cancelled_get_does_not_swallow_an_item():
    q = gq.Queue()
    got = []

    def getter(name):
        got.append((name, q.get(timeout=5)))

    first = start_green(getter, "first")
    second = start_green(getter, "second")
    await asyncio.sleep(0.05)
    first.cancel()
    q.put("item")  # its notification goes to "first", which is being cancelled
    with pytest.raises(asyncio.CancelledError):
        await first
    t0 = time.monotonic()
    await asyncio.wait_for(second, 5)
    assert got == [("second", "item")]
    assert time.monotonic() - t0 < 2.5  # woken by the passed-on notification


async def test_cancel_while_queued_on_the_mutex_keeps_task_count():
    # A CancelledError inside task_done() would leave unfinished_tasks too high and
    # join() hanging forever; waiting for the queue's mutex is not a cancellation point.
    q = gq.Queue()
    q.put("job")
    q.get()
    thread_has_it, let_go = threading.Event(), threading.Event()
    after = []

    def thread_holder():
        with q.mutex:
            thread_has_it.set()
            let_go.wait(10)

    def finish():
        q.task_done()  # parks: the thread holds the mutex
        after.append("task_done")
        greenasync.sleep(5)  # the postponed cancellation is raised here, at once
        after.append("slept")  # never reached

    holder = start_thread(thread_holder)
    await wait_until(thread_has_it.is_set)
    task = start_green(finish)
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    let_go.set()
    await holder
    await wait_until(lambda: after, timeout=2)
    assert q.unfinished_tasks == 0
    await asyncio.wait_for(greenasync.run(q.join), 2)  # returns: nothing left unfinished
    await asyncio.sleep(0.05)
    assert after == ["task_done"]


def test_outside_green_context_is_the_stdlib_queue():
    q = gq.Queue()
    results = []
    consumer = threading.Thread(target=lambda: results.append(q.get(timeout=5)))
    consumer.start()
    time.sleep(0.05)
    q.put("x")
    consumer.join(5)
    assert results == ["x"]
    t0 = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    assert time.monotonic() - t0 >= 0.04


def test_shim_shape():
    assert gq.__greenasync_stdlib__ is queue
    assert gq.Empty is queue.Empty and gq.Full is queue.Full
    assert set(dir(queue)) <= set(dir(gq))
    for name in gq.__greenasync_overrides__:
        assert getattr(gq, name) is not getattr(queue, name), name
    assert isinstance(gq.Queue(), queue.Queue)
    assert isinstance(gq.LifoQueue(), queue.LifoQueue)
    assert isinstance(gq.PriorityQueue(), queue.PriorityQueue)
    assert isinstance(gq.LifoQueue(), gq.Queue)
    sq = gq.SimpleQueue()
    sq.put(1)
    assert (sq.qsize(), sq.get_nowait(), sq.empty()) == (1, 1, True)
