"""Hybrid ``ssl``: TLS sockets that park a greenasync greenlet instead of blocking the loop.

``SSLContext`` here is a subclass of the stdlib's whose ``sslsocket_class`` is the
cooperative ``SSLSocket`` below, so ``ctx.wrap_socket(sock)`` on *any* socket (a plain
stdlib one or a green one) gives a cooperative TLS socket. This matters because the stdlib
``wrap_socket`` copies ``sock.gettimeout()`` into a new, normally blocking, socket: PyMySQL's
TLS upgrade (``ctx.wrap_socket(self._sock, server_hostname=host)``) would otherwise block
the loop for every read. ``create_default_context`` and the other stdlib helpers that build
contexts are re-bound so they return green contexts.

``SSLSocket`` inherits the green socket, which keeps the OS socket non-blocking with a
C-level timeout of 0; the ``_ssl`` object over it therefore never blocks and raises
``SSLWantReadError``/``SSLWantWriteError`` instead. Each override tries the non-blocking TLS
call; on want-read/want-write, waits through the bridge for that direction; retries, with
the user's timeout kept exactly like the socket shim (``socket.timeout`` with the stdlib's
message at the deadline; timeout 0 re-raises the want error at once, as the stdlib does).
Outside green context the waits block the thread in ``poll``: stdlib behaviour.

Not covered: a *stdlib* ``SSLContext`` created elsewhere (for example one a user passes to a
client library) still makes blocking sockets; setting its ``sslsocket_class`` attribute to
this module's ``SSLSocket`` makes that one context cooperative (and stays hybrid).
"""

import ssl as _std
from time import monotonic as _monotonic

from . import StandIn as _StandIn
from . import socket as _gsocket
from .socket import _rehome
from .._bridge import turnaround as _turnaround

__greenasync_stdlib__ = _std
__greenasync_overrides__ = (
    "SSLContext", "SSLSocket", "create_default_context", "_create_default_https_context",
    "_create_unverified_context", "_create_stdlib_context", "get_server_certificate",
) + (("wrap_socket",) if hasattr(_std, "wrap_socket") else ())

_WANT = (_std.SSLWantReadError, _std.SSLWantWriteError)


def __getattr__(name):
    return getattr(_std, name)


def __dir__():
    return sorted(set(dir(_std)) | set(globals()))


_handshake_message = None


def _handshake_timeout_message():
    """The stdlib's handshake-timeout message, which embeds an ``_ssl.c`` line number that
    differs between Python builds: learn it once by timing out a real handshake against a
    peer that never answers (a socketpair; no network)."""
    global _handshake_message
    if _handshake_message is None:
        ctx = _std.SSLContext(_std.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = _std.CERT_NONE
        a, b = _gsocket._std.socketpair()  # stdlib sockets: the stdlib's own code path
        a.settimeout(1e-6)
        with b, ctx.wrap_socket(a, do_handshake_on_connect=False) as tls:
            try:
                tls.do_handshake()
            except TimeoutError as exc:
                _handshake_message = str(exc)
    return _handshake_message or "The handshake operation timed out"


class SSLSocket(_std.SSLSocket, _gsocket.socket):
    """``ssl.SSLSocket`` whose TLS operations park a greenasync greenlet."""

    _greenasync_stdlib_class = _std.SSLSocket  # isinstance() as for the stdlib class

    def _retry_tls(self, what, timeout, call, *args):
        # Try the non-blocking TLS call; on want-read/want-write, wait through the bridge
        # for that direction; retry until the timeout.
        try:
            return call(*args)
        except _WANT as exc:
            if timeout == 0.0:
                raise  # non-blocking: the stdlib raises the want error at once too
            writing = isinstance(exc, _std.SSLWantWriteError)
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            try:
                self._wait(writing, deadline)
            except TimeoutError:
                break
            try:
                return call(*args)
            except _WANT as exc:
                writing = isinstance(exc, _std.SSLWantWriteError)
        # The stdlib's messages: the handshake's names an _ssl.c line; shutdown (what=None)
        # names the direction it was waiting for.
        if what == "handshake":
            raise _gsocket._timeout_error(_handshake_timeout_message())
        what = what or ("write" if writing else "read")
        raise _gsocket._timeout_error(f"The {what} operation timed out")

    def _turn_to(self, turn):
        # As for plain sockets (green/socket.py), at the TLS level: where the connection
        # turns from writing to reading or back, turnaround() first.
        if self._turn is not turn:
            if self._turn is not None:
                _turnaround()
            self._turn = turn

    def read(self, len=1024, buffer=None):
        self._turn_to(_gsocket._READ)
        return self._retry_tls("read", self._timeout, super().read, len, buffer)

    def write(self, data):
        self._turn_to(_gsocket._WRITE)
        return self._retry_tls("write", self._timeout, super().write, data)

    def send(self, data, flags=0):
        # The stdlib's send() calls the _ssl object's write() directly (not self.write), and
        # on an unwrapped socket it calls the green socket's send(), which waits by itself.
        self._turn_to(_gsocket._WRITE)
        return self._retry_tls("write", self._timeout, super().send, data, flags)

    def do_handshake(self, block=False):
        self._check_connected()
        timeout = self._timeout
        if timeout == 0.0 and block:
            timeout = None  # the stdlib blocks for this one call
        self._retry_tls("handshake", timeout, self._sslobj.do_handshake)

    def unwrap(self):
        if self._sslobj:
            sock = self._retry_tls(None, self._timeout, self._sslobj.shutdown)
            self._sslobj = None
            return sock
        return super().unwrap()  # raises the stdlib's ValueError

    read.__doc__ = _std.SSLSocket.read.__doc__
    write.__doc__ = _std.SSLSocket.write.__doc__
    do_handshake.__doc__ = _std.SSLSocket.do_handshake.__doc__
    unwrap.__doc__ = _std.SSLSocket.unwrap.__doc__


class SSLContext(_std.SSLContext, metaclass=_StandIn):
    """``ssl.SSLContext`` whose ``wrap_socket`` returns cooperative ``SSLSocket`` objects.

    A stdlib context passed to a patched library still passes its ``isinstance`` checks
    (it then makes blocking sockets; set its ``sslsocket_class`` to ours to cooperate)."""

    sslsocket_class = SSLSocket
    _greenasync_stdlib_class = _std.SSLContext


# --- Stdlib helpers re-bound to this module's names (see ``_rehome`` in green/socket.py).

_namespace = dict(vars(_std))
_namespace.update(SSLContext=SSLContext, SSLSocket=SSLSocket, socket=_gsocket.socket,
                  create_connection=_gsocket.create_connection)

create_default_context = _rehome(_std.create_default_context, _namespace, __name__)
_create_unverified_context = _rehome(_std._create_unverified_context, _namespace, __name__)
_create_default_https_context = create_default_context
_create_stdlib_context = _create_unverified_context
get_server_certificate = _rehome(_std.get_server_certificate, _namespace, __name__)
if hasattr(_std, "wrap_socket"):  # deprecated, removed in Python 3.12
    wrap_socket = _rehome(_std.wrap_socket, _namespace, __name__)
_namespace.update((name, globals()[name]) for name in __greenasync_overrides__)
