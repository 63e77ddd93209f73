"""A short Redis lock: taken once per token, released only by its owner."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

ACQUIRE_SCRIPT = """
-- KEYS[1] = lock key
-- ARGV[1] = the caller's token
-- ARGV[2] = time to live in milliseconds
-- returns 1 if the caller holds the lock now (also a retry whose first reply
-- was lost: it finds its own token), 0 if another token holds it
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  return 1
elseif current then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

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


async def acquire_lock(redis: Redis, key: str, token: str, ttl_ms: int) -> bool:
    """Take ``key`` for ``token`` unless another token holds it; return whether held."""
    taken = await redis.register_script(ACQUIRE_SCRIPT)(keys=[key], args=[token, ttl_ms])
    return bool(taken)
