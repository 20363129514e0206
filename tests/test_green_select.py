"""The hybrid select and selectors shims in green context (and their pass-through)."""

import asyncio
import select as stdselect
import selectors as stdselectors
import socket as std
import time

import pytest

import greenasync
from greenasync import _bridge
from greenasync.green import select as gselect
from greenasync.green import selectors as gselectors

# The longest loop stall tolerated. Every wait in these tests is >= 0.1 s, so a call that
# blocked the loop would show a larger gap; the margin absorbs load from parallel test runs.
MAX_GAP = 0.08


def hub():
    return _bridge._hub_for(asyncio.get_running_loop())


async def timed(fn, *args):
    start_time = time.monotonic()
    result = await greenasync.run(fn, *args)
    return result, time.monotonic() - start_time


def test_modules_pass_the_rest_through():
    assert gselect.epoll is stdselect.epoll and gselect.POLLIN == stdselect.POLLIN
    assert gselect.error is OSError
    assert gselectors.EVENT_READ == stdselectors.EVENT_READ
    assert gselectors.SelectorKey is stdselectors.SelectorKey
    assert gselectors.DefaultSelector.__name__ == stdselectors.DefaultSelector.__name__
    assert issubclass(gselectors.DefaultSelector, stdselectors.DefaultSelector)
    for cls in ("SelectSelector", "PollSelector", "EpollSelector"):
        assert issubclass(getattr(gselectors, cls), getattr(stdselectors, cls))


async def test_select_waits_for_readability_without_stalling(ticker):
    a, b = std.socketpair()
    with a, b:
        async with ticker() as t:
            asyncio.get_running_loop().call_later(0.2, b.send, b"x")
            ready, elapsed = await timed(gselect.select, [a], [], [], 5)
        assert ready == ([a], [], [])
        assert 0.15 <= elapsed < 2
        assert t.max_gap < MAX_GAP and t.ticks >= 5


async def test_select_timeouts_and_immediate_answers(ticker):
    a, b = std.socketpair()
    with a, b:
        async with ticker() as t:
            ready, elapsed = await timed(gselect.select, [a], [], [], 0.15)
        assert ready == ([], [], []) and 0.15 <= elapsed < 0.6
        assert t.max_gap < MAX_GAP
        parks = hub().parks
        assert await greenasync.run(gselect.select, [a], [], [], 0) == ([], [], [])
        assert await greenasync.run(gselect.select, [a], [b], [], None) == ([], [b], [])
        assert hub().parks == parks  # nothing had to wait
        # The same fd several times, and in two lists, is fine.
        b.send(b"y")
        assert await greenasync.run(gselect.select, [a, a.fileno()], [a], [a], 1) == (
            [a, a.fileno()], [a], [])


async def test_select_errors_are_the_stdlib_ones():
    a, b = std.socketpair()
    with a, b:
        for args in (([a], [], [], -1), ([a], [], [], "1"), ([a], [], [], float("nan")),
                     (["nope"], [], [], 1), ([-1], [], [], 1)):
            with pytest.raises(Exception) as ours:
                await greenasync.run(gselect.select, *args)
            with pytest.raises(Exception) as ref:
                stdselect.select(*args)
            assert (type(ours.value), str(ours.value)) == (type(ref.value), str(ref.value))


async def test_poll_register_modify_unregister_and_wait(ticker):
    a, b = std.socketpair()
    with a, b:
        poller = gselect.poll()
        poller.register(a, gselect.POLLIN)
        async with ticker() as t:
            asyncio.get_running_loop().call_later(0.2, b.send, b"x")
            ready, elapsed = await timed(poller.poll, None)
        assert ready == [(a.fileno(), gselect.POLLIN)] and elapsed >= 0.15
        assert a.recv(1) == b"x"
        async with ticker() as t2:
            ready, elapsed = await timed(poller.poll, 150)
        assert ready == [] and 0.15 <= elapsed < 0.6
        assert t.max_gap < MAX_GAP and t2.max_gap < MAX_GAP
        poller.modify(a, gselect.POLLOUT)
        assert await greenasync.run(poller.poll, 1000) == [(a.fileno(), gselect.POLLOUT)]
        poller.unregister(a)
        ready, elapsed = await timed(poller.poll, 100)  # nothing registered: just waits
        assert ready == [] and elapsed >= 0.1
        ref = stdselect.poll()
        for call in (lambda p: p.unregister(a), lambda p: p.modify(a, 1),
                     lambda p: p.poll("x"), lambda p: p.register("x")):
            with pytest.raises(Exception) as ours_err:
                await greenasync.run(call, poller)
            with pytest.raises(Exception) as ref_err:
                call(ref)
            assert type(ours_err.value) is type(ref_err.value)
            assert str(ours_err.value) == str(ref_err.value)


async def test_poll_with_a_zero_timeout_answers_at_once_without_parking():
    # redis-py's can_read() probe makes this call before every command: it must stay the
    # stdlib's non-blocking check, in green context too.
    a, b = std.socketpair()
    with a, b:
        poller = gselect.poll()
        poller.register(a, gselect.POLLIN)
        parks = greenasync.statistics().parks
        assert await greenasync.run(poller.poll, 0) == []
        b.send(b"x")
        assert await greenasync.run(poller.poll, 0.0) == [(a.fileno(), gselect.POLLIN)]
        assert greenasync.statistics().parks == parks


async def test_poll_reports_a_hangup_on_a_read_watch():
    a, b = std.socketpair()
    with a:
        poller = gselect.poll()
        poller.register(a, gselect.POLLIN)
        asyncio.get_running_loop().call_later(0.1, b.close)
        ready, elapsed = await timed(poller.poll, 2000)
        assert ready and ready[0][0] == a.fileno() and elapsed < 1.5


@pytest.mark.parametrize("name", ["DefaultSelector", "PollSelector", "SelectSelector"])
async def test_selectors_wait_cooperatively(name, ticker):
    a, b = std.socketpair()
    with a, b, getattr(gselectors, name)() as selector:
        key = selector.register(a, gselectors.EVENT_READ, data="payload")
        async with ticker() as t:
            ready, elapsed = await timed(selector.select, 0.15)
        assert ready == [] and 0.15 <= elapsed < 0.6
        async with ticker() as t2:
            asyncio.get_running_loop().call_later(0.1, b.send, b"x")
            ready, elapsed = await timed(selector.select, None)
        assert ready == [(key, gselectors.EVENT_READ)] and ready[0][0].data == "payload"
        assert t.max_gap < MAX_GAP and t2.max_gap < MAX_GAP
        selector.modify(a, gselectors.EVENT_WRITE)
        parks = hub().parks
        ready = await greenasync.run(selector.select, 5)
        assert [(k.fileobj, ev) for k, ev in ready] == [(a, gselectors.EVENT_WRITE)]
        assert hub().parks == parks
        selector.modify(a, gselectors.EVENT_READ)
        assert await greenasync.run(selector.select, 0) == [(selector.get_key(a), 1)]


def test_outside_green_context_they_block_like_the_stdlib():
    a, b = std.socketpair()
    with a, b, gselectors.DefaultSelector() as selector:
        selector.register(a, gselectors.EVENT_READ)
        for wait in (lambda: gselect.select([a], [], [], 0.1), lambda: selector.select(0.1)):
            start_time = time.monotonic()
            assert not any(wait())
            assert time.monotonic() - start_time >= 0.1


async def test_redis_hiredis_readiness_checks_once_patched(monkeypatch, ticker):
    """redis-py's hiredis parser polls the fd itself (select.poll, or
    selectors.DefaultSelector without poll); with its module globals pointing at the
    shims (what the scoped patcher does), both paths park instead of blocking."""
    hiredis_parser = pytest.importorskip("redis._parsers.hiredis")
    monkeypatch.setattr(hiredis_parser, "select", gselect)
    monkeypatch.setattr(hiredis_parser, "selectors", gselectors)
    a, b = std.socketpair()
    with a, b:
        for has_poll in (True, False):
            monkeypatch.setattr(hiredis_parser, "_HAS_POLL", has_poll)
            async with ticker() as t:
                result, elapsed = await timed(hiredis_parser._socket_can_read, a, 0.3)
            assert result is False and 0.3 <= elapsed < 1.0
            assert t.max_gap < MAX_GAP
            asyncio.get_running_loop().call_later(0.1, b.send, b"+PONG\r\n")
            async with ticker() as t:
                result, elapsed = await timed(hiredis_parser._socket_can_read, a, 5)
            assert result is True and elapsed < 2
            assert t.max_gap < MAX_GAP
            assert a.recv(100) == b"+PONG\r\n"
