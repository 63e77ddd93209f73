"""Releasing a short Redis lock only if this caller still owns it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

RELEASE_SCRIPT = """
-- KEYS[1] = lock key
-- ARGV[1] = the owner's token
-- returns 1 if the lock was ours and is now released, 0 otherwise
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


async def release_lock(redis: Redis, key: str, token: str) -> bool:
    """Delete ``key`` if it still holds ``token``; return whether it did."""
    released = await redis.register_script(RELEASE_SCRIPT)(keys=[key], args=[token])
    return bool(released)
