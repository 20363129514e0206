"""A TCP proxy that misbehaves on command, for the fault-injection tests.

It runs its own asyncio loop in a thread of the test process, so a client loop that blocked
would not block the proxy too (the test would see the stall instead of a deadlock). Each
client connection gets its own upstream connection; the ``mode`` applies to server->client
data from the moment it is set:

``pass``      forward as is
``delay``     forward each chunk ``delay`` seconds late
``truncate``  forward half of the next chunk, then close the client side (FIN)
``reset``     on the next chunk, reset the client connection (RST, SO_LINGER 0)
``stall``     swallow replies; connections stay open and silent
``refuse``    new connections are accepted and reset at once (old ones pass)
"""

import asyncio
import socket
import struct
import threading


class FaultProxy:
    def __init__(self, upstream_host, upstream_port):
        self.upstream = (upstream_host, upstream_port)
        self.mode = "pass"
        self.delay = 0.0
        self.connections = 0
        self.faults = 0  # chunks or connections the mode acted on
        self._loop = asyncio.new_event_loop()
        self._writers = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fault proxy did not start")

    def set(self, mode, delay=0.0):
        self.delay = delay
        self.mode = mode

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader, writer):
        self.connections += 1
        if self.mode == "refuse":
            self.faults += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _reset(writer)
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(self._pump(reader, up_writer, False),
                                 self._pump(up_reader, writer, True),
                                 return_exceptions=True)
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pump(self, reader, writer, replies):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if replies:
                    mode = self.mode
                    if mode == "delay":
                        await asyncio.sleep(self.delay)
                    elif mode == "stall":
                        self.faults += 1
                        continue
                    elif mode == "truncate":
                        self.faults += 1
                        writer.write(data[:max(1, len(data) // 2)])
                        await writer.drain()
                        writer.close()
                        break
                    elif mode == "reset":
                        self.faults += 1
                        _reset(writer)
                        break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()

    def close(self):
        async def stop():
            self._server.close()
            for w in list(self._writers):
                w.close()
            await asyncio.sleep(0)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def _reset(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.close()
