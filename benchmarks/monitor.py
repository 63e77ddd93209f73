"""Counting the round trips a piece of code makes, with ``MONITOR`` on a private server.

``MONITOR`` shows every command a client sends, and marks the commands a Lua
script runs inside the server as ``lua``; counting the others counts round
trips. It slows the server, so it runs in a separate, untimed pass.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from typing import TYPE_CHECKING

from redis import Redis as SyncRedis

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

START_TIMEOUT = 10.0
HANDSHAKE = frozenset({"HELLO", "CLIENT", "AUTH", "SELECT"})
"""Sent once when a connection opens (e.g. by the sentinel's client): not counted."""


class CommandLog:
    """Collects the commands clients send while a ``MONITOR`` runs in a thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sentinel = f"bench-monitor-stop-{uuid.uuid4().hex}"
        self.client_commands: Counter[str] = Counter()
        self.script_commands: Counter[str] = Counter()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._error: BaseException | None = None

    def _watch(self) -> None:
        try:
            with (
                SyncRedis.from_url(self.url, socket_timeout=None) as client,
                client.monitor() as monitor,
            ):
                self._ready.set()
                while True:
                    command = monitor.next_command()
                    words = str(command["command"]).split()
                    name = words[0].upper() if words else "?"
                    if command.get("client_type") == "lua":
                        self.script_commands[name] += 1
                    elif self.sentinel in str(command["command"]):
                        return
                    elif name not in HANDSHAKE:
                        self.client_commands[name] += 1
        except BaseException as exc:  # reported by stop()
            self._error = exc
            self._ready.set()

    def start(self) -> None:
        """Start monitoring; return once ``MONITOR`` is active."""
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise TimeoutError("MONITOR did not start")

    def stop(self) -> None:
        """Send the sentinel and wait for the monitor to read up to it."""
        with SyncRedis.from_url(self.url) as client:
            client.echo(self.sentinel)
        self._thread.join(START_TIMEOUT)
        if self._error is not None:
            raise self._error


async def count_round_trips(
    url: str,
    operation: Callable[[int], Awaitable[object]],
    operations: int,
) -> dict[str, object]:
    """Run ``operation(i)`` ``operations`` times under ``MONITOR``; count per operation."""
    log = CommandLog(url)
    log.start()
    try:
        for index in range(operations):
            await operation(index)
    finally:
        log.stop()
    client_total = sum(log.client_commands.values())
    script_total = sum(log.script_commands.values())
    return {
        "round_trips_per_op": client_total / operations,
        "commands_in_scripts_per_op": script_total / operations,
        "client_commands": dict(log.client_commands),
        "script_commands": dict(log.script_commands),
    }
