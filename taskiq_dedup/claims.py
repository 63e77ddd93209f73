"""Claiming a firing: one atomic Redis script decides which scheduler sends it."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from taskiq_dedup.pipelining import ScriptPipeline

if TYPE_CHECKING:
    from redis.asyncio import Redis

logger = logging.getLogger("taskiq_dedup.claims")

CLAIM_SCRIPT = """
-- KEYS[1] = claim key (prefix, schedule id, slot)
-- ARGV[1] = this attempt's holder: host:pid#token, the token new per claim
-- ARGV[2] = time to live in milliseconds
-- returns {1, holder} when this claim holds the firing (also when a retry finds
--         the claim its lost-reply attempt took), {0, other holder} otherwise
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  return {1, current}
elseif current then
  return {0, current}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1, ARGV[1]}
"""

CLAIM_RETRY_WINDOW = 5.0
"""Seconds a claim is retried through Redis errors: a failover or restart usually
ends within it, and it is well inside the shortest slot worth retrying in."""

CLAIM_RETRY_FIRST_DELAY = 0.1
"""Seconds before the first retry; each later retry waits twice as long."""


def default_holder(name: str | None = None) -> str:
    """``host:pid`` (and ``name``), telling an operator which scheduler claimed."""
    holder = f"{socket.gethostname()}:{os.getpid()}"
    return f"{holder}:{name}" if name else holder


@dataclass(frozen=True)
class ClaimResult:
    """Outcome of one claim: won or not, and who holds the claim."""

    won: bool
    holder: str


class FiringClaimer:
    """Claims ``(schedule, slot)`` keys with ``CLAIM_SCRIPT``, retrying briefly.

    Concurrent claims share round trips (``ScriptPipeline``): 10k crons due at
    one minute boundary cost a few round trips over one connection.
    """

    def __init__(
        self,
        redis: Redis,
        holder: str,
        *,
        retry_window: float = CLAIM_RETRY_WINDOW,
    ) -> None:
        self.holder = holder
        self.retry_window = retry_window
        self._script = redis.register_script(CLAIM_SCRIPT)
        self._pipeline = ScriptPipeline(redis)

    async def claim(self, key: str, ttl_ms: int) -> ClaimResult:
        """Claim ``key`` for ``ttl_ms``; retry Redis errors for ``retry_window`` s.

        Every retry carries the same per-claim token, so a retry after a reply was
        lost recognises the claim its first attempt took.

        :raises RedisError: the last error, once the window has passed.
        """
        deadline = time.monotonic() + self.retry_window
        delay = CLAIM_RETRY_FIRST_DELAY
        attempt = f"{self.holder}#{secrets.token_hex(4)}"
        while True:
            try:
                won, holder = await self._pipeline.run(self._script, [key], [attempt, ttl_ms])
                return ClaimResult(won=bool(won), holder=_text(holder))
            except RedisError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.debug("Claim of %s failed (%s); retrying in %.1fs", key, exc, delay)
                await asyncio.sleep(delay)
                delay *= 2


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or "?"
