"""A private ``redis-server`` per benchmark (never the shared one on 6379)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from redis import Redis as SyncRedis

from taskiq_dedup.testing import RedisServer

if TYPE_CHECKING:
    from collections.abc import Iterator

SERVER_ARGS = ["--maxclients", "20000"]
"""The burst benchmark's schedulers open many connections (see ``burst``)."""


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    """Start a ``redis-server`` on a free port; kill it and remove its files after."""
    server = RedisServer(extra_args=SERVER_ARGS).start()
    try:
        yield server
    finally:
        server.close()


def flush(url: str) -> None:
    """Empty the private server between runs, so every run starts alike."""
    with SyncRedis.from_url(url) as client:
        client.flushall()


def commandstats(url: str) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``)."""
    with SyncRedis.from_url(url) as client:
        info: dict[str, Any] = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in info.items()
        if isinstance(stats, dict)
    }
