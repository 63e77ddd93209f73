"""The claim core, the worker guard and one end-to-end firing on a Cluster and on Sentinel.

Each test runs on both topologies, through a ``redis+cluster://`` or
``redis+sentinel://`` URL as a user would configure them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError
from taskiq import InMemoryBroker, TaskiqScheduler
from taskiq.kicker import AsyncKicker
from taskiq.schedule_sources import LabelScheduleSource

from taskiq_dedup import CompositeScheduleSource, DedupMiddleware
from taskiq_dedup.claims import FiringClaims
from taskiq_dedup.cluster_batches import send_per_node
from taskiq_dedup.connection import resolve_redis
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.leases import Leases
from tests.support.topologies import LocalCluster, SentinelSet, spread_keys

SLOT = 1_700_000_000
TTL_MS = 60_000
TOKEN_A, TOKEN_B, TOKEN_C = "owner-a", "owner-b", "owner-c"


@pytest.fixture(params=["cluster", "sentinel"])
def topology_url(request: pytest.FixtureRequest) -> str:
    """The URL of the session's Cluster, or of its Sentinel set."""
    if request.param == "cluster":
        cluster: LocalCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    sentinels: SentinelSet = request.getfixturevalue("sentinel_set")
    return sentinels.url()


@pytest.fixture
async def clients(topology_url: str) -> AsyncIterator[Callable[[], Redis]]:
    """Makes clients from ``topology_url``; all are closed afterwards."""
    made: list[Redis] = []

    def make() -> Redis:
        client, _ = resolve_redis(topology_url, None, {})
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()


async def test_one_winner_per_firing_among_concurrent_clients(
    clients: Callable[[], Redis], prefix: str
) -> None:
    made = [clients() for _ in range(4)]
    claims = [FiringClaims(client, f"scheduler-{i}") for i, client in enumerate(made)]
    keys = await spread_keys(made[0], KeySpace(prefix).firings)
    attempts = {(i, key): claim.new_attempt() for i, claim in enumerate(claims) for key in keys}
    replies = await asyncio.gather(
        *(claims[i].claim(key, attempts[i, key], [SLOT], TTL_MS) for i, key in attempts),
    )
    winners: dict[str, int] = {}
    for (i, key), reply in zip(attempts, replies, strict=True):
        if reply.won:
            assert key not in winners, f"two winners for {key}"
            winners[key] = i
        else:
            assert reply.verdict == "pending"
    assert set(winners) == set(keys)

    confirmed, released = keys[::2], keys[1::2]
    for key in confirmed:
        i = winners[key]
        assert await claims[i].confirm(key, attempts[i, key], SLOT, TTL_MS)
    for key in released:
        i = winners[key]
        assert await claims[i].release(key, attempts[i, key])

    for key in confirmed:  # a sent firing is never claimed again
        other = claims[(winners[key] + 1) % 4]
        assert (await other.claim(key, other.new_attempt(), [SLOT], TTL_MS)).verdict == "sent"
    tries = [(claim, key) for claim in claims for key in released]
    second = await asyncio.gather(
        *(claim.claim(key, claim.new_attempt(), [SLOT], TTL_MS) for claim, key in tries),
    )
    won = Counter(key for (_, key), reply in zip(tries, second, strict=True) if reply.won)
    assert won == Counter(released)  # a released firing is taken again, once


async def test_worker_leases_and_idempotency_bindings(
    clients: Callable[[], Redis], prefix: str
) -> None:
    client = clients()
    first, second = Leases(client), Leases(clients())
    space = KeySpace(prefix)
    keys = await spread_keys(client, lambda part: space.firing(part, SLOT))
    options: dict[str, Any] = {"generation": 0, "lease_ms": 60_000, "retention_ms": TTL_MS}
    for key in keys:
        mine = await first.claim(key, token=TOKEN_A, task_id="t-a", worker="w1", **options)
        assert mine.verdict == "claimed"
        theirs = await second.claim(key, token=TOKEN_B, task_id="t-b", worker="w2", **options)
        assert (theirs.verdict, theirs.holder_worker) == ("running", "w1")
    # one heartbeat round over keys on every node
    extended = await first.extend_many([(key, TOKEN_A, TTL_MS) for key in keys], lease_ms=60_000)
    assert extended == [True] * len(keys)
    assert await second.extend_many([(keys[0], TOKEN_B, TTL_MS)], lease_ms=60_000) == [False]
    for key in keys:
        assert await first.finish(key, TOKEN_A, retention_ms=TTL_MS)
        late = await second.claim(key, token=TOKEN_C, task_id="t-c", worker="w2", **options)
        assert late.verdict == "done"

    idem = space.idempotency("orders", "order-42")
    bind = {"retention_ms": TTL_MS, "pending_ms": 15_000, "rerun_lost": False}
    assert (await first.bind(idem, "t-1", **bind)).verdict == "bound"
    assert (await second.bind(idem, "t-2", **bind)).verdict == "wait"
    assert await first.confirm(idem, "t-1", retention_ms=TTL_MS) == "t-1"
    echo = await second.bind(idem, "t-2", **bind)
    assert (echo.verdict, echo.task_id) == ("echo", "t-1")


async def test_three_schedulers_and_a_redelivery_run_a_firing_once(
    topology_url: str, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[str] = []
    middleware = DedupMiddleware(redis_url=topology_url, prefix=prefix)
    broker = InMemoryBroker(await_inplace=True).with_middlewares(middleware)

    @broker.task(task_name="tick", schedule=[{"cron": "* * * * *"}])
    async def tick() -> None:
        runs.append("tick")

    await broker.startup()
    sources = [
        CompositeScheduleSource(
            [LabelScheduleSource(broker)], redis_url=topology_url, prefix=prefix
        )
        for _ in range(3)
    ]
    try:
        for source in sources:
            await source.startup()
        firings = [(await source.get_schedules())[0] for source in sources]
        await asyncio.gather(
            *(
                TaskiqScheduler(broker, [source]).on_ready(source, firing)
                for source, firing in zip(sources, firings, strict=True)
            ),
        )
        assert runs == ["tick"]
        assert sum(source.stats.fired for source in sources) == 1
        assert sum(source.stats.duplicates_cancelled for source in sources) == 2
        sent = next(firing for firing in firings if "dedup_slot" in firing.labels)
        # the broker delivers the firing again: the worker guard drops it
        await AsyncKicker("tick", broker, sent.labels).with_task_id(sent.task_id or "").kiq()
        assert runs == ["tick"]
        assert middleware.stats.dropped_done == 1
        assert not [r for r in caplog.records if "could not check" in r.getMessage()]
    finally:
        for source in sources:
            await source.shutdown()
        await broker.shutdown()


async def test_cluster_batches_go_one_pipeline_per_node_and_follow_redirects(
    redis_cluster: LocalCluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls grouped under a stale slot table meet MOVED and are sent again alone;
    a script's own error (WRONGTYPE) is returned, not sent again."""
    cluster = RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    try:
        claims = FiringClaims(cast("Redis", cluster), "s1")
        keys = await spread_keys(cast("Redis", cluster), KeySpace(prefix).firings)
        await cluster.set(keys[0], "not a hash")
        script = claims._claim  # the claim script, as FiringClaims sends it
        calls = [(script, [key], [f"a-{key}", 5000, TTL_MS, SLOT, SLOT]) for key in keys]
        stale = cluster.get_primaries()[0]
        monkeypatch.setattr(cluster, "get_node_from_key", lambda *_: stale)
        replies = await send_per_node(cluster, calls)
        assert isinstance(replies[0], ResponseError)
        assert "WRONGTYPE" in str(replies[0])
        assert [reply.split(b" ")[0] for reply in replies[1:]] == [b"won"] * (len(keys) - 1)
        # every claim is on the node owning its key, and counts there
        monkeypatch.undo()
        for key in keys[1:]:
            assert (await claims.claim(key, f"a-{key}", [SLOT], TTL_MS)).verdict == "won"
    finally:
        await cluster.aclose()
