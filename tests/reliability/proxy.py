"""A TCP proxy on 127.0.0.1 that can delay traffic: Redis latency spikes on demand.

It runs an asyncio server in a background thread, so synchronous test code can
switch delays on and off while processes talk to Redis through it. While a
delay is set, every chunk read in either direction waits a random
``uniform(low, high)`` seconds before it is forwarded (in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading

from tests.support.redis_server import free_port

START_TIMEOUT = 10.0
CHUNK = 65536


class LatencyProxy:
    """Forwards ``127.0.0.1:<port>`` to ``127.0.0.1:<upstream_port>``."""

    def __init__(self, upstream_port: int, *, seed: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._random = random.Random(seed)
        self._delay: tuple[float, float] | None = None
        self._drop_replies = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.connections = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def set_delay(self, low: float, high: float) -> None:
        """Delay each chunk by ``uniform(low, high)`` seconds from now on."""
        self._delay = (low, high)

    def clear_delay(self) -> None:
        self._delay = None

    def drop_next_reply(self) -> None:
        """Lose the next chunk Redis sends and cut that connection: the command
        ran on the server, but the client sees only a connection error."""
        self._drop_replies = True

    def start(self) -> LatencyProxy:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError("latency proxy did not start")
        return self

    def close(self) -> None:
        """Stop listening, drop every connection and join the thread."""
        if self._stopped is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(START_TIMEOUT)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self._ready.set()
        async with server:
            await self._stopped.wait()
        for writer in list(self._writers):
            writer.close()  # both pumps of each connection see EOF and end
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=START_TIMEOUT)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer, replies=True)
            )
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                end.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool = False
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(CHUNK):
                if replies and self._drop_replies:
                    self._drop_replies = False
                    break
                delay = self._delay
                if delay is not None:
                    await asyncio.sleep(self._random.uniform(*delay))
                writer.write(chunk)
                await writer.drain()
        # One side closed: close the other, so the peer sees it too.
        writer.close()
