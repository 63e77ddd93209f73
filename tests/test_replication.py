"""``min_replicas`` and failover on a real Sentinel set (1 primary, 2 replicas, 3 sentinels)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from redis.exceptions import RedisError
from taskiq import InMemoryBroker, ScheduledTask
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.message import TaskiqMessage
from taskiq.schedule_sources import LabelScheduleSource

from taskiq_dedup import CompositeScheduleSource, DedupMiddleware, skip
from taskiq_dedup.claims import FiringClaims
from taskiq_dedup.connection import resolve_redis
from taskiq_dedup.errors import ConfigurationError
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.replication import REPLICA_ACK_TIMEOUT_MS, ReplicasMissingError
from tests.support.topologies import LocalCluster, SentinelSet, spread_keys

SLOT = 1_700_000_000
TTL_MS = 600_000
FAILOVER_TIMEOUT = 30.0
"""Seconds the sentinels may take to promote a replica: 1 s to see the primary
down, then an election; on a busy 2-core machine a few seconds."""


def broker_with_a_cron() -> InMemoryBroker:
    broker = InMemoryBroker()

    @broker.task(task_name="tick", schedule=[{"cron": "* * * * *"}])
    async def tick() -> None: ...

    return broker


def firing_message(task: ScheduledTask, task_id: str) -> TaskiqMessage:
    return TaskiqMessage(
        task_id=task_id, task_name=task.task_name, labels=task.labels, args=[], kwargs={}
    )


async def test_claims_pass_while_the_replicas_acknowledge(
    sentinel_set: SentinelSet, prefix: str
) -> None:
    client, _ = resolve_redis(sentinel_set.url(), None, {})
    try:
        claims = FiringClaims(client, "s1", min_replicas=2)
        keys = [KeySpace(prefix).firings(f"s{n}") for n in range(20)]
        attempts = [claims.new_attempt() for _ in keys]
        # concurrent calls: one goes alone, the rest as one pipeline with one WAIT
        won = await asyncio.gather(
            *(claims.claim(key, a, [SLOT], TTL_MS) for key, a in zip(keys, attempts, strict=True)),
        )
        assert all(reply.won for reply in won)
        confirmed = await asyncio.gather(
            *(claims.confirm(k, a, SLOT, TTL_MS) for k, a in zip(keys, attempts, strict=True)),
        )
        assert all(confirmed)
    finally:
        await client.aclose()


async def test_unacknowledged_writes_take_the_store_down_path(
    own_sentinel_set: SentinelSet, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Replicas frozen (SIGSTOP): a claim is written on the primary, no replica
    acknowledges it, and each component applies its store-down policy."""
    url = own_sentinel_set.url()
    skip_source = CompositeScheduleSource(
        [LabelScheduleSource(broker_with_a_cron())], redis_url=url, prefix=prefix, min_replicas=1
    )
    send_source = CompositeScheduleSource(
        [LabelScheduleSource(broker_with_a_cron())],
        redis_url=url,
        prefix=f"{prefix}:b",
        min_replicas=1,
        on_claim_error="send",
    )
    middleware = DedupMiddleware(redis_url=url, prefix=prefix, min_replicas=1)
    for source in (skip_source, send_source):
        await source.startup()
    try:
        (skip_task,) = await skip_source.get_schedules()
        (send_task,) = await send_source.get_schedules()
        for replica in own_sentinel_set.replicas:
            replica.pause()
        caplog.set_level(logging.WARNING, logger="taskiq_dedup.replication")
        started = time.monotonic()
        with pytest.raises(ScheduledTaskCancelledError):
            await skip_source.pre_send(skip_task)
        assert time.monotonic() - started >= REPLICA_ACK_TIMEOUT_MS / 1000  # WAIT waited
        assert skip_source.stats.claim_errors == 1
        await send_source.pre_send(send_task)  # sent without a claim, by the policy
        assert send_source.stats.sent_without_claim == 1
        rejected = await middleware.pre_execute(firing_message(send_task, "t-1"))
        assert skip.is_skip(rejected)  # fail-closed: not run now, the delivery comes back
        assert middleware.stats.redis_errors == 1
        warnings = [r for r in caplog.records if "min_replicas=1" in r.getMessage()]
        assert len(warnings) >= 3  # one per write the policy handled
    finally:
        for replica in own_sentinel_set.replicas:
            replica.resume()
        for source in (skip_source, send_source):
            await source.shutdown()
        await middleware.shutdown()


async def test_acknowledged_claims_survive_a_failover_and_claiming_goes_on(
    own_sentinel_set: SentinelSet, prefix: str
) -> None:
    url = own_sentinel_set.url()
    space = KeySpace(prefix)
    client, _ = resolve_redis(url, None, {})
    try:
        claims = FiringClaims(client, "s1", retry_window=FAILOVER_TIMEOUT, min_replicas=1)
        before = [space.firings(f"before-{n}") for n in range(10)]
        for key in before:
            attempt = claims.new_attempt()
            assert (await claims.claim(key, attempt, [SLOT], TTL_MS)).won
            assert await claims.confirm(key, attempt, SLOT, TTL_MS)
        old_port = own_sentinel_set.master_port()
        own_sentinel_set.server_on(old_port).kill()  # right after the last acknowledged write
        new_port = own_sentinel_set.wait_for_failover(old_port, FAILOVER_TIMEOUT)
        assert new_port != old_port

        # The same client, through the same URL, claims on the new primary. Until
        # the other replica follows it, WAIT may count too few: retry until it does.
        deadline = time.monotonic() + FAILOVER_TIMEOUT
        after = space.firings("after")
        while True:
            try:
                claim = await claims.claim(after, claims.new_attempt(), [SLOT], TTL_MS)
                break
            except RedisError:
                assert time.monotonic() < deadline, "no claim after the failover"
                await asyncio.sleep(0.1)
        assert claim.won

        other = FiringClaims(client, "s2")
        for key in before:  # every acknowledged claim is still on the new primary
            reply = await other.claim(key, other.new_attempt(), [SLOT], TTL_MS)
            assert reply.verdict == "sent", key
    finally:
        await client.aclose()


def test_min_replicas_is_validated_by_every_component() -> None:
    from taskiq_dedup.apscheduler import DedupExecutor  # noqa: PLC0415 -- an optional extra

    url = "redis://127.0.0.1:1/0"
    makers = (
        lambda bad: DedupMiddleware(redis_url=url, min_replicas=bad),
        lambda bad: DedupExecutor(redis_url=url, min_replicas=bad),
        lambda bad: CompositeScheduleSource(
            [LabelScheduleSource(InMemoryBroker())], redis_url=url, min_replicas=bad
        ),
    )
    for make in makers:
        for bad in (-1, 1.5, True, "1"):
            with pytest.raises(ConfigurationError, match="min_replicas must be an integer"):
                make(bad)


async def test_min_replicas_on_a_cluster_waits_on_each_nodes_pipeline(
    redis_cluster: LocalCluster, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = resolve_redis(redis_cluster.url, None, {})
    try:
        claims = FiringClaims(client, "s1", min_replicas=1)
        keys = await spread_keys(client, KeySpace(prefix).firings)
        replies = await asyncio.gather(
            *(claims.claim(key, claims.new_attempt(), [SLOT], TTL_MS) for key in keys),
        )
        assert all(reply.won for reply in replies)  # one pipeline + WAIT per primary

        primaries = redis_cluster.primaries()
        replicas = [node for node in redis_cluster.nodes if node not in primaries]
        caplog.set_level(logging.WARNING, logger="taskiq_dedup.replication")
        for replica in replicas:
            replica.pause()
        try:
            with pytest.raises(ReplicasMissingError):
                await claims.claim(keys[-1] + "x", claims.new_attempt(), [SLOT], TTL_MS)
        finally:
            for replica in replicas:
                replica.resume()
        assert any("min_replicas=1" in r.getMessage() for r in caplog.records)
    finally:
        await client.aclose()
