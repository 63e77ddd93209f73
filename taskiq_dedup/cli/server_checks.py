"""``doctor``'s checks of the Redis server: eviction, version, persistence, clock.

Eviction and version are ``checks.check_server``'s own checks (the ones
``CompositeScheduleSource`` and ``DedupMiddleware`` log at start-up).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from taskiq_dedup.checks import MIN_REDIS_VERSION, SAFE_POLICY, check_server
from taskiq_dedup.cli.findings import Finding
from taskiq_dedup.deadlines import OPERATION_DEADLINE, REDIS_ERRORS, within
from taskiq_dedup.triggers import MAX_CLOCK_SKEW

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio import Redis

_quiet = logging.getLogger("taskiq_dedup.cli.doctor")
"""check_server logs each problem; doctor prints them as findings instead."""
_quiet.propagate = False
_quiet.addHandler(logging.NullHandler())


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def server(redis: Redis, where: str) -> list[Finding]:
    """Eviction policy and version, by ``check_server``; persistence."""
    found: list[Finding] = []
    for problem in await check_server(redis, _quiet):
        if "maxmemory-policy" in problem:
            fix = f"CONFIG SET maxmemory-policy {SAFE_POLICY}, and the same in redis.conf"
            check = "eviction"
        elif "older than" in problem:
            fix = f"run Redis {'.'.join(map(str, MIN_REDIS_VERSION))} or later"
            check = "redis-version"
        else:
            fix = "check that the Redis server is reachable"
            check = "redis-unchecked"
        found.append(Finding("error", check, f"{problem} ({where})", fix))
    found.extend(await persistence(redis, where))
    return found


async def persistence(redis: Redis, where: str) -> list[Finding]:
    """Whether a restart keeps the claims: AOF on (good), RDB only (warning), neither (error)."""
    try:
        config = await within(OPERATION_DEADLINE, lambda: redis.config_get("appendonly"))
        config.update(await within(OPERATION_DEADLINE, lambda: redis.config_get("save")))
    except REDIS_ERRORS as exc:
        return [
            Finding(
                "info",
                "persistence-unchecked",
                f"could not read Redis's persistence settings at {where} ({exc})",
                "make sure the server keeps data across restarts (appendonly yes)",
            ),
        ]
    settings = {_text(k): _text(v) for k, v in config.items()}
    if settings.get("appendonly") == "yes":
        return []
    if settings.get("save", "").strip():
        return [
            Finding(
                "warning",
                "persistence",
                f"Redis at {where} keeps only RDB snapshots (save {settings['save']}): a restart "
                "loses the claims made since the last one, and those firings may run again",
                "CONFIG SET appendonly yes, and the same in redis.conf",
            ),
        ]
    return [
        Finding(
            "error",
            "persistence",
            f"Redis at {where} has persistence off (no appendonly, no save): a restart loses "
            "every claim and done key, and firings already sent run again",
            "CONFIG SET appendonly yes, and the same in redis.conf",
        ),
    ]


async def clock(redis: Redis, where: str, now: Callable[[], float] = time.time) -> list[Finding]:
    """Compare this host's clock with the Redis server's ``TIME``, beyond ``MAX_CLOCK_SKEW``."""
    before = now()
    seconds, micros = await within(OPERATION_DEADLINE, redis.time)
    after = now()
    server_time = int(seconds) + int(micros) / 1e6
    skew = server_time - (before + after) / 2
    allowed = MAX_CLOCK_SKEW.total_seconds()
    if abs(skew) <= allowed:
        return []
    return [
        Finding(
            "error",
            "clock-skew",
            f"this host's clock is {abs(skew):.1f} s {'behind' if skew > 0 else 'ahead of'} "
            f"Redis at {where}; schedulers may disagree by at most {allowed:g} s on a slot",
            "synchronise the clocks of every scheduler host and the Redis server (NTP)",
        ),
    ]
