"""The hybrid ssl shim against a real TLS server on 127.0.0.1 (a stdlib ssl server in a
thread, or a green one on the same loop). The certificate in tests/certs/ is self-signed
for localhost/127.0.0.1/::1, valid 2000-2100; tests/certs/openssl.cnf shows how it was made."""

import asyncio
import hashlib
import os
import pathlib
import socket as std
import ssl as stdssl
import threading
import time

import pytest

import greenasync
from greenasync import _bridge
from greenasync.green import socket as gs
from greenasync.green import ssl as gssl

CERTS = pathlib.Path(__file__).parent / "certs"
CERT = str(CERTS / "localhost.crt")
KEY = str(CERTS / "localhost.key")
LOOPBACK = "127.0.0.1"
# The longest loop stall tolerated. Every wait in these tests is >= 0.1 s, so a call that
# blocked the loop would show a larger gap; the margin absorbs load from parallel test runs.
MAX_GAP = 0.08


def hub():
    return _bridge._hub_for(asyncio.get_running_loop())


def server_context(cls=stdssl.SSLContext):
    ctx = cls(stdssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(CERT, KEY)
    return ctx


def client_context():
    return gssl.create_default_context(cafile=CERT)


class TLSServer:
    """One connection served by ``handler(tls_socket)`` in a thread (a stdlib server).

    ``handshake_delay`` sleeps before the handshake; ``handshake=False`` accepts and then
    never speaks TLS (for handshake timeouts)."""

    def __init__(self, handler=None, handshake_delay=0.0, handshake=True):
        self.listener = std.create_server((LOOPBACK, 0))
        self.address = self.listener.getsockname()
        self.handler = handler
        self.handshake_delay = handshake_delay
        self.handshake = handshake
        self.done = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
            with conn:
                conn.settimeout(10)
                if not self.handshake:
                    self.done.wait(10)
                    return
                time.sleep(self.handshake_delay)
                with server_context().wrap_socket(conn, server_side=True) as tls:
                    if self.handler:
                        self.handler(tls)
                    else:
                        self.done.wait(10)
        except Exception as exc:  # reported by close()
            self.error = exc

    def close(self):
        self.done.set()
        self.thread.join(10)
        self.listener.close()
        if self.error is not None:
            raise self.error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect_tls(address, timeout=None, ctx=None):
    """PyMySQL-style: a socket from the patched module, then ctx.wrap_socket(sock)."""
    raw = gs.create_connection(address, timeout=timeout)
    try:
        return (ctx or client_context()).wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def echo_upper_after(delay):
    def handler(tls):
        data = tls.recv(1024)
        time.sleep(delay)
        tls.sendall(data.upper())
        tls.recv(1)  # until the client closes
    return handler


def test_helpers_return_green_contexts_and_sockets():
    for ctx in (gssl.create_default_context(), gssl._create_default_https_context(),
                gssl._create_unverified_context(), gssl._create_stdlib_context(),
                gssl.SSLContext(stdssl.PROTOCOL_TLS_CLIENT)):
        assert isinstance(ctx, gssl.SSLContext) and isinstance(ctx, stdssl.SSLContext)
        assert ctx.sslsocket_class is gssl.SSLSocket
    assert issubclass(gssl.SSLSocket, stdssl.SSLSocket) and issubclass(gssl.SSLSocket, gs.socket)
    assert gssl.CERT_REQUIRED is stdssl.CERT_REQUIRED and gssl.SSLError is stdssl.SSLError
    # Wrapping even a *stdlib* socket with a green context gives a green SSL socket.
    with TLSServer(echo_upper_after(0)) as server:
        raw = std.create_connection(server.address, timeout=5)
        with client_context().wrap_socket(raw, server_hostname="localhost") as tls:
            assert type(tls) is gssl.SSLSocket and tls.gettimeout() == 5.0
            tls.sendall(b"plain thread")
            assert tls.recv(100) == b"PLAIN THREAD"


async def test_a_stdlib_context_made_cooperative_by_its_sslsocket_class(ticker):
    """The escape hatch the module documents for contexts created outside the shim."""
    ctx = stdssl.create_default_context(cafile=CERT)
    ctx.sslsocket_class = gssl.SSLSocket
    with TLSServer(echo_upper_after(0.2)) as server:

        def call():
            with connect_tls(server.address, ctx=ctx) as tls:
                tls.sendall(b"std")
                return type(tls), tls.recv(10)

        async with ticker() as t:
            assert await greenasync.run(call) == (gssl.SSLSocket, b"STD")
    assert t.max_gap < MAX_GAP


async def test_read_that_waits_on_the_server_does_not_stall_the_loop(ticker):
    with TLSServer(echo_upper_after(0.3)) as server:
        ctx = client_context()

        def call():
            with connect_tls(server.address, ctx=ctx) as tls:
                tls.sendall(b"hello")
                return type(tls), tls.recv(100), tls.version()

        async with ticker() as t:
            start_time = time.monotonic()
            kind, data, version = await greenasync.run(call)
            elapsed = time.monotonic() - start_time
    assert kind is gssl.SSLSocket
    assert data == b"HELLO" and version.startswith("TLS")
    assert elapsed >= 0.3
    assert t.max_gap < 0.05  # the bound for this scenario


async def test_handshake_waits_cooperatively(ticker):
    with TLSServer(echo_upper_after(0), handshake_delay=0.3) as server:
        ctx = client_context()

        def call():
            with connect_tls(server.address, ctx=ctx) as tls:
                tls.sendall(b"x")
                return tls.recv(10), tls.getpeercert()["subject"]

        async with ticker() as t:
            data, subject = await greenasync.run(call)
    assert data == b"X" and subject == ((("commonName", "localhost"),),)
    assert t.max_gap < MAX_GAP


async def test_read_timeout_and_nonblocking_read():
    with TLSServer() as server:  # handshakes, then never sends
        tls = await greenasync.run(connect_tls, server.address)
        with tls:
            tls.settimeout(0.2)
            start_time = time.monotonic()
            with pytest.raises(TimeoutError) as info:
                await greenasync.run(tls.recv, 10)
            elapsed = time.monotonic() - start_time
            assert str(info.value) == "The read operation timed out"
            assert 0.2 <= elapsed < 0.8
            tls.settimeout(0)
            parks = hub().parks
            with pytest.raises(stdssl.SSLWantReadError):
                await greenasync.run(tls.recv, 10)
            assert hub().parks == parks


async def test_handshake_timeout_has_the_stdlib_message():
    with TLSServer(handshake=False) as server:
        start_time = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            await greenasync.run(connect_tls, server.address, 0.2)
        elapsed = time.monotonic() - start_time
    assert 0.2 <= elapsed < 0.8
    # The stdlib's own message embeds an _ssl.c line number; learn it from the stdlib.
    a, b = std.socketpair()
    with a, b:
        a.settimeout(0.01)
        ctx = stdssl._create_unverified_context()
        with pytest.raises(TimeoutError) as ref:
            ctx.wrap_socket(a)
    assert str(info.value) == str(ref.value)
    assert "handshake operation timed out" in str(info.value)


async def test_pymysql_style_tls_upgrade_and_makefile(ticker):
    """Plain-text greeting, then ``ctx.wrap_socket(self._sock)`` and ``makefile("rb")``."""

    def upgrade_server(listener, done):
        conn, _ = listener.accept()
        with conn:
            conn.sendall(b"GREETING\n")
            assert conn.recv(9) == b"STARTTLS\n"
            with server_context().wrap_socket(conn, server_side=True) as tls:
                request = tls.recv(100)
                for part in (b"0123", b"4567", b"89\n"):
                    time.sleep(0.1)
                    tls.sendall(part)
                tls.sendall(request)
                done.wait(10)

    listener = std.create_server((LOOPBACK, 0))
    done = threading.Event()
    thread = threading.Thread(target=upgrade_server, args=(listener, done), daemon=True)
    thread.start()
    ctx = client_context()

    def client():
        sock = gs.create_connection(listener.getsockname(), timeout=5)
        rfile = sock.makefile("rb")
        greeting = rfile.readline()
        rfile.close()
        sock.sendall(b"STARTTLS\n")
        tls = ctx.wrap_socket(sock, server_hostname="localhost")
        with tls:
            rfile = tls.makefile("rb")
            with rfile:
                tls.sendall(b"query")
                return greeting, type(tls), tls.gettimeout(), rfile.readline(), rfile.read(5)

    try:
        async with ticker() as t:
            result = await greenasync.run(client)
    finally:
        done.set()
        thread.join(10)
        listener.close()
    assert result == (b"GREETING\n", gssl.SSLSocket, 5.0, b"0123456789\n", b"query")
    assert t.max_gap < MAX_GAP


async def test_both_ends_on_one_loop_with_large_transfers_and_unwrap():
    """A green TLS server and a green TLS client on the same thread: any blocking call
    would deadlock, so this finishing at all shows that every step cooperates."""
    payload = os.urandom(1024 * 1024)
    listener = gs.create_server((LOOPBACK, 0))
    sctx = server_context(gssl.SSLContext)
    cctx = client_context()

    def serve():
        conn, _ = listener.accept()
        with sctx.wrap_socket(conn, server_side=True) as tls:
            rfile = tls.makefile("rb")
            with rfile:
                data = rfile.read(len(payload))
            tls.sendall(hashlib.sha256(data).digest() + data)
            plain = tls.unwrap()
            plain.sendall(b"clear text")
            return type(tls)

    def client():
        with connect_tls(listener.getsockname(), ctx=cctx) as tls:
            tls.sendall(payload)
            rfile = tls.makefile("rb")
            with rfile:
                digest = rfile.read(32)
                echoed = rfile.read(len(payload))
            plain = tls.unwrap()
            return digest, echoed, plain.recv(100)

    with listener:
        server_kind, (digest, echoed, clear) = await asyncio.wait_for(
            asyncio.gather(greenasync.run(serve), greenasync.run(client)), 20)
    assert server_kind is gssl.SSLSocket
    assert digest == hashlib.sha256(payload).digest() and echoed == payload
    assert clear == b"clear text"


async def test_sendall_over_tls_to_a_slow_reader(ticker):
    payload = os.urandom(2 * 1024 * 1024)

    def slow_reader(tls):
        got = bytearray()
        while len(got) < len(payload):
            got += tls.recv(65536)
            time.sleep(0.001)
        tls.sendall(hashlib.sha256(got).digest())

    with TLSServer(slow_reader) as server:
        ctx = client_context()

        def call():
            with connect_tls(server.address, 10, ctx) as tls:
                tls.sendall(payload)
                return tls.recv(32)

        async with ticker() as t:
            digest = await greenasync.run(call)
    assert digest == hashlib.sha256(payload).digest()
    assert t.max_gap < MAX_GAP


async def test_cancelling_a_parked_tls_read_unregisters_the_fd():
    with TLSServer() as server:
        tls = await greenasync.run(connect_tls, server.address)
        with tls:
            task = asyncio.ensure_future(greenasync.run(tls.recv, 10))
            await asyncio.sleep(0.05)
            assert tls.fileno() in hub().readers
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert hub().readers == {}
            tls.settimeout(0.05)
            with pytest.raises(TimeoutError):  # still a working TLS socket
                await greenasync.run(tls.recv, 10)


async def test_get_server_certificate_in_a_greenlet():
    with TLSServer() as server:
        pem = await greenasync.run(gssl.get_server_certificate, server.address)
    with open(CERT) as f:
        assert stdssl.PEM_cert_to_DER_cert(pem) == stdssl.PEM_cert_to_DER_cert(f.read())


def test_stand_in_classes_accept_stdlib_instances_in_type_checks():
    # Inside a patched library these names *are* the shim classes; its own isinstance checks
    # must keep accepting the stdlib objects a user hands it.
    import socket as std_socket
    import ssl as std_ssl

    from greenasync.green import socket as green_socket

    context = std_ssl.create_default_context()
    assert isinstance(context, gssl.SSLContext)
    assert issubclass(std_ssl.SSLSocket, gssl.SSLSocket)
    assert isinstance(gssl.create_default_context(), std_ssl.SSLContext)
    with std_socket.socket() as plain:
        assert isinstance(plain, green_socket.socket)
    assert not isinstance(context, green_socket.socket)
