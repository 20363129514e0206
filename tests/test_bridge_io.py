"""The bridge's readiness set (one private epoll per loop) and deadline heap.

What they replace and why is in greenasync/_bridge.py; these tests pin the hazards: fd
numbers reused after a close in another thread or by garbage collection, level semantics of
the public waits on a set that is edge-triggered, a heap of stale deadlines, and a burst of
calls started at once.
"""

import asyncio
import gc
import os
import threading
import time

import pytest

import greenasync
from greenasync import _bridge
from greenasync.green import socket as green_socket
from greenasync.green import threading as green_threading


def hub():
    return _bridge._hub_for(asyncio.get_running_loop())


def recv_one(sock):
    return sock.recv(1)


async def test_socket_waits_use_the_private_set_not_the_loop():
    a, b = green_socket.socketpair()
    with a, b:
        loop = asyncio.get_running_loop()
        for _ in range(3):
            loop.call_later(0.01, b.send, b"x")
            assert await greenasync.run(recv_one, a) == b"x"
        # The fd joined the hub's epoll set once and stays there between waits (the socket
        # is marked as registered); the loop itself only ever sees the epoll fd.
        assert a._epoll_id == hub().epoll_id
        assert not loop.remove_reader(a.fileno())
        fd = a.fileno()
        keep = os.dup(fd)  # the file outlives a.close(), as after a fork or a dup
        try:
            a.close()
            b.send(b"z")
            # Left in the set, the file would still report through the closed fd number.
            assert fd not in dict(hub().poller.poll(0))
        finally:
            os.close(keep)


async def test_fd_closed_in_another_thread_can_be_reused_by_the_loop():
    # pymongo's monitor thread closes pooled sockets that greenlets used. Had the fd been
    # registered with the loop, the loop would keep a stale entry for the fd number, and the
    # next socket given that number and watched by the loop itself would never be seen.
    a, b = green_socket.socketpair()
    loop = asyncio.get_running_loop()
    loop.call_later(0.01, b.send, b"x")
    assert await greenasync.run(recv_one, a) == b"x"
    fd = a.fileno()
    closer = threading.Thread(target=a.close)
    closer.start()
    closer.join()
    b.close()
    import socket

    c, d = socket.socketpair()  # plain sockets, watched by the loop's own machinery
    with c, d:
        assert fd in (c.fileno(), d.fileno()), "the fd number was not reused; test is moot"
        reader = c if c.fileno() == fd else d
        writer = d if reader is c else c
        reader.setblocking(False)
        loop.call_later(0.01, writer.send, b"y")
        assert await asyncio.wait_for(loop.sock_recv(reader, 1), 2) == b"y"


async def test_fd_of_a_collected_socket_is_registered_again_for_its_next_owner():
    loop = asyncio.get_running_loop()
    a, b = green_socket.socketpair()
    loop.call_later(0.01, b.send, b"x")
    assert await greenasync.run(recv_one, a) == b"x"
    fd = a.fileno()
    # Dropped without close(): the C finalizer closes the fd behind the shim's back.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del a
        gc.collect()
    c, d = green_socket.socketpair()
    with b, c, d:
        reader = c if c.fileno() == fd else d
        writer = d if reader is c else c
        assert reader.fileno() == fd, "the fd number was not reused; test is moot"
        loop.call_later(0.01, writer.send, b"y")
        assert await asyncio.wait_for(greenasync.run(recv_one, reader), 2) == b"y"
        assert reader._epoll_id == hub().epoll_id


async def test_public_wait_readable_sees_data_that_arrived_before_the_wait():
    # The set is edge-triggered; a bare fd's waiter may not have drained the fd first, so a
    # wait on data already there must return at once (select() semantics), even for an fd
    # the set has seen before.
    a, b = green_socket.socketpair()
    with a, b:
        b.send(b"xy")

        def wait_twice():
            first = greenasync.wait_readable(a.fileno(), 1)
            a.recv(1)  # one byte left: still readable, but no new edge will come
            start = time.monotonic()
            second = greenasync.wait_readable(a.fileno(), 1)
            return first, second, time.monotonic() - start

        first, second, waited = await greenasync.run(wait_twice)
        assert (first, second) == (True, True)
        assert waited < 0.5, f"second wait took {waited:.3f} s"


async def test_stale_deadlines_do_not_pile_up():
    # Socket timeouts are long and nearly never fire; each wait woken by data leaves its
    # deadline entry behind, and the heap is rebuilt once they are half of it.
    a, b = green_socket.socketpair()
    a.settimeout(60)
    loop = asyncio.get_running_loop()
    with a, b:
        for _ in range(3 * _bridge._COMPACT_MIN):
            loop.call_soon(b.send, b"x")
            assert await greenasync.run(recv_one, a) == b"x"
        deadlines = len(hub().deadlines)
        assert deadlines <= 2 * _bridge._COMPACT_MIN, deadlines


async def test_timeouts_fire_in_deadline_order_whatever_order_they_were_set():
    order = []

    def nap(name, seconds):
        greenasync.sleep(seconds)
        order.append(name)

    start = time.monotonic()
    await asyncio.gather(*[
        greenasync.run(nap, name, seconds)
        for name, seconds in [("c", 0.06), ("a", 0.02), ("b", 0.04), ("a2", 0.02)]
    ])
    assert order == ["a", "a2", "b", "c"]
    assert time.monotonic() - start >= 0.06


async def test_a_later_deadline_set_while_timeouts_fire_does_not_delay_earlier_ones():
    # Seen: a worker timed out by the heap's timer went on to a wait with a long timeout,
    # which armed the timer for that deadline while an earlier one was still in the heap:
    # 50 sleeps of 0.2 s took 5 s (the other wait's socket timeout).
    a, b = green_socket.socketpair()
    with a, b:
        def short_then_long():
            greenasync.sleep(0.01)
            return greenasync.wait_readable(a, 10)  # nobody writes: a 10 s deadline

        def medium():
            start = time.monotonic()
            greenasync.sleep(0.05)
            return time.monotonic() - start

        long_wait = asyncio.ensure_future(greenasync.run(short_then_long))
        slept = await asyncio.wait_for(greenasync.run(medium), 2)
        assert 0.05 <= slept < 0.5, slept
        long_wait.cancel()
        with pytest.raises(asyncio.CancelledError):
            await long_wait


def test_without_epoll_each_wait_registers_with_the_loop(monkeypatch, loop_kind):
    # Platforms without epoll (macOS) fall back to add_reader/remove_reader per wait.
    from conftest import run_on

    monkeypatch.setattr(_bridge, "_EPOLL", None)

    async def scenario():
        a, b = green_socket.socketpair()
        with a, b:
            loop = asyncio.get_running_loop()
            loop.call_later(0.01, b.send, b"x")
            assert await greenasync.run(recv_one, a) == b"x"
            assert hub().poller is None and hub().readers == {}
            assert not loop.remove_reader(a.fileno())  # removed after the wait

    run_on(loop_kind, scenario)


async def test_a_burst_of_calls_starts_in_order_at_a_linear_cost():
    # 2,000 calls of 0.5 ms each, started at once: they start in the order they were made,
    # and the bridge adds a small fraction of the work (an earlier scheduler that re-queued
    # every waiting call each iteration cost 55% of the CPU with 10,000 calls: O(n^2)).
    n, work = 2000, 0.0005
    started = []

    def call(i):
        started.append(i)
        end = time.perf_counter() + work
        while time.perf_counter() < end:
            pass
        greenasync.sleep(0)

    cpu = time.process_time()
    await asyncio.gather(*[greenasync.run(call, i) for i in range(n)])
    overhead = time.process_time() - cpu - n * work
    assert started == list(range(n))
    assert overhead < 0.5 * n * work, f"{overhead:.2f} s of CPU beyond {n * work:.2f} s of work"
