"""Small helpers shared by the async tests (tests/ is on sys.path via conftest)."""

import asyncio
import threading
import time

from pymongo.monitoring import ConnectionPoolListener


async def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.002)


def start_thread(fn, *args):
    """Run ``fn`` in a new OS thread; return a future (of the running loop) for its result."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(result, exc):
        if not fut.done():
            fut.set_exception(exc) if exc is not None else fut.set_result(result)

    def body():
        try:
            result, exc = fn(*args), None
        except BaseException as e:  # reported to the test through the future
            result, exc = None, e
        try:
            loop.call_soon_threadsafe(settle, result, exc)
        except RuntimeError:
            pass  # the loop is gone: the test already failed

    threading.Thread(target=body, daemon=True).start()
    return fut


def start_sync_writers(client, prefix, errors, threads=4, keys=100):
    """Plain threads doing SET/GET through a sync redis client; a wrong reply or an error
    is appended to ``errors``. Returns the started threads (join them)."""

    def work(tid):
        try:
            for i in range(keys):
                key = f"{prefix}t{tid}:{i}"
                client.set(key, key)
                if client.get(key) != key.encode():
                    errors.append(key)
        except Exception as exc:  # reported by the caller through `errors`
            errors.append(exc)

    started = [threading.Thread(target=work, args=(tid,)) for tid in range(threads)]
    for thread in started:
        thread.start()
    return started


class PoolStats(ConnectionPoolListener):
    """CMAP events of the application pool (monitor connections publish none)."""

    def __init__(self):
        self._lock = threading.Lock()  # plain threads publish events too
        self.created = self.closed = self.max_open = 0
        self.checked_out = self.max_checked_out = 0

    def connection_created(self, event):
        with self._lock:
            self.created += 1
            self.max_open = max(self.max_open, self.created - self.closed)

    def connection_closed(self, event):
        with self._lock:
            self.closed += 1

    def connection_checked_out(self, event):
        with self._lock:
            self.checked_out += 1
            self.max_checked_out = max(self.max_checked_out, self.checked_out)

    def connection_checked_in(self, event):
        with self._lock:
            self.checked_out -= 1

    # The listener interface requires these; nothing to record.
    def pool_created(self, event):
        pass

    def pool_ready(self, event):
        pass

    def pool_cleared(self, event):
        pass

    def pool_closed(self, event):
        pass

    def connection_ready(self, event):
        pass

    def connection_check_out_started(self, event):
        pass

    def connection_check_out_failed(self, event):
        pass
