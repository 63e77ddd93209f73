"""Overlap policies in one process: the decisions of several middlewares on the private Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from taskiq import InMemoryBroker
from taskiq.message import TaskiqMessage

from taskiq_dedup import DedupMiddleware, skip
from taskiq_dedup.errors import ConfigurationError
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.overlap import RUNNING_RETENTION_LEASES, TURN_POLL
from tests.support.polling import eventually
from tests.support.redis_time import redis_now_ms

SCHEDULE = "report"
Factory = Callable[..., DedupMiddleware]


def firing(slot: int, policy: str | None = None) -> TaskiqMessage:
    labels: dict[str, Any] = {"schedule_id": SCHEDULE, "dedup_slot": slot}
    if policy is not None:
        labels["dedup_overlap"] = policy
    return TaskiqMessage(
        task_id=f"{SCHEDULE}-{slot}-{uuid.uuid4().hex[:6]}",
        task_name="app:report",
        labels=labels,
        args=[],
        kwargs={},
    )


@pytest.fixture
async def workers(redis: Redis, prefix: str) -> AsyncIterator[Factory]:
    """Middlewares as separate worker processes would have them (own holds, own loop)."""
    made: list[DedupMiddleware] = []

    def factory(**options: Any) -> DedupMiddleware:
        middleware = DedupMiddleware(redis=redis, prefix=prefix, **options)
        made.append(middleware)
        return middleware

    yield factory
    for middleware in made:
        await middleware.shutdown()


def skipped_for_overlap(message: TaskiqMessage) -> bool:
    return skip.is_skip(message) and message.labels[skip.SKIP_LABEL] == "overlap"


async def state(redis: Redis, prefix: str, slot: int) -> bytes | None:
    value: bytes | None = await redis.hget(KeySpace(prefix).firing(SCHEDULE, slot), "state")
    return value


async def test_skip_does_not_run_a_firing_while_the_previous_run_holds_its_lease(
    workers: Factory, redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskiq_dedup.overlap")
    a, b = workers(), workers()
    first = firing(1, "skip")
    assert await a.pre_execute(first) is first

    second = await b.pre_execute(firing(2, "skip"))
    assert skipped_for_overlap(second)
    assert second.labels["ack_type"] == "when_received"  # acknowledged, not redelivered
    assert await state(redis, prefix, 2) == b"done"  # a redelivered copy is a duplicate
    outcome = await redis.hget(KeySpace(prefix).firing(SCHEDULE, 2), "outcome")
    assert outcome == b"skipped_overlap"  # what the firing ledger reports for it
    assert b.stats.skipped_overlap == 1
    assert b.stats.executed == 0
    assert any("not executed (dedup_overlap=skip)" in r.getMessage() for r in caplog.records)

    await a.post_execute(first, None)  # type: ignore[arg-type]
    third = firing(3, "skip")
    assert await b.pre_execute(third) is third  # the run ended: the next one runs


async def test_allow_is_the_default_and_runs_overlapping_firings(workers: Factory) -> None:
    a, b = workers(), workers()
    first, second = firing(1), firing(2)
    assert await a.pre_execute(first) is first
    assert await b.pre_execute(second) is second
    assert (a.stats.executed, b.stats.executed) == (1, 1)


async def test_the_middleware_default_applies_to_unlabelled_firings(workers: Factory) -> None:
    a, b = workers(overlap="skip"), workers(overlap="skip")
    assert await a.pre_execute(firing(1)) is not None
    assert skipped_for_overlap(await b.pre_execute(firing(2)))
    allowed = firing(3, "allow")  # the label beats the default
    assert await b.pre_execute(allowed) is allowed


async def test_buffer_one_runs_one_waiting_firing_after_the_run_and_skips_a_third(
    workers: Factory, redis: Redis, prefix: str
) -> None:
    a, b, c = workers(), workers(), workers()
    first, second = firing(1, "buffer_one"), firing(2, "buffer_one")
    assert await a.pre_execute(first) is first
    waiting = asyncio.create_task(b.pre_execute(second))
    running_key = KeySpace(prefix).running(SCHEDULE)
    await eventually(lambda: redis.hget(running_key, "queued"), timeout=5)
    assert not waiting.done()

    third = await c.pre_execute(firing(3, "buffer_one"))
    assert skipped_for_overlap(third)  # at most one waits
    assert c.stats.skipped_overlap == 1

    await a.post_execute(first, None)  # type: ignore[arg-type]
    assert await asyncio.wait_for(waiting, timeout=5) is second
    assert b.stats.overlap_waits == 1
    assert await redis.hget(running_key, "queued") is None
    assert await redis.hget(running_key, "task_id") == second.task_id.encode()


async def test_a_free_turn_goes_to_the_buffered_firing_not_a_newcomer(
    workers: Factory, redis: Redis, prefix: str
) -> None:
    a, b, c = workers(), workers(), workers()
    first, second = firing(1, "buffer_one"), firing(2, "buffer_one")
    await a.pre_execute(first)
    waiting = asyncio.create_task(b.pre_execute(second))
    await eventually(lambda: redis.hget(KeySpace(prefix).running(SCHEDULE), "queued"), timeout=5)
    await a.post_execute(first, None)  # type: ignore[arg-type]
    # a newcomer asking before the waiter's next look (TURN_POLL) must not jump the queue
    newcomer = await c.pre_execute(firing(3, "skip"))
    assert skipped_for_overlap(newcomer)
    assert await asyncio.wait_for(waiting, timeout=5 + TURN_POLL) is second


async def test_the_heartbeat_keeps_a_long_run_exclusive_and_a_dead_runs_lease_lapses(
    workers: Factory,
) -> None:
    a, b = workers(lease_ttl=1.0), workers(lease_ttl=1.0)
    first = firing(1, "skip")
    await a.pre_execute(first)
    await asyncio.sleep(2.5)  # 2.5 leases: only renewals keep the running key
    assert skipped_for_overlap(await b.pre_execute(firing(2, "skip")))

    await a.shutdown()  # the holder dies: no renewals, no finish
    later = firing(3, "skip")

    async def runs() -> bool:
        message = firing(later.labels["dedup_slot"], "skip")
        later.labels["dedup_slot"] += 1
        return await b.pre_execute(message) is message

    await eventually(runs, timeout=5, interval=0.2)


async def test_a_failed_run_releases_the_schedule(workers: Factory) -> None:
    a, b = workers(), workers()
    first = firing(1, "skip")
    await a.pre_execute(first)
    await a.on_error(first, None, RuntimeError("boom"))  # type: ignore[arg-type]
    second = firing(2, "skip")
    assert await b.pre_execute(second) is second


async def test_a_bad_label_at_run_time_logs_an_error_and_uses_the_default(
    workers: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    a = workers(overlap="skip")
    first = firing(1, "sometimes")
    assert await a.pre_execute(first) is first
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "schedule report" in errors[0]
    assert "'sometimes'" in errors[0]
    assert "'allow', 'skip', 'buffer_one'" in errors[0]
    assert skipped_for_overlap(await a.pre_execute(firing(2, "sometimes")))  # default: skip
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1  # once


def test_a_bad_default_is_refused_naming_the_option(redis: Redis) -> None:
    with pytest.raises(ConfigurationError, match=r"overlap=.*'allow', 'skip', 'buffer_one'.*'x'"):
        DedupMiddleware(redis=redis, overlap="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("labels", "named"),
    [
        ({"dedup_overlap": "never"}, "dedup_overlap must be one of"),
        ({"dedup_catch_up": "soon"}, "dedup_catch_up must be a whole number"),
        ({"dedup_catch_up": -5}, "dedup_catch_up must be a whole number"),
        ({"dedup_catch_up": 60, "dedup_catch_up_all": "maybe"}, "dedup_catch_up_all must be"),
        ({"dedup_catch_up_all": True}, "dedup_catch_up_all needs dedup_catch_up"),
    ],
)
async def test_a_bad_label_in_a_decorator_stops_start_up_naming_it(
    redis: Redis, prefix: str, labels: dict[str, Any], named: str
) -> None:
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    broker = InMemoryBroker().with_middlewares(middleware)

    @broker.task(task_name="app:nightly", schedule=[{"cron": "0 3 * * *", "labels": labels}])
    async def nightly() -> None: ...

    with pytest.raises(ConfigurationError, match=rf"task 'app:nightly', schedule #1: {named}"):
        await middleware.startup()


async def test_the_running_key_holds_one_lease_and_expires_four_leases_later(
    workers: Factory, redis: Redis, prefix: str
) -> None:
    a = workers(lease_ttl=10.0)
    await a.pre_execute(firing(1, "skip"))
    running_key = KeySpace(prefix).running(SCHEDULE)
    now = await redis_now_ms(redis)
    lease_until = int(await redis.hget(running_key, "lease_until") or 0)
    assert now < lease_until <= now + 10_000
    ttl = await redis.pttl(running_key)
    assert 10_000 * RUNNING_RETENTION_LEASES - 1_000 < ttl <= 10_000 * RUNNING_RETENTION_LEASES


@pytest.mark.parametrize("on_redis_error", ["reject", "execute"])
async def test_a_redis_error_on_the_running_key_follows_on_redis_error(
    workers: Factory,
    redis: Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    on_redis_error: str,
) -> None:
    a = workers(on_redis_error=on_redis_error, redis_deadline=0.2)

    async def down(*_: object, **__: object) -> None:
        raise RedisConnectionError("the running key's shard is down")

    monkeypatch.setattr(a._overlap.policies, "take", down)
    message = firing(1, "skip")
    decided = await a.pre_execute(message)
    assert a.stats.redis_errors == 1
    if on_redis_error == "execute":
        assert decided is message
        assert await state(redis, prefix, 1) == b"running"
    else:
        assert skip.is_skip(decided)
        assert decided.labels[skip.SKIP_LABEL] == "unavailable"  # comes back later
        assert await state(redis, prefix, 1) is None  # released: the copy can claim it
        assert a.held == 0
