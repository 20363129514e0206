"""A small in-house *sync* SDK, as an application team would write it, for the wrap() tests.

``KVClient`` talks a one-line text protocol to ``KVServer`` over real TCP sockets, keeps a
little pool of connections behind a ``threading.Lock``, sleeps with ``time.sleep``, and its
methods call each other (``get_many`` calls ``get``; ``get_or_set`` calls ``get`` then
``set``). Nothing here knows about greenasync: the tests wrap it from outside.

``KVServer`` is the in-test server: a ``socketserver`` thread (its sockets come from the
stdlib ``socketserver`` module, which greenasync never patches). It records what the tests
assert on: the most requests it had in flight at once, and connections a client closed
while a ``SLEEP`` was in progress.
"""

import contextlib
import socket
import socketserver
import threading
import time


class KVError(Exception):
    """An error reply from the server."""


class KVServer:
    """Protocol, one line each way: ``PING``, ``SET k v``, ``GET k``, ``DEL k``, ``INCR k``,
    ``KEYS prefix``, ``SLEEP seconds``; replies ``+text``, ``$value``, ``-`` (nil) or ``!error``.
    """

    def __init__(self):
        self.data = {}
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.aborted = 0  # clients that hung up during a SLEEP
        self.commands = 0
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                for raw in self.rfile:
                    reply = outer._handle(raw.decode().rstrip("\n"), self.connection)
                    if reply is None:
                        return
                    try:
                        self.wfile.write(reply.encode() + b"\n")
                    except OSError:
                        return

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True
            request_queue_size = 512  # the default backlog of 5 stalls bursts of connects

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, line, conn):
        cmd, _, rest = line.partition(" ")
        with self.lock:
            self.commands += 1
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if cmd == "SLEEP":
                deadline = time.monotonic() + float(rest)
                conn.settimeout(0.01)
                try:
                    while time.monotonic() < deadline:
                        # Watch for the client hanging up meanwhile (EOF on a peek).
                        try:
                            if not conn.recv(1, socket.MSG_PEEK):
                                with self.lock:
                                    self.aborted += 1
                                return None
                        except TimeoutError:
                            pass
                finally:
                    conn.settimeout(None)
                return "+OK"
            with self.lock:
                if cmd == "PING":
                    return "+PONG"
                if cmd == "SET":
                    key, _, value = rest.partition(" ")
                    self.data[key] = value
                    return "+OK"
                if cmd == "GET":
                    return "-" if rest not in self.data else "$" + self.data[rest]
                if cmd == "DEL":
                    return "+%d" % (self.data.pop(rest, None) is not None)
                if cmd == "INCR":
                    self.data[rest] = str(int(self.data.get(rest, "0")) + 1)
                    return "+" + self.data[rest]
                if cmd == "KEYS":
                    return "+" + " ".join(sorted(k for k in self.data if k.startswith(rest)))
            return "!unknown command " + cmd
        finally:
            with self.lock:
                self.active -= 1


class KVClient:
    """Client for :class:`KVServer`. Thread-safe: each call checks a connection out of a pool."""

    DEFAULT_TIMEOUT = 5.0
    Error = KVError

    def __init__(self, host="127.0.0.1", port=0, *, timeout=DEFAULT_TIMEOUT, connect=False,
                 warmup=0.0):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.in_flight = 0  # calls between send and reply; the finally below keeps it exact
        self.discarded = 0  # connections closed because a call failed or was interrupted
        self._idle = []
        self._lock = threading.Lock()
        if warmup:
            time.sleep(warmup)  # a slow handshake, say: constructor "I/O" with time.sleep
        if connect:
            self.ping()  # eager connect: constructor I/O

    @classmethod
    def from_url(cls, url, **kwargs):
        """Build a client from ``kv://host:port``."""
        host, port = cls.parse_url(url)
        return cls(host, port, **kwargs)

    @staticmethod
    def parse_url(url):
        """Split ``kv://host:port`` into ``(host, port)``."""
        host, _, port = url.removeprefix("kv://").partition(":")
        return host, int(port)

    @property
    def address(self):
        """The server's ``(host, port)``."""
        return (self.host, self.port)

    # --- I/O core -------------------------------------------------------------------------

    def _checkout(self):
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return socket.create_connection((self.host, self.port), timeout=self.timeout)

    def command(self, *parts):
        """Send one command and return its decoded reply."""
        sock = self._checkout()
        with self._lock:
            self.in_flight += 1
        ok = False
        try:
            sock.sendall(" ".join(map(str, parts)).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buf += chunk
            ok = True
        finally:
            with self._lock:
                self.in_flight -= 1
                if ok:
                    self._idle.append(sock)
                else:
                    # Half-used connection (error, timeout, cancellation): never reuse it.
                    self.discarded += 1
                    sock.close()
        reply = buf.decode().rstrip("\n")
        if reply.startswith("!"):
            raise KVError(reply[1:])
        return None if reply == "-" else reply[1:]

    def close(self):
        """Close the pooled connections."""
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- commands -------------------------------------------------------------------------

    def ping(self):
        """Return ``"PONG"``."""
        return self.command("PING")

    def set(self, key, value):
        """Store ``value`` (a str without newlines) under ``key``."""
        return self.command("SET", key, value) == "OK"

    def get(self, key):
        """The value of ``key``, or None."""
        return self.command("GET", key)

    def delete(self, key):
        """Delete ``key``; True if it existed."""
        return self.command("DEL", key) == "1"

    def incr(self, key):
        """Atomically increment ``key`` on the server; return the new value."""
        return int(self.command("INCR", key))

    def keys(self, prefix=""):
        """Keys starting with ``prefix``, sorted."""
        return self.command("KEYS", prefix).split()

    def get_many(self, keys):
        """Values of several keys (one ``get`` each: an internal sync call)."""
        return [self.get(k) for k in keys]

    def get_or_set(self, key, default):
        """Return the value of ``key``, setting it to ``default`` first if missing."""
        value = self.get(key)
        if value is None:
            self.set(key, default)
            value = default
        return value

    def remote_sleep(self, seconds):
        """Ask the server to wait ``seconds`` before replying (a slow call)."""
        return self.command("SLEEP", seconds)

    def pause(self, seconds):
        """Sleep locally with ``time.sleep``, then ping: returns the time it took."""
        start = time.monotonic()
        time.sleep(seconds)
        self.ping()
        return time.monotonic() - start

    def iter_items(self, prefix=""):
        """Generator of ``(key, value)``: one ``get`` per step."""
        for key in self.keys(prefix):
            yield key, self.get(key)

    def find(self, prefix=""):
        """A lazy :class:`Cursor` over ``prefix`` (no I/O until iterated)."""
        return Cursor(self, prefix)

    @contextlib.contextmanager
    def reserved(self, key):
        """Hold ``key`` set to ``"reserved"`` while the ``with`` block runs."""
        self.set(key, "reserved")
        try:
            yield key
        finally:
            self.delete(key)

    def batch(self):
        """A :class:`Batch` of SETs, sent when its ``with`` block exits cleanly."""
        return Batch(self)

    def namespace(self, name):
        """The :class:`Namespace` ``name`` (no I/O)."""
        return Namespace(self, name)

    def __getitem__(self, name):
        return Namespace(self, name)

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return Namespace(self, name)


class Namespace:
    """Keys under ``name:`` (``client["users"]`` or ``client.users``); nests the same way."""

    def __init__(self, client, name):
        self.client = client
        self.name = name

    def get(self, key):
        """The value of ``name:key``."""
        return self.client.get(f"{self.name}:{key}")

    def set(self, key, value):
        """Set ``name:key``."""
        return self.client.set(f"{self.name}:{key}", value)

    def __getitem__(self, sub):
        return Namespace(self.client, f"{self.name}:{sub}")

    def __eq__(self, other):
        if not isinstance(other, Namespace):
            return NotImplemented
        return (self.client, self.name) == (other.client, other.name)

    __hash__ = None


class Cursor:
    """Iterates ``(key, value)`` pairs under a prefix, PyMongo-cursor style: ``sort`` and
    ``limit`` return the cursor itself; the first ``next`` fetches the keys."""

    def __init__(self, client, prefix):
        self.client = client
        self.prefix = prefix
        self._limit = None
        self._reverse = False
        self._keys = None

    def limit(self, n):
        """Yield at most ``n`` pairs."""
        self._limit = n
        return self

    def sort(self, reverse=False):
        """Order by key, descending if ``reverse``."""
        self._reverse = reverse
        return self

    def clone(self):
        """A new, unstarted cursor with the same options (builder style)."""
        return Cursor(self.client, self.prefix).limit(self._limit).sort(self._reverse)

    def rewind(self):
        """Start over (returns None, as in-place APIs often do)."""
        self._keys = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._keys is None:
            keys = sorted(self.client.keys(self.prefix), reverse=self._reverse)
            self._keys = keys[: self._limit] if self._limit is not None else keys
        if not self._keys:
            raise StopIteration
        key = self._keys.pop(0)
        return key, self.client.get(key)


class Batch:
    """Buffered SETs, sent by ``execute()`` or on a clean ``with`` exit."""

    def __init__(self, client):
        self.client = client
        self.pending = []
        self.sent = 0

    def set(self, key, value):
        """Buffer a SET; returns the batch."""
        self.pending.append((key, value))
        return self

    def execute(self):
        """Send the buffered SETs; return how many were sent."""
        pending, self.pending = self.pending, []
        for key, value in pending:
            self.client.set(key, value)
        self.sent += len(pending)
        return len(pending)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.execute()
        return False
