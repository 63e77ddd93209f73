"""Redis's own clock: key lifetimes and leases are kept by it, not by the test's."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis


async def redis_now_ms(redis: Redis) -> int:
    """``TIME`` of the server in whole milliseconds."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000
