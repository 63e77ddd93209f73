"""Private ``redis-server`` processes for the test suite (``taskiq_dedup.testing``).

The launcher lives in the package so the demo and the benchmarks use the same one;
this module adds only what is particular to the suite.
"""

from __future__ import annotations

import os

from taskiq_dedup.testing import RedisServer, free_port, redis_server_binary

__all__ = ["RedisServer", "external_redis_url", "free_port", "redis_server_binary"]


def external_redis_url() -> str | None:
    """URL of a server to attach to instead of starting one (optional)."""
    return os.environ.get("TASKIQ_DEDUP_TEST_REDIS_URL") or None
