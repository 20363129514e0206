"""Hybrid ``socket``: sockets that park a greenasync greenlet instead of blocking the loop.

How it works: the OS socket underneath is *always* non-blocking (its C-level timeout is 0)
and the timeout the user set lives in a Python attribute. Every operation that can block
tries the non-blocking syscall first; on would-block it raises ``BlockingIOError`` at once if
the user's timeout is 0, otherwise it waits through the bridge (``wait_readable`` /
``wait_writable``: the greenlet parks in green context, the thread blocks in ``poll``
anywhere else) and retries, raising ``socket.timeout("timed out")`` at the deadline. That is
exactly what CPython's own socket code does for a socket with a timeout, so one code path
gives stdlib behaviour in plain threads and cooperation in a greenlet, and a socket made in
one context (a constructor, a pymongo monitor thread) keeps working in the other.

Name resolution of a non-numeric host (``getaddrinfo("localhost", ...)``, ``connect`` to a
host name) runs in a thread through ``to_thread`` while the greenlet parks; numeric hosts
and ``None`` never leave the loop thread. Outside green context the stdlib is called as is.

The stdlib helpers that only need to *construct* sockets or resolve names
(``create_connection``, ``create_server``, ``socketpair``, ``fromfd``, ``getfqdn``) are the
stdlib's own functions re-bound to this module's names (``_rehome``), so their behaviour,
error chaining and version differences stay the stdlib's.
"""

import _socket
import socket as _std
from errno import EAGAIN as _EAGAIN, EBADF as _EBADF, EINPROGRESS as _EINPROGRESS
from errno import EISCONN as _EISCONN
from errno import EWOULDBLOCK as _EWOULDBLOCK
from math import ceil as _ceil
from os import strerror as _strerror
from time import monotonic as _monotonic
from types import FunctionType as _FunctionType

# Private names only: a shim exposes the stdlib's names plus its overrides, nothing else.
from .._bridge import cancel_wait as _cancel_wait, forget_fd as _forget_fd
from . import StandIn as _StandIn
from .._bridge import in_green_context as _in_green_context, sleep as _sleep
from .._bridge import to_thread as _to_thread, wait_socket as _wait_socket
from .._bridge import turnaround as _turnaround

__greenasync_stdlib__ = _std
__greenasync_overrides__ = (
    "socket", "create_connection", "create_server", "socketpair", "fromfd",
    "getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo",
    "getfqdn",
)

_C = _socket.socket  # the C base class: its methods are the raw (here non-blocking) syscalls
_family = _C.family.__get__  # the raw int family, without the stdlib's enum conversion
_timeout_error = _std.timeout


def __getattr__(name):
    return getattr(_std, name)


def __dir__():
    return sorted(set(dir(_std)) | set(globals()))


def _timeout_value(sock, value):
    """What the stdlib's ``gettimeout()`` returns after ``settimeout(value)``, computed
    without a syscall for ordinary numbers (CPython keeps whole nanoseconds, rounded up)."""
    if value is None:
        return None
    kind = type(value)
    if (kind is float or kind is int) and 0 <= value <= 1e9:  # NaN fails the comparison
        ns = value * 1_000_000_000 if kind is int else _ceil(value * 1e9)
        return float(ns // 1_000_000_000) if ns % 1_000_000_000 == 0 else ns / 1e9
    # Anything else (bool, negative, NaN, huge, wrong type): let the C code parse it on the
    # socket itself, so errors are the stdlib's own; then put the OS socket back to
    # non-blocking.
    _C.settimeout(sock, value)
    try:
        return _C.gettimeout(sock)
    finally:
        _C.settimeout(sock, 0.0)


_READ, _WRITE = "read", "write"  # socket._turn


def _cooperative(op, writing, keywords=False):
    """Wrap C method ``op``: try the non-blocking call; on would-block, wait through the
    bridge; retry (until the user's timeout). Only ``recv_into``/``recvfrom_into`` take
    keyword arguments in C; the others skip building a kwargs dict on every call. Where the
    socket turns from sending to reading or back, ``turnaround()`` runs first (see
    greenasync/_bridge.py); ``_turn`` remembers the last direction."""
    # (Where the op raises would-block, result stays None: no send or receive returns None.)
    opposite, direction = (_READ, _WRITE) if writing else (_WRITE, _READ)
    if keywords:
        def method(self, *args, **kwargs):
            if self._turn is opposite:
                _turnaround()
            try:
                result = op(self, *args, **kwargs)
            except BlockingIOError:
                if self._timeout == 0.0:
                    raise  # a non-blocking socket: the stdlib raises at once too
                result = None
            if result is None:
                result = self._retry_io(op, writing, args, kwargs)
            self._turn = direction
            return result
    else:
        def method(self, *args):
            if self._turn is opposite:
                _turnaround()
            try:
                result = op(self, *args)
            except BlockingIOError:
                if self._timeout == 0.0:
                    raise
                result = None
            if result is None:
                result = self._retry_io(op, writing, args, {})
            self._turn = direction
            return result

    method.__name__ = method.__qualname__ = op.__name__
    method.__doc__ = op.__doc__
    return method


class socket(_std.socket, metaclass=_StandIn):
    """``socket.socket`` whose blocking operations park a greenasync greenlet; outside a
    greenlet it behaves exactly like the stdlib class (it is a subclass of it, and
    ``isinstance(stdlib_socket, socket)`` is true as well)."""

    __slots__ = ("_timeout", "_turn", "_epoll_id")
    _greenasync_stdlib_class = _std.socket

    def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
        super().__init__(family, type, proto, fileno)
        # The C layer has just applied the stdlib's rule for the initial timeout (the
        # default timeout, or 0 for SOCK_NONBLOCK): adopt it as the user's timeout, and
        # make the OS socket non-blocking for good.
        self._timeout = _C.gettimeout(self)
        self._turn = None  # _READ or _WRITE: the direction of the last completed operation
        self._epoll_id = 0  # the epoll_id of the hub whose epoll set has the fd (see watch_fd)
        _C.settimeout(self, 0.0)

    def _real_close(self, _ss=_C):
        # A greenlet parked on this fd would never wake once it is closed, and its stale
        # registration would break the next socket that reuses the fd number: wake it with
        # the error a blocking call gets when its socket is closed under it.
        fd = _C.fileno(self)
        if fd >= 0:
            _cancel_wait(fd, OSError(_EBADF, "the socket was closed while a greenlet waited on it"))
            _forget_fd(fd)
        super()._real_close(_ss)

    # Timeouts: plain attribute work, because redis-py and pymongo set one before many reads.
    def settimeout(self, value):
        timeout = _timeout_value(self, value)
        if _C.fileno(self) < 0:
            _C.settimeout(self, value)  # closed: the stdlib raises EBADF here
        self._timeout = timeout

    def gettimeout(self):
        return self._timeout

    def setblocking(self, flag):
        if _C.fileno(self) < 0:
            _C.setblocking(self, flag)  # closed: the stdlib raises EBADF here
        self._timeout = None if flag else 0.0

    def getblocking(self):
        return self._timeout != 0.0

    timeout = property(gettimeout, doc="the socket timeout")
    settimeout.__doc__ = _std.socket.settimeout.__doc__
    gettimeout.__doc__ = _std.socket.gettimeout.__doc__
    setblocking.__doc__ = _std.socket.setblocking.__doc__
    getblocking.__doc__ = _std.socket.getblocking.__doc__

    def _wait(self, writing, deadline):
        """Wait until the fd is ready, raising ``socket.timeout`` at ``deadline`` (an
        absolute ``time.monotonic()``; None waits forever)."""
        fd = _C.fileno(self)
        if deadline is None:
            _wait_socket(self, fd, writing, None)
            return
        while True:
            remaining = deadline - _monotonic()
            if remaining <= 0:
                raise _timeout_error("timed out")
            if _wait_socket(self, fd, writing, remaining):
                return
            # The loop's timer fired; re-check against our clock (a timer may fire early).

    def _retry_io(self, op, writing, args, kwargs):
        timeout = self._timeout
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            self._wait(writing, deadline)
            try:
                return op(self, *args, **kwargs)
            except BlockingIOError:
                pass  # readiness was spurious (another reader won the race): wait again

    recv = _cooperative(_C.recv, False)
    recv_into = _cooperative(_C.recv_into, False, keywords=True)
    recvfrom = _cooperative(_C.recvfrom, False)
    recvfrom_into = _cooperative(_C.recvfrom_into, False, keywords=True)
    send = _cooperative(_C.send, True)
    sendto = _cooperative(_C.sendto, True)
    _accept = _cooperative(_C._accept, False)
    if hasattr(_C, "recvmsg"):
        recvmsg = _cooperative(_C.recvmsg, False)
        recvmsg_into = _cooperative(_C.recvmsg_into, False)
    if hasattr(_C, "sendmsg"):
        sendmsg = _cooperative(_C.sendmsg, True)

    def sendall(self, data, flags=0):
        # As in CPython >= 3.5, the timeout bounds the whole call, not each send().
        timeout = self._timeout
        if self._turn is _READ:
            _turnaround()
        try:
            sent = _C.send(self, data, flags)
        except BlockingIOError:
            if timeout == 0.0:
                raise
            sent = 0
        with memoryview(data) as view, view.cast("B") as rest:
            total = len(rest)
            if sent == total:
                self._turn = _WRITE
                return
            deadline = None if timeout is None else _monotonic() + timeout
            while sent < total:
                if deadline is not None and _monotonic() >= deadline:
                    raise _timeout_error("timed out")
                try:
                    sent += _C.send(self, rest[sent:], flags)
                    continue
                except BlockingIOError:
                    if timeout == 0.0:
                        raise
                self._wait(True, deadline)
            self._turn = _WRITE

    sendall.__doc__ = _C.sendall.__doc__

    def accept(self):
        """accept() -> (socket object, address info); the socket is a greenasync socket."""
        fd, addr = self._accept()
        # The module-level class, not type(self): SSLSocket has no public constructor
        # (ssl.SSLSocket.accept wraps what we return).
        return socket(self.family, self.type, self.proto, fileno=fd), addr

    def connect(self, address):
        """connect(address): like the stdlib; waits cooperatively in a greenlet."""
        self._connect(address, True)

    def connect_ex(self, address):
        """connect_ex(address) -> errno; on timeout returns EWOULDBLOCK, like the stdlib."""
        return self._connect(address, False)

    def _connect(self, address, raise_error):
        # connect = non-blocking connect + wait writable + SO_ERROR: what the C code does
        # for a socket with a timeout, done here for every timeout except 0.
        if _in_green_context():
            address = _resolve(self, address)
        timeout = self._timeout
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            err = _C.connect_ex(self, address)
            if err == _EAGAIN and timeout is None and _family(self) == _std.AF_UNIX:
                # A full AF_UNIX backlog: the stdlib's blocking connect would block in the
                # kernel, and there is no readiness to wait for; retry after a short sleep.
                _sleep(0.005)
                continue
            break
        if err == _EINPROGRESS and timeout != 0.0:
            try:
                self._wait(True, deadline)
            except TimeoutError:
                if raise_error:
                    raise
                return _EWOULDBLOCK  # what the stdlib's connect_ex returns on timeout
            err = _C.getsockopt(self, _std.SOL_SOCKET, _std.SO_ERROR)
            if err == _EISCONN:
                err = 0
        if err and raise_error:
            raise OSError(err, _strerror(err))  # OSError() picks the subclass, as the C code
        return err

    def sendfile(self, file, offset=0, count=None):
        # The stdlib's os.sendfile() path waits in its own selector (blocking the thread);
        # in a greenlet use its send()-based path, which goes through our send().
        if _in_green_context():
            return self._sendfile_use_send(file, offset, count)
        return super().sendfile(file, offset, count)

    sendfile.__doc__ = _std.socket.sendfile.__doc__


# --- Name resolution: numeric hosts stay on the loop thread, the rest go to a thread.

def _is_numeric(host):
    try:
        _socket.getaddrinfo(host, None, 0, 0, 0, _std.AI_NUMERICHOST)
        return True
    except Exception:  # not numeric, or not a valid host at all (the real call says which)
        return False


def _resolve(sock, address):
    # The C connect() resolves a host name itself, blocking; resolve it in a thread first.
    if (type(address) is tuple and len(address) >= 2
            and isinstance(address[0], (str, bytes))
            and address[0] not in ("", "<broadcast>", b"", b"<broadcast>")
            and _family(sock) in (_std.AF_INET, _std.AF_INET6)
            and not _is_numeric(address[0])):
        infos = _to_thread(_socket.getaddrinfo, address[0], None, _family(sock), _std.SOCK_DGRAM)
        return (infos[0][4][0],) + address[1:]
    return address


def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    if host is not None and _in_green_context() and not _is_numeric(host):
        return _to_thread(_std.getaddrinfo, host, port, family, type, proto, flags)
    return _std.getaddrinfo(host, port, family, type, proto, flags)


def _in_thread_unless(fn, local):
    """The stdlib resolver ``fn``, run in a thread in green context unless ``local(*args)``
    says the answer needs no lookup."""

    def resolver(*args):
        if _in_green_context() and not local(*args):
            return _to_thread(fn, *args)
        return fn(*args)

    resolver.__name__ = resolver.__qualname__ = fn.__name__
    resolver.__doc__ = fn.__doc__
    return resolver


gethostbyname = _in_thread_unless(_std.gethostbyname, _is_numeric)
gethostbyname_ex = _in_thread_unless(_std.gethostbyname_ex, _is_numeric)
# A reverse lookup may query DNS even for a numeric address.
gethostbyaddr = _in_thread_unless(_std.gethostbyaddr, lambda address: False)
getnameinfo = _in_thread_unless(_std.getnameinfo,
                                lambda sockaddr, flags: flags & _std.NI_NUMERICHOST)
getaddrinfo.__doc__ = _std.getaddrinfo.__doc__


# --- Stdlib helpers re-bound to this module's names.

_namespace = dict(vars(_std))


def _rehome(fn, namespace, module=__name__):
    """The stdlib function ``fn`` with its global names (``socket``, ``getaddrinfo``, ...)
    looked up in ``namespace`` instead: same code, same semantics, our sockets."""
    new = _FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    new.__kwdefaults__ = fn.__kwdefaults__
    new.__doc__ = fn.__doc__
    new.__qualname__ = fn.__qualname__
    new.__module__ = module
    return new


create_connection = _rehome(_std.create_connection, _namespace)
create_server = _rehome(_std.create_server, _namespace)
socketpair = _rehome(_std.socketpair, _namespace)
fromfd = _rehome(_std.fromfd, _namespace)
getfqdn = _rehome(_std.getfqdn, _namespace)

_namespace.update((name, globals()[name]) for name in __greenasync_overrides__)
