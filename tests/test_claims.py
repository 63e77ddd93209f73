"""FiringClaimer: one winner per key, also when thousands of claims are due at once."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from taskiq_dedup.claims import FiringClaimer
from taskiq_dedup.keys import KeySpace
from tests.support.redis_server import RedisServer


async def test_a_burst_has_one_winner_per_key_over_few_connections(own_redis: RedisServer) -> None:
    keys = KeySpace("burst")
    clients = [Redis.from_url(own_redis.url) for _ in range(3)]
    try:
        claimers = [FiringClaimer(c, f"scheduler-{i}") for i, c in enumerate(clients)]
        firing_keys = [keys.claim(f"s{i}", 60) for i in range(3000)]
        results = await asyncio.gather(
            *(claimer.claim(key, 60_000) for key in firing_keys for claimer in claimers),
        )
        winners: dict[str, set[str]] = {}
        for index, result in enumerate(results):
            key = firing_keys[index // 3]
            if result.won:
                winners.setdefault(key, set()).add(result.holder)
        assert sorted(winners) == sorted(firing_keys)
        assert all(len(holders) == 1 for holders in winners.values())
        losers = [r for r in results if not r.won]
        assert len(losers) == 2 * len(firing_keys)
        assert all(r.holder.startswith("scheduler-") for r in losers)
        info = await clients[0].info("clients")
        assert info["connected_clients"] <= 3 * 2 + 1  # batched: not one connection per claim
        stats = await clients[0].info("commandstats")
        assert (
            stats["cmdstat_evalsha"]["calls"] + stats.get("cmdstat_eval", {"calls": 0})["calls"]
            >= 9000
        )
    finally:
        for client in clients:
            await client.aclose()


async def test_a_single_claim_is_one_round_trip(own_redis: RedisServer) -> None:
    client = Redis.from_url(own_redis.url)
    try:
        claimer = FiringClaimer(client, "me")
        first = await claimer.claim("k:1", 1000)
        await client.config_resetstat()
        second = await claimer.claim("k:1", 1000)
        stats = await client.info("commandstats")
        assert first.won
        assert not second.won
        assert second.holder.startswith("me#")
        # One EVALSHA on the wire (commandstats also counts the GET run inside the
        # script, and a connection may add a health-check PING): no SET, no reload.
        assert stats["cmdstat_evalsha"]["calls"] == 1
        assert not {"cmdstat_set", "cmdstat_eval", "cmdstat_script", "cmdstat_script|load"} & set(
            stats
        )
    finally:
        await client.aclose()
