"""greenasync.shutdown() and the end of workers whose loop closed without cancelling them.

A worker parked for a call is resumed only by its loop. ``asyncio.run()`` cancels pending
tasks at exit, but ``loop.close()``/``IOLoop.close()`` do not: their parked workers would stay
suspended forever, sockets open. These tests count the process's fds (``/proc/self/fd``)
before and after, and check that the jobs' own cleanup (a ``finally`` closing the socket, as
redis-py's ``except BaseException: disconnect()`` does) ran.
"""

import asyncio
import threading
import time

import pytest

import greenasync
from greenasync import _bridge
from greenasync.green import socket as green_socket

from ._support import describe_fds, open_fds

CALLS = 100


class Jobs:
    """Calls that park reading a socket and close it in ``finally`` (a library's cleanup)."""

    def __init__(self, n):
        self.pairs = [green_socket.socketpair() for _ in range(n)]
        self.cleaned = []
        self.tasks = []

    def job(self, i):
        sock = self.pairs[i][0]
        try:
            return sock.recv(1)
        finally:
            self.cleaned.append(i)
            sock.close()

    def start(self):
        self.tasks = [asyncio.ensure_future(greenasync.run(self.job, i))
                      for i in range(len(self.pairs))]

    def close_peers(self):
        # Only the peers: each call's own socket is closed by its cleanup, or leaks.
        for _, b in self.pairs:
            b.close()

    def forget_tasks(self):
        # Tasks of a loop closed without cancelling them stay pending forever; asyncio logs
        # "Task was destroyed but it is pending!" when they are collected: the app's doing
        # (it closed the loop), not what these tests look at.
        for task in self.tasks:
            task._log_destroy_pending = False
        self.tasks = []


def new_loop(kind):
    """(asyncio loop, run(coro) on it, close it the way that kind is closed)."""
    if kind == "tornado":
        from tornado.ioloop import IOLoop

        io_loop = IOLoop(make_current=False)
        return (io_loop.asyncio_loop, lambda fn: io_loop.run_sync(fn),
                lambda: io_loop.close(all_fds=False))
    if kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    return loop, lambda fn: loop.run_until_complete(fn()), loop.close


async def parked_count():
    return sum(greenasync.statistics().parked.values())


async def park_all(jobs):
    """Start the jobs' calls and wait until all of them are parked."""
    jobs.start()
    while await parked_count() < CALLS:
        await asyncio.sleep(0.001)


async def test_shutdown_ends_parked_calls_and_their_sockets_close():
    before = open_fds()
    jobs = Jobs(CALLS)
    await park_all(jobs)
    ended = greenasync.shutdown()
    results = await asyncio.gather(*jobs.tasks, return_exceptions=True)
    stats = greenasync.statistics()
    for _, b in jobs.pairs:
        b.close()
    hub = _bridge._hubs[asyncio.get_running_loop()]
    leaked = open_fds() - before - {hub.poller.fileno()}  # the loop's own epoll set stays
    figures = (f"ended={ended} cleaned={len(jobs.cleaned)} results="
               f"{sorted({type(r).__name__ for r in results})} workers={stats.workers} "
               f"parked={stats.parked} leaked fds: {describe_fds(leaked)}")
    assert ended == CALLS, figures
    assert sorted(jobs.cleaned) == list(range(CALLS)), figures
    assert all(isinstance(r, asyncio.CancelledError) for r in results), figures
    assert stats.workers == 0 and sum(stats.parked.values()) == 0, figures
    assert not leaked, figures
    # The loop runs on: later calls get new workers.
    assert await greenasync.run(lambda: "again") == "again"
    assert greenasync.statistics().workers == 1


def test_shutdown_after_the_loop_was_closed_without_cancelling(loop_kind):
    before = open_fds()
    loop, run, close = new_loop(loop_kind)
    jobs = Jobs(CALLS)

    run(lambda: park_all(jobs))
    close()  # IOLoop.close()/loop.close(): nothing cancels the calls
    still_open = len(open_fds() - before)
    ended = greenasync.shutdown(loop)
    jobs.close_peers()
    jobs.forget_tasks()
    leaked = open_fds() - before
    figures = (f"{loop_kind}: fds open after close() {still_open}, ended={ended}, "
               f"cleaned={len(jobs.cleaned)}, leaked fds: {describe_fds(leaked)}")
    assert still_open >= 2 * CALLS, figures  # the calls' sockets and their peers
    assert ended == CALLS, figures
    assert sorted(jobs.cleaned) == list(range(CALLS)), figures
    assert not leaked, figures  # the hub's epoll set went as well
    assert loop not in _bridge._hubs, figures
    assert greenasync.shutdown(loop) == 0


def test_a_new_loop_ends_the_parked_workers_of_a_closed_one(loop_kind):
    before = open_fds()
    _, run, close = new_loop(loop_kind)
    jobs = Jobs(CALLS)

    run(lambda: park_all(jobs))
    close()
    cleaned_at_close = len(jobs.cleaned)

    async def next_app():
        # The first call on a new loop retires the hubs of closed loops; their parked
        # workers are ended from this loop's callbacks, in batches.
        assert await greenasync.run(lambda: 1) == 1
        for _ in range(5):
            await asyncio.sleep(0)

    new, run_new, close_new = new_loop(loop_kind)
    run_new(next_app)
    close_new()
    jobs.close_peers()
    jobs.forget_tasks()
    greenasync.shutdown(new)  # the new loop's idle worker and epoll set
    if loop_kind == "uvloop":
        import gc

        gc.collect()  # a closed uvloop loop's self-pipe goes with the loop object
    leaked = open_fds() - before
    figures = (f"{loop_kind}: cleaned at close {cleaned_at_close}, after the next loop "
               f"{len(jobs.cleaned)}; leaked fds: {describe_fds(leaked)}")
    assert cleaned_at_close == 0, figures
    assert sorted(jobs.cleaned) == list(range(CALLS)), figures
    assert not leaked, figures


async def test_cleanup_that_parks_again_or_swallows_the_exit_is_ended_too():
    a, b = green_socket.socketpair()
    c, d = green_socket.socketpair()
    seen = []

    def parks_in_finally():
        try:
            a.recv(1)
        finally:
            seen.append("finally")
            greenasync.sleep(30)  # a cleanup that waits: thrown into again

    def swallows():
        try:
            c.recv(1)
        except BaseException as exc:  # a library that catches everything
            seen.append(type(exc).__name__)
            return "swallowed"

    with a, b, c, d:
        tasks = [asyncio.ensure_future(greenasync.run(parks_in_finally)),
                 asyncio.ensure_future(greenasync.run(swallows))]
        while await parked_count() < 2:
            await asyncio.sleep(0.001)
        ended = greenasync.shutdown()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        stats = greenasync.statistics()
    figures = f"ended={ended} seen={seen} results={results!r} workers={stats.workers}"
    assert ended == 2, figures
    assert sorted(seen) == ["GreenletExit", "finally"], figures
    # The swallowing job finished normally: its caller gets its value.
    assert isinstance(results[0], asyncio.CancelledError) and results[1] == "swallowed", figures
    assert stats.workers == 0, figures


async def test_shutdown_misuse_gives_clear_errors():
    with pytest.raises(RuntimeError, match="inside a greenasync call"):
        await greenasync.run(greenasync.shutdown)

    # A loop of another thread: its greenlets can only be switched to from there.
    ready, done = threading.Event(), threading.Event()
    box = {}

    def other_thread():
        async def main():
            await greenasync.run(lambda: None)
            box["loop"] = asyncio.get_running_loop()
            ready.set()
            while not done.is_set():
                await asyncio.sleep(0.005)

        asyncio.run(main())

    thread = threading.Thread(target=other_thread)
    thread.start()
    try:
        assert ready.wait(10)
        with pytest.raises(RuntimeError, match="another thread"):
            greenasync.shutdown(box["loop"])
    finally:
        done.set()
        thread.join(10)
    # A loop greenasync never served: nothing to end.
    fresh = asyncio.new_event_loop()
    try:
        assert greenasync.shutdown(fresh) == 0
    finally:
        fresh.close()


def test_shutdown_without_a_running_loop_covers_every_loop_of_this_thread():
    before = open_fds()
    loops = []
    all_jobs = []
    for _ in range(2):
        loop = asyncio.new_event_loop()
        jobs = Jobs(10)

        async def start(jobs=jobs):
            jobs.start()
            while sum(greenasync.statistics().parked.values()) < 10:
                await asyncio.sleep(0.001)

        loop.run_until_complete(start())
        loop.stop()  # stopped, not closed: as after KeyboardInterrupt left run_forever()
        loops.append(loop)
        all_jobs.append(jobs)
    ended = greenasync.shutdown()
    for loop in loops:
        # The ended calls' tasks were told (their futures cancelled): let them finish.
        for jobs in all_jobs:
            for task in jobs.tasks:
                if task.get_loop() is loop:
                    with pytest.raises(asyncio.CancelledError):
                        loop.run_until_complete(task)
        loop.close()
    for jobs in all_jobs:
        jobs.close_peers()
    greenasync.shutdown()  # the closed loops' bookkeeping (epoll sets)
    leaked = open_fds() - before
    figures = f"ended={ended}; leaked fds: {describe_fds(leaked)}"
    assert ended == 20, figures
    assert all(sorted(jobs.cleaned) == list(range(10)) for jobs in all_jobs), figures
    assert not leaked, figures
