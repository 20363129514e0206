"""A throwaway ``redis-server`` for tests and benchmarks: a free loopback port, no
persistence, stopped (and its directory removed) by ``stop()`` or ``with``.

Used by greenasync's own tests (a private Redis when none is reachable, one per mode for
redis-py's suite, which flushes its server) and by the benchmarks (extra arguments such as
``--maxclients``, and a soft fd limit large enough for them: ``nofile=``). Needs the
``redis-server`` binary.
"""

import resource
import shutil
import socket
import subprocess
import tempfile
import time

__all__ = ["PrivateRedis", "free_port", "reachable", "raise_nofile"]


def reachable(host, port, timeout=0.5):
    """True if a TCP connection to ``host:port`` succeeds within ``timeout`` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port():
    """A loopback port free now (another process may take it before it is used)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raise_nofile(wanted):
    """Raise this process's soft RLIMIT_NOFILE towards ``wanted`` (up to the hard limit);
    return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class PrivateRedis:
    """``redis-server --bind 127.0.0.1 --port <free> --save "" --appendonly no`` plus
    ``extra_args``; ``url`` is its ``redis://`` URL. ``port``: a given port instead of a free
    one (a restart on the same port). ``nofile``: the server's soft fd limit (for a
    ``--maxclients`` beyond the inherited one)."""

    def __init__(self, *extra_args, port=None, nofile=None):
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed (Debian: apt-get install "
                               "redis-server); a private Redis cannot be started")
        self.port = free_port() if port is None else port
        self.dir = tempfile.TemporaryDirectory(prefix="greenasync-redis-")
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.dir.name, *extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=(lambda: raise_nofile(nofile)) if nofile else None,
        )
        deadline = time.monotonic() + 10
        while not reachable("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("could not start a private redis-server")
            time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args):
        """One command on a fresh connection (plain redis-py, decoded replies)."""
        import redis

        with redis.Redis(port=self.port, socket_timeout=10, decode_responses=True) as r:
            return r.execute_command(*args)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
