"""Claiming a firing: one atomic Redis script decides which scheduler sends it."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

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

MAX_BATCH = 1000
"""Claims sent in one pipeline at most: bounds one reply's size and latency."""

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

    Claims made while another batch is on the wire are sent together in one
    pipeline: each is still its own atomic script, but a burst of firings due at
    one moment (10k crons at a minute boundary) costs a few round trips and one
    connection instead of one each.
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
        self._redis = redis
        self._script = redis.register_script(CLAIM_SCRIPT)
        self._pending: list[_PendingClaim] = []
        self._sender: asyncio.Task[None] | None = None

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
                won, holder = await self._submit(key, attempt, ttl_ms)
                return ClaimResult(won=bool(won), holder=_text(holder))
            except RedisError as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.debug("Claim of %s failed (%s); retrying in %.1fs", key, exc, delay)
                await asyncio.sleep(delay)
                delay *= 2

    def _submit(self, key: str, attempt: str, ttl_ms: int) -> asyncio.Future[list[Any]]:
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._pending.append(_PendingClaim(key, attempt, ttl_ms, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_pending())
        return future

    async def _send_pending(self) -> None:
        await asyncio.sleep(0)  # claims submitted in this same loop tick join the batch
        while self._pending:
            batch = self._pending[:MAX_BATCH]
            del self._pending[:MAX_BATCH]
            try:
                replies = await self._run(batch)
            except Exception as exc:  # handed to every claim of the batch
                replies = [exc] * len(batch)
            for pending, reply in zip(batch, replies, strict=True):
                if pending.future.done():
                    continue
                if isinstance(reply, BaseException):
                    pending.future.set_exception(reply)
                else:
                    pending.future.set_result(reply)

    async def _run(self, batch: list[_PendingClaim]) -> list[Any]:
        if len(batch) == 1 or not isinstance(self._redis, Redis):
            # One claim, or a cluster client (its pipelines cannot run scripts):
            # plain script calls.
            return list(
                await asyncio.gather(
                    *(self._script(keys=[c.key], args=[c.attempt, c.ttl_ms]) for c in batch),
                    return_exceptions=True,
                ),
            )
        pipe = self._redis.pipeline(transaction=False)
        for pending in batch:
            await self._script(
                keys=[pending.key], args=[pending.attempt, pending.ttl_ms], client=pipe
            )
        return list(await pipe.execute(raise_on_error=False))


@dataclass(frozen=True)
class _PendingClaim:
    key: str
    attempt: str
    ttl_ms: int
    future: asyncio.Future[list[Any]]


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value or "?"
