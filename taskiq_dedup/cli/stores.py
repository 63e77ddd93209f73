"""Where taskiq-redis's schedule stores keep their schedules, recognised without importing it.

``ListRedisScheduleSource`` keeps each schedule under ``<prefix>:data:<id>``;
``RedisScheduleSource`` under ``<prefix>:<id>``. Both hold a redis-py connection
pool. These are the stores' own keys (the user's configuration), not this
package's, so they do not come from ``keys.KeySpace``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.asyncio import ConnectionPool, Redis

from taskiq_dedup.broker_checks import is_kind

if TYPE_CHECKING:
    from taskiq import ScheduleSource

LIST_STORES = ("ListRedisScheduleSource",)
"""Stores keeping each schedule under ``<prefix>:data:<id>``."""

KEY_STORES = ("RedisScheduleSource",)
"""Stores keeping each schedule under ``<prefix>:<id>``."""

_GLOB = re.compile(r"([*?\[\]\\])")


@dataclass(frozen=True)
class Store:
    """A taskiq-redis store: its source, the pattern of its schedules' keys, its pool."""

    source: ScheduleSource
    pattern: str
    pool: ConnectionPool

    def client(self) -> Redis:
        """Return a client on the store's own pool."""
        return Redis(connection_pool=self.pool)


def store_of(source: ScheduleSource) -> Store | None:
    """Return ``source`` as a ``Store`` if it is a taskiq-redis store on one server."""
    if is_kind(source, LIST_STORES):
        prefix, pool, layout = getattr(source, "_prefix", None), "_connection_pool", "{}:data:*"
    elif is_kind(source, KEY_STORES):
        prefix, pool, layout = getattr(source, "prefix", None), "connection_pool", "{}:*"
    else:
        return None
    connection_pool = getattr(source, pool, None)
    if not isinstance(prefix, str) or not isinstance(connection_pool, ConnectionPool):
        return None
    return Store(source, layout.format(_GLOB.sub(r"\\\1", prefix)), connection_pool)
