"""``Leases``, the worker-side scripts, called directly on a real Redis.

What the middleware tests do not show: who a refused claim names as holder, replies
of clients with and without ``decode_responses``, and concurrent claims sharing a
connection.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from taskiq_dedup.keys import KeySpace
from taskiq_dedup.leases import Claim, Leases
from tests.support.redis_server import RedisServer

MINUTE_MS = 60_000
DAY_MS = 86_400_000


async def claim(leases: Leases, key: str, task_id: str, worker: str) -> Claim:
    return await leases.claim(
        key,
        token=f"token-{task_id}",
        task_id=task_id,
        generation=0,
        worker=worker,
        lease_ms=MINUTE_MS,
        retention_ms=DAY_MS,
    )


async def test_a_refused_claim_names_the_holder_task_and_worker(redis: Redis, prefix: str) -> None:
    leases = Leases(redis)
    key = KeySpace(prefix).firing("s", 60)
    assert await claim(leases, key, "t-1", "host-a:1") == Claim("claimed", "", "")
    assert await claim(leases, key, "t-2", "host-b:2") == Claim("running", "t-1", "host-a:1")
    assert await leases.finish(key, "token-t-1", retention_ms=DAY_MS)
    assert await claim(leases, key, "t-3", "host-c:3") == Claim("done", "t-1", "host-a:1")


async def test_replies_read_the_same_with_decoded_responses(redis_url: str, prefix: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        leases = Leases(client)
        key = KeySpace(prefix).idempotency("charge", "order-1")
        options = {"retention_ms": DAY_MS, "pending_ms": 15_000, "rerun_lost": False}
        assert (await leases.bind(key, "t-1", **options)).task_id == "t-1"  # type: ignore[arg-type]
        assert (await leases.bind(key, "t-2", **options)).task_id == "t-1"  # type: ignore[arg-type]
        await claim(leases, key, "t-1", "host-a:1")
        assert await claim(leases, key, "t-2", "host-b:2") == Claim("running", "t-1", "host-a:1")
    finally:
        await client.aclose()


async def test_a_holder_name_that_is_not_utf8_is_shown_not_fatal(redis: Redis, prefix: str) -> None:
    """A key written by anything else must not break the claim that reads it."""
    key = KeySpace(prefix).firing("s", 60)
    await redis.hset(key, mapping={"state": "done", "task_id": b"t-\xff", "worker": b"\xfe:1"})
    refused = await claim(Leases(redis), key, "t-2", "host-b:2")
    assert refused == Claim("done", "t-\ufffd", "\ufffd:1")


async def test_concurrent_claims_share_a_connection(own_redis: RedisServer) -> None:
    client = Redis.from_url(own_redis.url)
    try:
        leases = Leases(client)
        keys = KeySpace("burst")
        results = await asyncio.gather(
            *(claim(leases, keys.firing(f"s{i}", 60), f"t-{i}", "w") for i in range(500))
        )
        assert all(result.won for result in results)
        info = await client.info("clients")
        assert info["connected_clients"] <= 3  # pipelined: not one connection per claim
    finally:
        await client.aclose()


async def test_release_frees_the_key_for_another_task_only_by_its_holder(
    redis: Redis, prefix: str
) -> None:
    leases = Leases(redis)
    key = KeySpace(prefix).firing("s", 60)
    await claim(leases, key, "t-1", "host-a:1")
    assert not await leases.release(key, "token-of-someone-else")
    assert await claim(leases, key, "t-2", "host-b:2") == Claim("running", "t-1", "host-a:1")
    assert await leases.release(key, "token-t-1")
    assert await redis.hget(key, "state") is None
    # a won claim names no holder
    assert await claim(leases, key, "t-2", "host-b:2") == Claim("claimed", "", "")
