"""The hybrid socket shim, in green context (every async test runs on asyncio, uvloop and
Tornado) and outside it. Real loopback sockets only; no mocks."""

import asyncio
import errno
import hashlib
import math
import os
import socket as std
import threading
import time

import pytest

import greenasync
from greenasync import _bridge
from greenasync.green import socket as gs

LOOPBACK = "127.0.0.1"
# The longest loop stall tolerated. Every wait in these tests is >= 0.1 s, so a call that
# blocked the loop would show a larger gap; the margin absorbs load from parallel test runs.
MAX_GAP = 0.08


def hub():
    return _bridge._hub_for(asyncio.get_running_loop())


def refused_address():
    """A bound TCP socket that never listens: connecting to it is refused at once (RST),
    and keeping it bound means no other process can grab the port meanwhile."""
    sock = std.socket()
    sock.bind((LOOPBACK, 0))
    return sock


def drain(sock, into, chunk=65536, pause=0.0):
    """Read ``sock`` until EOF into the bytearray ``into``, pausing between reads."""
    while True:
        data = sock.recv(chunk)
        if not data:
            return
        into += data
        if pause:
            time.sleep(pause)


def start(target, *args):
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()
    return thread


# --- Construction: the stdlib's helpers must hand out our class.


def test_every_constructor_builds_a_green_socket():
    a, b = gs.socketpair()
    with a, b:
        dup = a.dup()
        fromfd = gs.fromfd(a.fileno(), a.family, a.type)
        with dup, fromfd:
            for sock in (a, b, dup, fromfd):
                assert type(sock) is gs.socket
                assert isinstance(sock, std.socket)
    with gs.create_server((LOOPBACK, 0)) as srv:
        assert type(srv) is gs.socket
        with gs.create_connection(srv.getsockname(), timeout=5) as client:
            conn, addr = srv.accept()
            with conn:
                assert type(client) is gs.socket and type(conn) is gs.socket
                assert addr == client.getsockname()
                assert conn.gettimeout() == std.getdefaulttimeout()
                assert client.gettimeout() == 5.0


def test_shim_module_passes_everything_else_through():
    assert gs.AF_INET is std.AF_INET
    assert gs.timeout is std.timeout is TimeoutError
    assert gs.SocketIO is std.SocketIO
    assert gs.__greenasync_stdlib__ is std
    assert "recv_fds" in dir(gs)
    for name in gs.__greenasync_overrides__:
        assert name in vars(gs)


def test_timeout_accessors_match_the_stdlib_exactly():
    """settimeout/gettimeout/setblocking/getblocking/.timeout, values and errors."""
    values = [None, 0, 0.0, 1, 2.5, 0.1, 0.3, 1e-10, 1.5e-9, True, False, 10**6,
              -1, -0.5, math.nan, "x", 1e300]

    def observe(sock, value):
        try:
            sock.settimeout(value)
        except Exception as exc:
            return type(exc), str(exc)
        return sock.gettimeout(), sock.timeout, sock.getblocking()

    with std.socket() as ref, gs.socket() as ours:
        for value in values:
            assert observe(ours, value) == observe(ref, value), value
        for flag in (True, False, 0, 1):
            ref.setblocking(flag)
            ours.setblocking(flag)
            assert (ours.gettimeout(), ours.getblocking()) == (ref.gettimeout(), ref.getblocking())
    # The C-level timeout of ours stays 0 (the OS socket is always non-blocking).
    with gs.socket() as ours:
        ours.settimeout(None)
        assert std.socket.__mro__[1].gettimeout(ours) == 0.0
        assert not os.get_blocking(ours.fileno())
    # A closed socket: the stdlib raises EBADF.
    ref, ours = std.socket(), gs.socket()
    ref.close()
    ours.close()
    for sock in (ref, ours):
        with pytest.raises(OSError) as info:
            sock.settimeout(1)
        assert info.value.errno == errno.EBADF
        with pytest.raises(OSError):
            sock.setblocking(True)


def test_default_timeout_and_sock_nonblock_are_honoured():
    old = std.getdefaulttimeout()
    std.setdefaulttimeout(2.5)
    try:
        with gs.socket() as sock:
            assert sock.gettimeout() == 2.5
    finally:
        std.setdefaulttimeout(old)
    with gs.socket(std.AF_INET, std.SOCK_STREAM | std.SOCK_NONBLOCK) as sock:
        assert sock.gettimeout() == 0.0 and not sock.getblocking()


# --- Green context.


async def test_concurrent_calls_take_turns_at_each_turnaround():
    # Each call sends a request and reads the reply, twice; the reply is already there when
    # it reads (the peer answers at once). Run straight through, each call would do its
    # round trips alone: send, recv, send, recv. Yielding where a connection turns around
    # (before the read after a send, before the send after a read) makes concurrent calls
    # send together and read together, as asyncio clients do.
    events = []
    pairs = [gs.socketpair() for _ in range(5)]

    def call(i):
        a, b = pairs[i]
        # All five in flight first: that is what turnaround() looks at (on uvloop it cannot
        # see the other tasks about to start theirs).
        greenasync.sleep(0)
        for n in range(2):
            a.sendall(b"q")
            events.append(f"send{n}")
            b.sendall(b"r")  # the server's reply
            assert a.recv(1) == b"r"
            events.append(f"recv{n}")

    def yields():
        return greenasync.statistics().parks_by_kind["yield"]

    before, reads = yields(), greenasync.statistics().parks_by_kind["read"]
    await asyncio.gather(*(greenasync.run(call, i) for i in range(5)))
    turns = yields() - before
    alone = yields()
    await greenasync.run(call, 0)  # nothing else in flight: straight through
    alone = yields() - alone
    for a, b in pairs:
        a.close()
        b.close()
    assert events[:20] == [f"{op}{n}" for n in range(2) for op in ("send", "recv")
                           for _ in range(5)], events
    assert turns == 15 and greenasync.statistics().parks_by_kind["read"] == reads, turns
    assert alone == 0 and events[20:] == ["send0", "recv0", "send1", "recv1"], events[20:]


def test_turnaround_is_nothing_outside_green_context():
    a, b = gs.socketpair()
    with a, b:
        a.sendall(b"q")
        b.sendall(b"r")
        assert a.recv(1) == b"r"  # no loop, no greenlet: the stdlib's behaviour


async def test_recv_parks_without_stalling_the_loop(ticker):
    a, b = gs.socketpair()
    with a, b:
        # The peer is a thread: a recv that blocked the loop would show as a stall, not a hang.
        timer = threading.Timer(0.3, b.send, (b"ping",))
        async with ticker() as t:
            timer.start()
            start_time = time.monotonic()
            data = await greenasync.run(a.recv, 10)
            elapsed = time.monotonic() - start_time
        timer.join()
        assert data == b"ping"
        assert 0.25 <= elapsed < 2.0
        assert t.max_gap < MAX_GAP
        assert t.ticks >= 10


async def test_recv_timeout_raises_at_the_deadline_not_before(ticker):
    a, b = gs.socketpair()
    with a, b:
        a.settimeout(0.1)
        async with ticker() as t:
            start_time = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                await greenasync.run(a.recv, 10)
            elapsed = time.monotonic() - start_time
        assert type(info.value) is std.timeout and str(info.value) == "timed out"
        assert 0.1 <= elapsed < 0.6
        assert t.max_gap < MAX_GAP
        # The socket is still usable after the timeout.
        b.send(b"late")
        assert await greenasync.run(a.recv, 10) == b"late"


async def test_timeout_zero_raises_blocking_io_error_at_once():
    a, b = gs.socketpair()
    with a, b:
        for make_nonblocking in (lambda: a.settimeout(0), lambda: a.setblocking(False)):
            make_nonblocking()
            parks = hub().parks
            start_time = time.monotonic()
            with pytest.raises(BlockingIOError) as info:
                await greenasync.run(a.recv, 10)
            assert time.monotonic() - start_time < 0.05
            assert info.value.errno == errno.EAGAIN
            assert hub().parks == parks  # it never parked
        # redis-py's can_read(): settimeout(0) + recv, then back to a timeout.
        b.send(b"+OK\r\n")
        assert await greenasync.run(a.recv, 10) == b"+OK\r\n"


async def test_sendall_of_megabytes_to_a_slow_reader(ticker):
    a, b = gs.socketpair()
    payload = os.urandom(4 * 1024 * 1024)
    received = bytearray()
    with a, b:
        reader = start(drain, b, received, 65536, 0.002)
        a.settimeout(30)
        async with ticker() as t:
            assert await greenasync.run(a.sendall, payload) is None
            a.shutdown(std.SHUT_WR)
            await asyncio.get_running_loop().run_in_executor(None, reader.join, 10)
        assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        assert t.max_gap < MAX_GAP


async def test_sendall_timeout_bounds_the_whole_call(ticker):
    """A reader that keeps taking a little data must not extend the deadline (CPython
    >= 3.5 semantics: the timeout is the total duration of sendall)."""
    a, b = gs.socketpair()
    received = bytearray()
    with b:
        # ~6 MB/s: frequent progress, but 16 MB would take ~2.5 s.
        reader = start(drain, b, received, 65536, 0.01)
        with a:
            a.settimeout(0.4)
            async with ticker() as t:
                start_time = time.monotonic()
                with pytest.raises(TimeoutError) as info:
                    await greenasync.run(a.sendall, b"x" * (16 * 1024 * 1024))
                elapsed = time.monotonic() - start_time
        await asyncio.get_running_loop().run_in_executor(None, reader.join, 10)
    assert str(info.value) == "timed out"
    assert 0.4 <= elapsed < 1.5
    assert len(received) > 0  # the reader made progress during the call
    assert t.max_gap < MAX_GAP


async def test_connect_to_a_listening_socket_and_to_a_closed_port(ticker):
    with std.create_server((LOOPBACK, 0)) as srv, refused_address() as closed:

        def connect(address):
            sock = gs.socket()
            try:
                sock.connect(address)
            except BaseException:
                sock.close()
                raise
            return sock

        async with ticker() as t:
            client = await greenasync.run(connect, srv.getsockname())
        with client:
            conn, _ = srv.accept()
            conn.close()
            assert client.getpeername() == srv.getsockname()
        with pytest.raises(ConnectionRefusedError) as info:
            await greenasync.run(connect, closed.getsockname())
        assert info.value.errno == errno.ECONNREFUSED
        assert str(info.value) == "[Errno 111] Connection refused"
        with gs.socket() as sock:
            assert await greenasync.run(sock.connect_ex, closed.getsockname()) == errno.ECONNREFUSED
        assert t.max_gap < MAX_GAP


async def test_connect_timeout_on_a_full_backlog(ticker):
    """listen(0) accepts one pending connection; further SYNs are dropped, so a connect
    stays in progress until its timeout (loopback only, deterministic on Linux)."""
    with std.socket() as srv:
        srv.bind((LOOPBACK, 0))
        srv.listen(0)
        fillers = []
        try:
            for _ in range(3):
                filler = std.socket()
                fillers.append(filler)
                filler.setblocking(False)
                filler.connect_ex(srv.getsockname())
            await asyncio.sleep(0.05)
            with gs.socket() as sock:
                sock.settimeout(0.2)
                async with ticker() as t:
                    start_time = time.monotonic()
                    with pytest.raises(TimeoutError) as info:
                        await greenasync.run(sock.connect, srv.getsockname())
                    elapsed = time.monotonic() - start_time
                assert str(info.value) == "timed out"
                assert 0.2 <= elapsed < 0.9
                assert t.max_gap < MAX_GAP
            with gs.socket() as sock:
                sock.settimeout(0.1)
                result = await greenasync.run(sock.connect_ex, srv.getsockname())
                assert result == errno.EWOULDBLOCK  # what the stdlib's connect_ex returns
        finally:
            for filler in fillers:
                filler.close()


async def test_accept_parks_until_a_client_connects(ticker):
    with gs.create_server((LOOPBACK, 0)) as srv:
        client = std.socket()
        client.setblocking(False)
        with client:
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, client.connect_ex, srv.getsockname())
            async with ticker() as t:
                conn, addr = await greenasync.run(srv.accept)
            with conn:
                assert type(conn) is gs.socket
                assert addr == client.getsockname()
                assert conn.gettimeout() is None
            assert t.max_gap < MAX_GAP
        srv.settimeout(0.1)
        with pytest.raises(TimeoutError):
            await greenasync.run(srv.accept)


async def test_makefile_read_n_like_pymysql(ticker):
    a, b = gs.socketpair()
    with a, b:
        loop = asyncio.get_running_loop()
        for i, chunk in enumerate((b"abc", b"def\n", b"ghij")):
            loop.call_later(0.05 * (i + 1), b.send, chunk)
        rfile = a.makefile("rb")
        with rfile:
            async with ticker() as t:
                assert await greenasync.run(rfile.read, 5) == b"abcde"
                assert await greenasync.run(rfile.readline) == b"f\n"
                assert await greenasync.run(rfile.read, 4) == b"ghij"
            assert t.max_gap < MAX_GAP
            a.settimeout(0.1)
            with pytest.raises(TimeoutError):
                await greenasync.run(rfile.read, 1)
        wfile = a.makefile("wb")
        with wfile:
            await greenasync.run(lambda: (wfile.write(b"out"), wfile.flush()))
        assert b.recv(10) == b"out"


async def test_recv_into_recvfrom_and_udp(ticker):
    server = gs.socket(std.AF_INET, std.SOCK_DGRAM)
    client = std.socket(std.AF_INET, std.SOCK_DGRAM)
    with server, client:
        server.bind((LOOPBACK, 0))
        client.bind((LOOPBACK, 0))
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, client.sendto, b"datagram", server.getsockname())
        async with ticker() as t:
            data, addr = await greenasync.run(server.recvfrom, 100)
        assert (data, addr) == (b"datagram", client.getsockname())
        loop.call_later(0.1, client.sendto, b"into", server.getsockname())
        buf = bytearray(10)
        assert await greenasync.run(server.recvfrom_into, buf) == (4, client.getsockname())
        assert bytes(buf[:4]) == b"into"
        assert await greenasync.run(server.sendto, b"back", client.getsockname()) == 4
        assert client.recv(10) == b"back"
        assert t.max_gap < MAX_GAP
    a, b = gs.socketpair()
    with a, b:
        loop.call_later(0.1, b.send, b"xyz")
        buf = bytearray(10)
        assert await greenasync.run(a.recv_into, buf, 2) == 2
        assert bytes(buf[:2]) == b"xy"
        assert await greenasync.run(a.recv, 10) == b"z"
        loop.call_later(0.1, b.send, b"msg")
        data, ancdata, flags, _ = await greenasync.run(a.recvmsg, 10)
        assert (data, ancdata, flags) == (b"msg", [], 0)


async def test_getaddrinfo_for_a_name_runs_in_a_thread():
    parks = hub().parks
    expected = std.getaddrinfo("localhost", 80, 0, std.SOCK_STREAM)
    assert await greenasync.run(gs.getaddrinfo, "localhost", 80, 0, std.SOCK_STREAM) == expected
    assert hub().parks > parks  # the greenlet parked while a thread resolved the name
    assert await greenasync.run(gs.gethostbyname, "localhost") == std.gethostbyname("localhost")
    expected = std.gethostbyname_ex("localhost")
    assert await greenasync.run(gs.gethostbyname_ex, "localhost") == expected
    # Numeric hosts and None never leave the loop thread.
    parks = hub().parks
    assert await greenasync.run(gs.getaddrinfo, LOOPBACK, 80) == std.getaddrinfo(LOOPBACK, 80)
    assert await greenasync.run(gs.getaddrinfo, None, 80) == std.getaddrinfo(None, 80)
    assert await greenasync.run(gs.gethostbyname, LOOPBACK) == LOOPBACK
    flags = std.NI_NUMERICHOST | std.NI_NUMERICSERV
    assert await greenasync.run(gs.getnameinfo, (LOOPBACK, 80), flags) == (LOOPBACK, "80")
    assert hub().parks == parks
    # Errors are the stdlib's (an unknown service name fails without any DNS traffic).
    with pytest.raises(std.gaierror) as info:
        await greenasync.run(gs.getaddrinfo, "localhost", "no-such-service")
    with pytest.raises(std.gaierror) as ref:
        std.getaddrinfo("localhost", "no-such-service")
    assert str(info.value) == str(ref.value)


async def test_connect_and_create_connection_to_localhost_by_name(ticker):
    with std.create_server((LOOPBACK, 0)) as srv, refused_address() as closed:
        port = srv.getsockname()[1]

        def by_name():
            with gs.socket() as sock:
                sock.connect(("localhost", port))
                peer = sock.getpeername()
            with gs.create_connection(("localhost", port), 5, (LOOPBACK, 0)) as sock:
                return peer, sock.getpeername(), sock.gettimeout(), type(sock)

        async with ticker() as t:
            result = await greenasync.run(by_name)
        assert result == ((LOOPBACK, port), (LOOPBACK, port), 5.0, gs.socket)
        for _ in range(2):
            srv.accept()[0].close()
        with pytest.raises(ConnectionRefusedError):
            await greenasync.run(gs.create_connection, closed.getsockname())
        with pytest.raises(ExceptionGroup) as group:
            await greenasync.run(
                lambda: gs.create_connection(closed.getsockname(), all_errors=True))
        assert all(isinstance(e, ConnectionRefusedError) for e in group.value.exceptions)
        assert t.max_gap < MAX_GAP


async def test_ipv6_loopback_connect_and_accept(ticker):
    with gs.create_server(("::1", 0), family=std.AF_INET6) as srv:
        port = srv.getsockname()[1]

        def roundtrip():
            with gs.create_connection(("::1", port), timeout=5) as client:
                conn, addr = srv.accept()
                with conn:
                    client.sendall(b"six")
                    same_peer = addr[:2] == client.getsockname()[:2]
                    return type(conn), conn.family, conn.recv(10), same_peer

        async with ticker() as t:
            assert await greenasync.run(roundtrip) == (gs.socket, std.AF_INET6, b"six", True)
        assert t.max_gap < MAX_GAP


async def test_cancelling_a_parked_recv_removes_the_registration():
    a, b = gs.socketpair()
    with a, b:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(greenasync.run(a.recv, 10))
        await asyncio.sleep(0.05)
        assert a.fileno() in hub().readers
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert hub().readers == {}
        assert not loop.remove_reader(a.fileno())  # no watcher left in the loop either
        b.send(b"after")
        assert await greenasync.run(a.recv, 10) == b"after"


async def test_two_greenlets_reading_one_socket_is_an_error():
    a, b = gs.socketpair()
    with a, b:
        first = asyncio.ensure_future(greenasync.run(a.recv, 10))
        await asyncio.sleep(0.05)
        with pytest.raises(greenasync.ConcurrentUseError):
            await greenasync.run(a.recv, 10)
        b.send(b"one")
        assert await first == b"one"


async def test_socket_made_in_a_plain_thread_cooperates_in_a_greenlet(ticker):
    made = {}

    def make():
        a, b = gs.socketpair()
        a.settimeout(5)
        made["pair"] = a, b

    thread = start(make)
    thread.join(5)
    a, b = made["pair"]
    with a, b:
        asyncio.get_running_loop().call_later(0.2, b.send, b"hello")
        async with ticker() as t:
            assert await greenasync.run(a.recv, 10) == b"hello"
        assert t.max_gap < MAX_GAP


def test_plain_thread_blocks_like_the_stdlib():
    """Outside green context, even on a thread with no loop, a recv waits for real."""
    a, b = gs.socketpair()
    with a, b:
        timer = threading.Timer(0.15, b.send, (b"data",))
        timer.start()
        start_time = time.monotonic()
        assert a.recv(10) == b"data"
        assert time.monotonic() - start_time >= 0.14
        timer.join()


async def test_sendfile_in_a_greenlet(tmp_path, ticker):
    path = tmp_path / "blob"
    payload = os.urandom(2 * 1024 * 1024)
    path.write_bytes(payload)
    a, b = gs.socketpair()
    received = bytearray()
    with a, b:
        reader = start(drain, b, received, 65536, 0.001)
        with open(path, "rb") as f:
            async with ticker() as t:
                assert await greenasync.run(a.sendfile, f) == len(payload)
        a.shutdown(std.SHUT_WR)
        await asyncio.get_running_loop().run_in_executor(None, reader.join, 10)
    assert bytes(received) == payload
    assert t.max_gap < MAX_GAP


async def test_close_wakes_a_greenlet_parked_on_the_socket_and_frees_the_fd():
    a, b = gs.socketpair()

    def read():
        try:
            return a.recv(10)
        except OSError as exc:
            return exc

    task = asyncio.ensure_future(greenasync.run(read))
    await asyncio.sleep(0.01)
    await greenasync.run(a.close)
    result = await asyncio.wait_for(task, 2)
    assert isinstance(result, OSError) and result.errno == errno.EBADF
    assert _bridge._hub_for(asyncio.get_running_loop()).readers == {}
    c, d = gs.socketpair()  # likely reuses a's fd number
    with b, c, d:
        d.send(b"x")
        assert await greenasync.run(c.recv, 1) == b"x"
