"""Conformance: every scenario runs in five contexts and must be observably the same.

Contexts: the stdlib modules in a plain thread (the reference), the shims in a plain
thread, and the shims in green context on asyncio, uvloop and Tornado. A scenario is sync
code written against a namespace ``m`` (``m.socket``, ``m.ssl``, ``m.select``,
``m.selectors``); it returns plain data (never a socket), or raises. The observation is its
result or its exception (type, message, errno, nested exceptions) plus how long it took:
results must be equal to the reference's, and the duration within a tolerance of the
scenario's expected duration. Peers (slow readers, late senders, TLS servers) are always
stdlib code in helper threads, so the same scenario runs unchanged in every context.
"""

import functools
import hashlib
import pathlib
import select as stdselect
import selectors as stdselectors
import socket as stdsocket
import ssl as stdssl
import tempfile
import threading
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from conftest import run_on

import greenasync
from greenasync.green import select as gselect
from greenasync.green import selectors as gselectors
from greenasync.green import socket as gsocket
from greenasync.green import ssl as gssl

STDLIB = SimpleNamespace(socket=stdsocket, ssl=stdssl, select=stdselect, selectors=stdselectors)
SHIM = SimpleNamespace(socket=gsocket, ssl=gssl, select=gselect, selectors=gselectors)
CONTEXTS = ["stdlib-thread", "shim-thread", "shim-green-asyncio", "shim-green-uvloop",
            "shim-green-tornado"]
CERTS = pathlib.Path(__file__).parent / "certs"
CERT, KEY = str(CERTS / "localhost.crt"), str(CERTS / "localhost.key")
LOOPBACK = "127.0.0.1"
SLACK = 0.5  # generous: two cores shared with other test runs

SCENARIOS = {}


def scenario(duration):
    """Register a scenario expected to take ``duration`` seconds (None: not timed)."""

    def register(fn):
        SCENARIOS[fn.__name__] = (fn, duration)
        return fn

    return register


# --- Peers and helpers (stdlib only).


@contextmanager
def later(delay, fn, *args):
    timer = threading.Timer(delay, fn, args)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()


@contextmanager
def pair(m):
    a, b = m.socket.socketpair()
    with a, b:
        yield a, b


@contextmanager
def listener(backlog=None):
    sock = stdsocket.create_server((LOOPBACK, 0), backlog=backlog)
    with sock:
        yield sock


@contextmanager
def refused():
    sock = stdsocket.socket()  # bound, never listening: connections are refused
    sock.bind((LOOPBACK, 0))
    with sock:
        yield sock.getsockname()


@contextmanager
def tls_peer(handler):
    """A stdlib TLS server thread: ``handler(tls_socket, stop_event)`` for one client."""
    srv = stdsocket.create_server((LOOPBACK, 0))
    stop = threading.Event()

    def serve():
        conn, _ = srv.accept()
        conn.settimeout(10)
        ctx = stdssl.SSLContext(stdssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(CERT, KEY)
        with ctx.wrap_socket(conn, server_side=True) as tls:
            handler(tls, stop)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield srv.getsockname()
    finally:
        stop.set()
        thread.join(10)
        srv.close()


def tls_client(m, address, timeout):
    ctx = m.ssl.create_default_context(cafile=CERT)
    raw = m.socket.create_connection(address, timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


# --- Scenarios: sockets.


@scenario(0.15)
def recv_timeout(m):
    with pair(m) as (a, b):
        a.settimeout(0.15)
        return a.recv(1)


@scenario(0)
def recv_timeout_zero(m):
    with pair(m) as (a, b):
        a.settimeout(0)
        return a.recv(1)


@scenario(0)
def recv_setblocking_false(m):
    with pair(m) as (a, b):
        a.setblocking(False)
        state = (a.gettimeout(), a.getblocking(), a.timeout)
        try:
            a.recv(1)
        except BlockingIOError as exc:
            return state, exc.errno
        return state


@scenario(0.15)
def recv_data_later_with_timeout(m):
    with pair(m) as (a, b), later(0.15, b.send, b"late"):
        a.settimeout(5)
        return a.recv(10)


@scenario(0.15)
def recv_into_blocking_data_later(m):
    with pair(m) as (a, b), later(0.15, b.send, b"late"):
        buf = bytearray(10)
        return a.recv_into(buf), bytes(buf)


@scenario(0.1)
def recv_eof_later(m):
    with pair(m) as (a, b), later(0.1, b.shutdown, stdsocket.SHUT_WR):
        return a.recv(10)


@scenario(0.3)
def sendall_total_timeout(m):
    with pair(m) as (a, b):
        a.settimeout(0.3)
        a.sendall(b"x" * (16 * 1024 * 1024))


@scenario(None)
def sendall_to_a_slow_reader(m):
    payload = bytes(range(256)) * 4096  # 1 MiB
    got = bytearray()
    with pair(m) as (a, b):

        def read():
            while len(got) < len(payload):
                got.extend(b.recv(65536))
                time.sleep(0.002)

        reader = threading.Thread(target=read)
        reader.start()
        a.settimeout(10)
        result = a.sendall(payload)
        reader.join(10)
    return result, hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()


@scenario(0.2)
def makefile_read_n(m):
    with pair(m) as (a, b), later(0.1, b.send, b"abc"), later(0.2, b.send, b"defgh\nrest"):
        with a.makefile("rb") as f:
            return f.read(6), f.readline()


@scenario(0.1)
def makefile_timeout_then_unusable(m):
    with pair(m) as (a, b):
        a.settimeout(0.1)
        with a.makefile("rb") as f:
            try:
                f.read(1)
            except TimeoutError as exc:
                first = repr(exc)
            try:
                f.read(1)
            except OSError as exc:
                return first, repr(exc)


@scenario(0)
def connect_refused(m):
    with refused() as address, m.socket.socket() as sock:
        sock.connect(address)


@scenario(0)
def connect_ex_refused_and_ok(m):
    with refused() as address, listener() as srv, m.socket.socket() as s1, m.socket.socket() as s2:
        return s1.connect_ex(address), s2.connect_ex(srv.getsockname())


@scenario(0.2)
def connect_timeout_full_backlog(m):
    with listener(backlog=0) as srv:
        fillers = [stdsocket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(srv.getsockname())
            time.sleep(0.02)
            start = time.monotonic()
            with m.socket.socket() as sock:
                sock.settimeout(0.09)
                result = sock.connect_ex(srv.getsockname())
            with m.socket.socket() as sock:
                sock.settimeout(0.2 - (time.monotonic() - start))
                try:
                    sock.connect(srv.getsockname())
                except TimeoutError as exc:
                    return result, repr(exc)
        finally:
            for filler in fillers:
                filler.close()


@scenario(0.2)
def unix_connect_full_backlog(m):
    """AF_UNIX has no "connection in progress": a full backlog makes a non-blocking connect
    fail with EAGAIN. The stdlib raises that at once for a socket with a timeout, and
    blocks in the kernel for a blocking one (the shim retries until there is room)."""
    with tempfile.TemporaryDirectory() as tmp, stdsocket.socket(stdsocket.AF_UNIX) as srv:
        path = f"{tmp}/s"
        srv.bind(path)
        srv.listen(0)
        with stdsocket.socket(stdsocket.AF_UNIX) as filler:
            filler.connect(path)  # takes the one backlog slot
            with m.socket.socket(stdsocket.AF_UNIX) as sock:
                sock.settimeout(0.2)
                try:
                    sock.connect(path)
                except BlockingIOError as exc:
                    first = repr(exc)

            def accept_two():
                for _ in range(2):
                    srv.accept()[0].close()

            with m.socket.socket(stdsocket.AF_UNIX) as sock, later(0.2, accept_two):
                sock.connect(path)
                return first, sock.getpeername() == path


@scenario(0)
def create_connection_with_source_address(m):
    with listener() as srv:
        with m.socket.create_connection(srv.getsockname(), 3, (LOOPBACK, 0)) as sock:
            conn, _ = srv.accept()
            conn.close()
            return (isinstance(sock, m.socket.socket), sock.gettimeout(),
                    sock.getpeername() == srv.getsockname(), sock.getsockname()[0])


@scenario(0)
def create_connection_localhost_by_name(m):
    with listener() as srv:
        port = srv.getsockname()[1]
        with m.socket.create_connection(("localhost", port)) as sock:
            srv.accept()[0].close()
            return sock.getpeername() == (LOOPBACK, port), sock.gettimeout()


@scenario(0)
def create_connection_refused_all_errors(m):
    with refused() as address:
        m.socket.create_connection(address, all_errors=True)


@scenario(0.15)
def accept_timeout(m):
    with m.socket.create_server((LOOPBACK, 0)) as srv:
        srv.settimeout(0.15)
        srv.accept()


@scenario(0.1)
def accept_client_later(m):
    with m.socket.create_server((LOOPBACK, 0)) as srv, stdsocket.socket() as client:
        with later(0.1, client.connect, srv.getsockname()):
            conn, addr = srv.accept()
        with conn:
            return type(conn) is m.socket.socket, conn.gettimeout(), addr == client.getsockname()


@scenario(0)
def dup_keeps_the_timeout(m):
    with pair(m) as (a, b):
        a.settimeout(2.5)
        with a.dup() as c:
            return type(c) is type(a), c.gettimeout(), c.getblocking()


@scenario(0)
def name_resolution(m):
    return (m.socket.getaddrinfo("localhost", 80, 0, stdsocket.SOCK_STREAM),
            m.socket.gethostbyname("localhost"), m.socket.gethostbyname_ex("localhost"),
            m.socket.getaddrinfo(LOOPBACK, "80", stdsocket.AF_INET))


@scenario(0)
def name_resolution_error(m):
    m.socket.getaddrinfo("localhost", "no-such-service")


# --- Scenarios: select, poll, selectors.


def names(ready, a, b):
    return [[{a: "a", b: "b"}.get(x, x) for x in lst] for lst in ready]


@scenario(0.15)
def select_timeout(m):
    with pair(m) as (a, b):
        return m.select.select([a], [], [], 0.15)


@scenario(0.1)
def select_readable_later(m):
    with pair(m) as (a, b), later(0.1, b.send, b"x"):
        return names(m.select.select([a], [], [a], None), a, b)


@scenario(0)
def select_writable_now_and_zero_timeout(m):
    with pair(m) as (a, b):
        return names(m.select.select([a], [b], [], 5), a, b), m.select.select([a], [], [], 0)


@scenario(0)
def select_negative_timeout(m):
    with pair(m) as (a, b):
        m.select.select([a], [], [], -1)


@scenario(0.15)
def poll_timeout(m):
    with pair(m) as (a, b):
        poller = m.select.poll()
        poller.register(a, stdselect.POLLIN)
        return poller.poll(150)


@scenario(0.1)
def poll_readable_later_then_modify(m):
    with pair(m) as (a, b), later(0.1, b.send, b"x"):
        poller = m.select.poll()
        poller.register(a, stdselect.POLLIN | stdselect.POLLPRI)
        first = poller.poll(None)
        poller.modify(a, stdselect.POLLOUT)
        second = poller.poll(-1)
        poller.unregister(a)
        return [(fd == a.fileno(), ev) for fd, ev in first + second], poller.poll(0)


@scenario(0.1)
def poll_hangup(m):
    with pair(m) as (a, b), later(0.1, b.shutdown, stdsocket.SHUT_RDWR):
        poller = m.select.poll()
        poller.register(a, stdselect.POLLIN)
        return [ev & (stdselect.POLLIN | stdselect.POLLHUP) for _, ev in poller.poll(2000)]


def _selector_timeout(m, name):
    with pair(m) as (a, b), getattr(m.selectors, name)() as sel:
        sel.register(a, stdselectors.EVENT_READ)
        return sel.select(0.15)


def _selector_readable_later(m, name):
    with pair(m) as (a, b), getattr(m.selectors, name)() as sel, later(0.1, b.send, b"x"):
        sel.register(a, stdselectors.EVENT_READ, "data")
        sel.register(b, stdselectors.EVENT_READ)  # nothing ever arrives on b
        return [(key.fileobj is a, key.data, ev) for key, ev in sel.select(None)]


for _name in ("DefaultSelector", "PollSelector", "SelectSelector"):
    SCENARIOS[f"{_name}_timeout"] = (functools.partial(_selector_timeout, name=_name), 0.15)
    SCENARIOS[f"{_name}_readable_later"] = (
        functools.partial(_selector_readable_later, name=_name), 0.1)


# --- Scenarios: TLS (against a stdlib TLS server thread).


def _silent(tls, stop):
    stop.wait(10)


def _echo_later(tls, stop):
    data = tls.recv(100)
    time.sleep(0.1)
    tls.sendall(data.upper())
    stop.wait(10)


@scenario(0.15)
def tls_read_timeout(m):
    with tls_peer(_silent) as address, tls_client(m, address, 5) as tls:
        tls.settimeout(0.15)
        return tls.recv(10)


@scenario(0)
def tls_read_timeout_zero(m):
    with tls_peer(_silent) as address, tls_client(m, address, 5) as tls:
        tls.settimeout(0)
        return tls.recv(10)


@scenario(0.15)
def tls_handshake_timeout(m):
    with listener() as srv:  # accepts at the TCP level, never speaks TLS
        ctx = m.ssl.create_default_context(cafile=CERT)
        raw = m.socket.create_connection(srv.getsockname(), timeout=0.15)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:  # closes raw on error
            return tls.version()


@scenario(0.1)
def tls_echo_and_makefile(m):
    with tls_peer(_echo_later) as address, tls_client(m, address, 5) as tls:
        tls.sendall(b"hello\n")
        with tls.makefile("rb") as f:
            return (isinstance(tls, m.ssl.SSLSocket), tls.gettimeout(), f.readline(),
                    tls.getpeercert()["subject"])


# --- The suite.


@pytest.mark.parametrize("name", ["socket", "ssl", "select", "selectors"])
def test_shim_module_shape(name):
    """What the scoped patcher relies on: the stdlib module, the overridden names, and
    everything else passed through; no extra public names."""
    shim, std = getattr(SHIM, name), getattr(STDLIB, name)
    assert shim.__greenasync_stdlib__ is std
    assert shim.__greenasync_overrides__
    for attr in shim.__greenasync_overrides__:
        assert attr in vars(shim) and hasattr(std, attr)
        assert getattr(shim, attr) is not getattr(std, attr)
    public = {attr for attr in vars(shim) if not attr.startswith("_")}
    assert public <= set(vars(std))
    for attr in dir(std):
        if attr not in shim.__greenasync_overrides__ and not attr.startswith("__"):
            assert getattr(shim, attr) is getattr(std, attr), attr
    assert set(dir(std)) <= set(dir(shim))


def describe(exc):
    sub = [describe(e) for e in getattr(exc, "exceptions", ())]
    return type(exc).__name__, str(exc), getattr(exc, "errno", None), sub


def observe(fn, m):
    start = time.monotonic()
    try:
        outcome = ("returned", fn(m))
    except Exception as exc:
        outcome = ("raised", describe(exc))
    return outcome, time.monotonic() - start


def run_in(context, name):
    fn = SCENARIOS[name][0]
    if context.endswith("thread"):
        box = []
        m = STDLIB if context.startswith("stdlib") else SHIM
        thread = threading.Thread(target=lambda: box.append(observe(fn, m)))
        thread.start()
        thread.join(30)
        return box[0]

    async def green():
        return await greenasync.run(observe, fn, SHIM)

    return run_on(context.rsplit("-", 1)[1], green)


_references = {}


def reference(name):
    if name not in _references:
        _references[name] = run_in("stdlib-thread", name)
    return _references[name]


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_conformance(name, context):
    outcome, elapsed = run_in(context, name)
    expected, _ = reference(name)
    assert outcome == expected
    duration = SCENARIOS[name][1]
    if duration is not None:
        assert duration - 0.002 <= elapsed < duration + SLACK, elapsed
