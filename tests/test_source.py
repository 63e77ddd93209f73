"""CompositeScheduleSource against a real Redis: merge, claim, add, delete, faults."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import pytest
from redis.asyncio import Redis
from taskiq import InMemoryBroker, ScheduledTask, ScheduleSource
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.schedule_sources import LabelScheduleSource
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource

from taskiq_dedup import (
    CompositeScheduleSource,
    ConfigurationError,
    InvalidScheduleError,
    ScheduleInCodeError,
    schedule_id_for,
)
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.triggers import epoch_seconds
from tests.support.clock import FakeClock, follow_in_taskiq_redis
from tests.support.firing import fire
from tests.support.redis_server import RedisServer
from tests.support.versions import needs_interval_store

Factory = Callable[..., CompositeScheduleSource]


@pytest.fixture
def broker() -> InMemoryBroker:
    broker = InMemoryBroker()

    @broker.task(
        task_name="app:tick",
        schedule=[{"interval": 2, "args": [1]}, {"cron": "* * * * *", "args": [2]}],
    )
    async def tick(n: int) -> int:
        return n

    @broker.task(task_name="app:plain")
    async def plain(n: int) -> int:
        return n

    return broker


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The fake "now" of the composite source and of taskiq-redis's one-off lookup."""
    clock = FakeClock()
    follow_in_taskiq_redis(monkeypatch, clock)
    return clock


@pytest.fixture
async def make_source(
    broker: InMemoryBroker, redis_url: str, prefix: str, clock: FakeClock
) -> AsyncIterator[Factory]:
    """Build started composites as separate scheduler processes would (own children)."""
    made: list[CompositeScheduleSource] = []

    async def factory(**options: object) -> CompositeScheduleSource:
        children: list[ScheduleSource] = options.pop("children", None) or [  # type: ignore[assignment]
            LabelScheduleSource(broker),
            ListRedisScheduleSource(
                redis_url, prefix=f"{prefix}-schedules", serializer=JSONSerializer()
            ),
        ]
        options.setdefault("redis_url", redis_url)
        source = CompositeScheduleSource(
            children, prefix=options.pop("prefix", prefix), clock=clock, **options
        )  # type: ignore[arg-type]
        await source.startup()
        made.append(source)
        return source

    yield factory  # type: ignore[misc]
    for source in made:
        await source.shutdown()


def redis_child(source: CompositeScheduleSource) -> ListRedisScheduleSource:
    child = source.sources[1]
    assert isinstance(child, ListRedisScheduleSource)
    return child


async def test_label_and_redis_copies_merge_into_one(
    make_source: Factory, broker: InMemoryBroker
) -> None:
    source = await make_source()
    # The way FastAPI-template start-ups register it, four times, bypassing the composite:
    for _ in range(4):
        await (
            broker.find_task("app:tick")
            .kicker()
            .schedule_by_cron(redis_child(source), "* * * * *", 2)
        )  # type: ignore[union-attr]
    schedules = await source.get_schedules()
    assert len(schedules) == 2  # the interval and the cron schedule, once each
    cron = next(s for s in schedules if s.cron)
    assert cron.schedule_id == schedule_id_for(cron)
    origins = source.schedules[cron.schedule_id].origins
    assert [type(o.source).__name__ for o in origins] == ["LabelScheduleSource"] + [
        "ListRedisScheduleSource"
    ] * 4
    assert len({o.task.schedule_id for o in origins}) == 5


async def test_one_claim_per_firing_across_schedulers(
    make_source: Factory, clock: FakeClock, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="taskiq_dedup")
    schedulers = [await make_source(holder=f"s{i}") for i in range(3)]
    per_scheduler = [await s.get_schedules() for s in schedulers]
    sent: list[int] = []
    for _ in range(3):  # three slots of the 2 s interval schedule
        for source, schedules in zip(schedulers, per_scheduler, strict=True):
            task = next(s for s in schedules if s.interval)
            if not await fire(source, task):
                continue
            sent.append(int(task.labels["dedup_slot"]))
            assert task.labels["schedule_id"] == task.schedule_id
            assert task.task_id == f"{task.schedule_id}-{task.labels['dedup_slot']}"
        clock.advance(seconds=2)
    assert sent == [
        epoch_seconds(clock.now) - 6,
        epoch_seconds(clock.now) - 4,
        epoch_seconds(clock.now) - 2,
    ]
    assert sum(s.stats.claimed for s in schedulers) == 3
    assert sum(s.stats.duplicates_cancelled for s in schedulers) == 6
    lost = [r for r in caplog.records if "was sent by" in r.getMessage()]
    assert lost
    assert all(r.levelno == logging.INFO and r.exc_info is None for r in lost)
    assert "s0" in lost[0].getMessage()
    # The structured fields a JSON log handler indexes (docs: "Structured logs"):
    keys = KeySpace(prefix)
    for record in lost:
        assert record.slot in sent  # type: ignore[attr-defined]
        assert record.key == keys.firings(record.schedule_id)  # type: ignore[attr-defined]
        assert record.holder.startswith("s0#")  # type: ignore[attr-defined]


async def test_environments_are_apart(make_source: Factory, prefix: str, redis: Redis) -> None:
    prod = await make_source(prefix=f"{prefix}:prod")
    staging = await make_source(prefix=f"{prefix}:staging")
    for source in (prod, staging):
        task = next(s for s in await source.get_schedules() if s.cron)
        assert await fire(source, task)  # both claim: different environments
    keys = sorted(k.decode() for k in await redis.keys(f"{prefix}:*:fire:*"))
    assert [k.split(":")[1] for k in keys] == ["prod", "staging"]


async def test_restart_within_the_minute_does_not_refire(
    make_source: Factory, clock: FakeClock
) -> None:
    first = await make_source()
    cron = next(s for s in await first.get_schedules() if s.cron)
    assert await fire(first, cron)
    await first.shutdown()
    clock.advance(seconds=40)  # taskiq issue #244: a restart later in the same minute
    restarted = await make_source()
    cron = next(s for s in await restarted.get_schedules() if s.cron)
    assert not await fire(restarted, cron)
    clock.advance(seconds=20)  # the next minute is a new firing
    assert await fire(restarted, cron)


async def test_one_off_is_sent_once_and_removed_from_redis(
    make_source: Factory, clock: FakeClock, broker: InMemoryBroker
) -> None:
    first = await make_source()
    at = clock.now + timedelta(seconds=1)
    for _ in range(4):  # four start-ups register it through the composite
        created = await broker.find_task("app:plain").kicker().schedule_by_time(first, at, 5)  # type: ignore[union-attr]
    clock.advance(seconds=2)
    one_off = next(s for s in await first.get_schedules() if s.time)
    assert one_off.schedule_id == created.schedule_id
    assert len(first.schedules[one_off.schedule_id].origins) == 1
    second = await make_source()
    copy = next(s for s in await second.get_schedules() if s.time)
    assert await fire(first, one_off)
    assert not await fire(second, copy)
    assert not [s for s in await redis_child(first).get_schedules() if s.time]


async def test_code_one_off_does_not_refire_after_restarts(
    make_source: Factory, clock: FakeClock
) -> None:
    at = clock.now - timedelta(seconds=1)
    declared = ScheduledTask(task_name="app:plain", labels={}, args=[8], kwargs={}, time=at)
    for hours_later in (
        0,
        3,
        20,
    ):  # each start-up of a scheduler sees the decorator's one-off again
        clock.advance(hours=hours_later)
        source = await make_source()
        label_source = source.sources[0]
        assert isinstance(label_source, LabelScheduleSource)
        label_source.schedules["declared"] = declared.model_copy()
        one_off = next(s for s in await source.get_schedules() if s.time)
        assert await fire(source, one_off) == (hours_later == 0)


async def test_stale_one_offs_are_skipped_with_a_warning(
    make_source: Factory, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    source = await make_source(one_off_grace=timedelta(hours=1))
    await redis_child(source).add_schedule(
        ScheduledTask(
            task_name="app:plain",
            labels={},
            args=[1],
            kwargs={},
            time=clock.now - timedelta(hours=2),
        ),
    )
    schedules = await source.get_schedules()
    await source.get_schedules()
    assert not [s for s in schedules if s.time]
    assert source.stats.stale_one_offs == 2
    warnings = [r for r in caplog.records if "one_off_grace" in r.getMessage()]
    assert len(warnings) == 1  # once while the problem persists, not at every fetch


@needs_interval_store
async def test_add_schedule_is_idempotent_across_concurrent_startups(
    make_source: Factory, broker: InMemoryBroker, redis: Redis, prefix: str
) -> None:
    startups = [await make_source() for _ in range(4)]
    plain = broker.find_task("app:plain")
    assert plain is not None
    created = await asyncio.gather(
        *(plain.kicker().schedule_by_interval(s, 30, 9) for s in startups)
    )
    assert len({c.schedule_id for c in created}) == 1
    assert await redis.llen(f"{prefix}-schedules:interval") == 1
    # A schedule equal to a decorator's label is not written at all:
    await asyncio.gather(
        *(
            broker.find_task("app:tick").kicker().schedule_by_cron(s, "* * * * *", 2)
            for s in startups
        )
    )  # type: ignore[union-attr]
    assert await redis.llen(f"{prefix}-schedules:cron") == 0
    # unschedule() works with the deterministic id:
    await created[0].unschedule()
    assert await redis.llen(f"{prefix}-schedules:interval") == 0
    assert not await redis.keys(f"{prefix}:add:*")  # the add locks were released


async def test_delete_by_any_id_removes_every_copy(
    make_source: Factory, broker: InMemoryBroker
) -> None:
    source = await make_source()
    plain = broker.find_task("app:plain")
    assert plain is not None
    child_ids = [
        (await plain.kicker().schedule_by_cron(redis_child(source), "5 * * * *", 1)).schedule_id
        for _ in range(3)
    ]
    await source.delete_schedule(child_ids[1])
    assert not [s for s in await source.get_schedules() if s.cron == "5 * * * *"]


async def test_label_schedules_cannot_be_deleted(make_source: Factory) -> None:
    source = await make_source()
    cron = next(s for s in await source.get_schedules() if s.cron)
    with pytest.raises(ScheduleInCodeError, match="declared in code"):
        await source.delete_schedule(cron.schedule_id)
    assert cron.schedule_id in source.schedules


async def test_pickling_child_is_refused(
    make_source: Factory, redis_url: str, prefix: str, broker: InMemoryBroker
) -> None:
    source = await make_source(
        children=[ListRedisScheduleSource(redis_url, prefix=f"{prefix}:legacy")]
    )
    with pytest.raises(ConfigurationError, match="JSONSerializer"):
        await broker.find_task("app:plain").kicker().schedule_by_interval(source, 5, 1)  # type: ignore[union-attr]


async def test_bad_schedules_are_skipped_and_the_rest_fire(
    make_source: Factory, redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    source = await make_source()
    child = redis_child(source)
    await child.add_schedule(
        ScheduledTask(
            task_name="app:plain",
            labels={},
            args=[],
            kwargs={},
            cron="99 * * * *",
            schedule_id="bad-cron",
        )
    )
    await child.add_schedule(
        ScheduledTask(
            task_name="app:plain",
            labels={},
            args=[],
            kwargs={},
            cron="* * * * *",
            cron_offset="Nowhere/City",
            schedule_id="bad-tz",
        )
    )
    await redis.set(f"{prefix}-schedules:data:garbage", b"\x80not json")
    await redis.rpush(f"{prefix}-schedules:cron", "garbage")
    schedules = (
        await source.get_schedules()
    )  # the child raises on garbage: last good list (none yet) is kept
    assert source.stats.child_fetch_errors == 1
    assert len(schedules) == 2  # the label schedules keep firing
    await redis.delete(f"{prefix}-schedules:data:garbage")
    schedules = await source.get_schedules()
    assert len(schedules) == 2
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "99 * * * *" in messages
    assert "Nowhere/City" in messages
    assert source.stats.invalid_schedules == 2


@needs_interval_store
async def test_failing_child_keeps_its_last_good_schedules(
    make_source: Factory, broker: InMemoryBroker, own_redis: RedisServer, redis_url: str
) -> None:
    flaky = ListRedisScheduleSource(own_redis.url, prefix="s", serializer=JSONSerializer())
    source = await make_source(children=[LabelScheduleSource(broker), flaky])
    plain = broker.find_task("app:plain")
    assert plain is not None
    await plain.kicker().schedule_by_interval(source, 10, 3)
    assert len(await source.get_schedules()) == 3
    own_redis.kill()
    assert len(await source.get_schedules()) == 3
    assert source.stats.child_fetch_errors == 1


async def test_claim_errors_follow_the_policy(
    make_source: Factory, own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    skip = await make_source(redis_url=own_redis.url, claim_retry_window=0.3)
    send = await make_source(redis_url=own_redis.url, claim_retry_window=0.3, on_claim_error="send")
    tasks = [next(s for s in await src.get_schedules() if s.interval) for src in (skip, send)]
    own_redis.kill()
    with pytest.raises(ScheduledTaskCancelledError):
        await skip.pre_send(tasks[0])
    await send.pre_send(tasks[1])
    assert "dedup_slot" in tasks[1].labels
    assert skip.stats.claim_errors == send.stats.claim_errors == 1
    assert send.stats.sent_without_claim == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert all(r.exc_info is None for r in errors)


async def test_claim_survives_a_short_outage(make_source: Factory, own_redis: RedisServer) -> None:
    source = await make_source(redis_url=own_redis.url, claim_retry_window=5)
    task = next(s for s in await source.get_schedules() if s.interval)
    own_redis.kill()
    loop = asyncio.get_running_loop()
    restart = loop.run_in_executor(None, lambda: (__import__("time").sleep(0.5), own_redis.start()))
    assert await fire(source, task)
    await restart
    assert source.stats.claimed == 1
    assert source.stats.claim_errors == 0


def test_options_are_validated(redis_url: str, broker: InMemoryBroker) -> None:
    children = [LabelScheduleSource(broker)]
    with pytest.raises(ConfigurationError, match="prefix"):
        CompositeScheduleSource(children, redis_url=redis_url, prefix="a b")
    with pytest.raises(ConfigurationError, match="on_claim_error"):
        CompositeScheduleSource(children, redis_url=redis_url, on_claim_error="maybe")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="one_off_grace"):
        CompositeScheduleSource(children, redis_url=redis_url, one_off_grace=timedelta(0))
    with pytest.raises(ConfigurationError, match="sources"):
        CompositeScheduleSource([], redis_url=redis_url)
    with pytest.raises(ConfigurationError, match="exactly one"):
        CompositeScheduleSource(children)


async def test_invalid_added_schedule_is_rejected(
    make_source: Factory, broker: InMemoryBroker
) -> None:
    source = await make_source()
    with pytest.raises(InvalidScheduleError, match="61 0"):
        await broker.find_task("app:plain").kicker().schedule_by_cron(source, "61 0 * * *", 1)  # type: ignore[union-attr]


async def test_post_send_reaches_every_origin(
    make_source: Factory, broker: InMemoryBroker, clock: FakeClock
) -> None:
    source = await make_source()
    at = clock.now - timedelta(seconds=1)
    label_source = source.sources[0]
    assert isinstance(label_source, LabelScheduleSource)
    label_source.schedules["mine"] = ScheduledTask(
        task_name="app:plain", labels={}, args=[4], kwargs={}, time=at, schedule_id="mine"
    )
    await broker.find_task("app:plain").kicker().schedule_by_time(redis_child(source), at, 4)  # type: ignore[union-attr]
    (one_off,) = [s for s in await source.get_schedules() if s.time]
    assert len(source.schedules[one_off.schedule_id].origins) == 2
    assert await fire(source, one_off)
    assert "mine" not in label_source.schedules
    assert not [s for s in await redis_child(source).get_schedules() if s.time]
    assert source.stats.fired == 1
