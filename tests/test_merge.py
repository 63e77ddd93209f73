"""What counts as one schedule, and under which id, through the composite and a real Redis."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import InMemoryBroker, ScheduledTask, ScheduleSource
from taskiq.schedule_sources import LabelScheduleSource
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource

from taskiq_dedup import (
    CompositeScheduleSource,
    InvalidScheduleError,
    ScheduleInCodeError,
    schedule_id_for,
)
from tests.support.clock import FakeClock
from tests.support.firing import fire

Factory = Callable[..., Any]

MORNING = {"cron": "0 9 * * mon", "args": [1], "schedule_id": "morning-report"}
"""A decorator schedule the user named."""


@pytest.fixture
def broker() -> InMemoryBroker:
    broker = InMemoryBroker()

    @broker.task(task_name="app:report", schedule=[MORNING.copy()])
    async def report(n: int) -> None: ...

    @broker.task(task_name="app:weekly", schedule=[{"cron": "0 9 * * mon", "args": [2]}])
    async def weekly(n: int) -> None: ...

    @broker.task(task_name="app:cleanup")
    async def cleanup(*args: object) -> None: ...

    @broker.task(task_name="app:backup")
    async def backup(*args: object) -> None: ...

    return broker


@pytest.fixture
async def make_source(
    broker: InMemoryBroker, redis_url: str, prefix: str
) -> AsyncIterator[Factory]:
    """Started composites over a label source and a Redis source (own children each)."""
    made: list[CompositeScheduleSource] = []

    async def factory(children: list[ScheduleSource] | None = None) -> CompositeScheduleSource:
        source = CompositeScheduleSource(
            children
            or [
                LabelScheduleSource(broker),
                ListRedisScheduleSource(
                    redis_url, prefix=f"{prefix}-schedules", serializer=JSONSerializer()
                ),
            ],
            redis_url=redis_url,
            prefix=prefix,
            clock=FakeClock(),
        )
        await source.startup()
        made.append(source)
        return source

    yield factory
    for source in made:
        await source.shutdown()


def redis_child(source: CompositeScheduleSource) -> ListRedisScheduleSource:
    child = source.sources[-1]
    assert isinstance(child, ListRedisScheduleSource)
    return child


def task_of(broker: InMemoryBroker, name: str) -> Any:
    task = broker.find_task(name)
    assert task is not None
    return task


async def claimed_schedules(redis: Redis, prefix: str) -> list[str]:
    """The schedule ids of the firing-state keys: one per schedule that fired."""
    return sorted(key.decode().rsplit(":", 1)[1] for key in await redis.keys(f"{prefix}:fire:*"))


async def test_one_pin_on_two_tasks_is_two_schedules(
    make_source: Factory, broker: InMemoryBroker, redis: Redis, prefix: str
) -> None:
    source = await make_source()
    created = [
        await task_of(broker, name)
        .kicker()
        .with_labels(dedup_id="nightly")
        .schedule_by_cron(source, "0 3 * * *")
        for name in ("app:cleanup", "app:backup")
    ]
    assert [c.schedule_id for c in created] == ["nightly@app:cleanup", "nightly@app:backup"]
    assert await redis.llen(f"{prefix}-schedules:cron") == 2  # both written
    pinned = [s for s in await source.get_schedules() if s.cron == "0 3 * * *"]
    assert sorted(s.task_name for s in pinned) == ["app:backup", "app:cleanup"]
    for task in pinned:
        assert await fire(source, task)  # each wins its own claim: both fire
    assert len(await claimed_schedules(redis, prefix)) == 2


async def test_datetime_like_strings_are_three_schedules(
    make_source: Factory, broker: InMemoryBroker, redis: Redis, prefix: str
) -> None:
    source = await make_source()
    spellings = ["2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00"]
    for text in spellings:
        await task_of(broker, "app:cleanup").kicker().schedule_by_interval(source, 60, text)
    assert await redis.llen(f"{prefix}-schedules:interval") == 3
    listed = [s for s in await source.get_schedules() if s.interval]
    assert sorted(s.args[0] for s in listed) == sorted(spellings)
    for task in listed:
        assert await fire(source, task)
    assert len(await claimed_schedules(redis, prefix)) == 3


async def test_one_firing_set_spelled_twice_fires_once(
    make_source: Factory, broker: InMemoryBroker, redis: Redis, prefix: str
) -> None:
    source = await make_source()
    weekly = task_of(broker, "app:weekly")
    # A start-up writing straight into Redis with other spellings of the decorator's cron:
    for spelling in ("0 9 * * 1", "0 9 * * MON", "*/60 9 * jan-dec mon"):
        await weekly.kicker().schedule_by_cron(redis_child(source), spelling, 2)
    (merged,) = [s for s in await source.get_schedules() if s.task_name == "app:weekly"]
    assert merged.cron == "0 9 * * 1"  # the canonical spelling taskiq's loop reads right
    assert len(source.schedules[merged.schedule_id].origins) == 4
    # Through the composite, another spelling is not written at all:
    await weekly.kicker().schedule_by_cron(source, "0 9 * * Mon", 2)
    assert await redis.llen(f"{prefix}-schedules:cron") == 3
    schedulers = [await make_source() for _ in range(2)]
    sent = 0
    for scheduler in [source, *schedulers]:
        (task,) = [s for s in await scheduler.get_schedules() if s.task_name == "app:weekly"]
        sent += await fire(scheduler, task)
    assert sent == 1


async def test_label_schedule_keeps_its_own_id(
    make_source: Factory, broker: InMemoryBroker
) -> None:
    """taskiq's label-discovery expectation holds with the composite around the source."""
    label_source = LabelScheduleSource(broker)
    await label_source.startup()
    expected = ScheduledTask(
        task_name="app:report",
        labels={},
        args=[1],
        kwargs={},
        cron="0 9 * * mon",
        schedule_id="morning-report",
    )
    bare = [s for s in await label_source.get_schedules() if s.task_name == "app:report"]
    assert bare == [expected]
    source = await make_source(children=[LabelScheduleSource(broker)])
    wrapped = [s for s in await source.get_schedules() if s.task_name == "app:report"]
    assert [s.schedule_id for s in wrapped] == ["morning-report"]
    assert wrapped[0].task_name == expected.task_name
    assert wrapped[0].args == expected.args


async def test_user_set_id_is_the_public_id_everywhere(
    make_source: Factory, broker: InMemoryBroker, redis: Redis, prefix: str
) -> None:
    source = await make_source()
    cleanup = task_of(broker, "app:cleanup")
    created = (
        await cleanup.kicker()
        .with_schedule_id("weekly-cleanup")
        .schedule_by_cron(source, "0 4 * * 0")
    )
    assert created.schedule_id == "weekly-cleanup"
    content_id = schedule_id_for(
        ScheduledTask(task_name="app:cleanup", labels={}, args=[], kwargs={}, cron="0 4 * * 0")
    )
    # Registered again with a generated id (every start-up): the same schedule, same id.
    again = await cleanup.kicker().schedule_by_cron(source, "0 4 * * 7")
    assert again.schedule_id == "weekly-cleanup"
    assert await redis.llen(f"{prefix}-schedules:cron") == 1
    (listed,) = [s for s in await source.get_schedules() if s.task_name == "app:cleanup"]
    assert listed.schedule_id == "weekly-cleanup"
    entry = source.schedules["weekly-cleanup"]
    assert (entry.public_id, entry.schedule_id) == ("weekly-cleanup", content_id)
    assert await fire(source, listed)  # claims under the content id
    assert await claimed_schedules(redis, prefix) == [content_id]
    await created.unschedule()
    assert not [s for s in await source.get_schedules() if s.task_name == "app:cleanup"]


async def test_naming_an_existing_schedule_later_gives_it_that_id(
    make_source: Factory, broker: InMemoryBroker, redis: Redis, prefix: str
) -> None:
    source = await make_source()
    cleanup = task_of(broker, "app:cleanup")
    unnamed = await cleanup.kicker().schedule_by_interval(source, 45)
    named = await cleanup.kicker().with_schedule_id("tidy").schedule_by_interval(source, 45)
    assert named.schedule_id == "tidy"
    again = await cleanup.kicker().with_schedule_id("tidy").schedule_by_interval(source, 45)
    assert again.schedule_id == "tidy"
    assert await redis.llen(f"{prefix}-schedules:interval") == 2  # one copy per id
    (listed,) = [s for s in await source.get_schedules() if s.task_name == "app:cleanup"]
    assert listed.schedule_id == "tidy"
    assert source.schedules["tidy"].schedule_id == unnamed.schedule_id  # one claim key
    await named.unschedule()
    assert await redis.llen(f"{prefix}-schedules:interval") == 0


@pytest.mark.parametrize("which", ["public", "content", "child"])
async def test_delete_takes_the_public_content_or_a_childs_id(
    make_source: Factory, broker: InMemoryBroker, which: str
) -> None:
    source = await make_source()
    cleanup = task_of(broker, "app:cleanup")
    await cleanup.kicker().with_schedule_id("mine").schedule_by_interval(source, 30)
    child_copy = await cleanup.kicker().schedule_by_interval(redis_child(source), 30)
    await source.get_schedules()
    entry = source.schedules["mine"]
    ids = {"public": "mine", "content": entry.schedule_id, "child": child_copy.schedule_id}
    await source.delete_schedule(ids[which])
    assert not [s for s in await source.get_schedules() if s.task_name == "app:cleanup"]


async def test_decorator_schedule_with_own_id_cannot_be_deleted(make_source: Factory) -> None:
    source = await make_source()
    await source.get_schedules()
    with pytest.raises(ScheduleInCodeError):
        await source.delete_schedule("morning-report")


async def test_copies_with_different_user_ids_take_the_first(
    make_source: Factory, broker: InMemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    source = await make_source()
    report = task_of(broker, "app:report")
    # A Redis copy of the decorator's schedule under another user id:
    await (
        report.kicker()
        .with_schedule_id("other-name")
        .schedule_by_cron(redis_child(source), "0 9 * * 1", 1)
    )
    for _ in range(2):
        (listed,) = [s for s in await source.get_schedules() if s.task_name == "app:report"]
        assert listed.schedule_id == "morning-report"  # the first child listed
    warnings = [r for r in caplog.records if "different schedule ids" in r.getMessage()]
    assert len(warnings) == 1
    assert "other-name" in warnings[0].getMessage()
    with pytest.raises(ScheduleInCodeError):  # any copy's id names the schedule
        await source.delete_schedule("other-name")


async def test_a_user_id_in_use_is_refused_when_adding(
    make_source: Factory, broker: InMemoryBroker
) -> None:
    source = await make_source()
    await (
        task_of(broker, "app:cleanup")
        .kicker()
        .with_schedule_id("daily")
        .schedule_by_cron(source, "0 5 * * *")
    )
    with pytest.raises(InvalidScheduleError, match="'daily' is already used"):
        await (
            task_of(broker, "app:backup")
            .kicker()
            .with_schedule_id("daily")
            .schedule_by_cron(source, "0 5 * * *")
        )
    (listed,) = [s for s in await source.get_schedules() if s.cron == "0 5 * * *"]
    assert (listed.task_name, listed.schedule_id) == ("app:cleanup", "daily")


async def test_one_user_id_on_two_schedules_keeps_both(
    make_source: Factory, broker: InMemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    source = await make_source()
    # Another schedule written straight into Redis under the decorator schedule's id:
    await (
        task_of(broker, "app:backup")
        .kicker()
        .with_schedule_id("morning-report")
        .schedule_by_cron(redis_child(source), "0 5 * * *")
    )
    for _ in range(2):
        listed = {s.task_name: s.schedule_id for s in await source.get_schedules()}
    assert listed["app:report"] == "morning-report"  # the first child listed keeps it
    assert listed["app:backup"] == schedule_id_for(
        ScheduledTask(task_name="app:backup", labels={}, args=[], kwargs={}, cron="0 5 * * *")
    )
    assert len([r for r in caplog.records if "already used" in r.getMessage()]) == 1


async def test_differing_labels_are_reported_once_per_difference(
    make_source: Factory, broker: InMemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="taskiq_dedup")
    source = await make_source()
    weekly = task_of(broker, "app:weekly")
    await (
        weekly.kicker()
        .with_labels(queue="slow")
        .schedule_by_cron(redis_child(source), "0 9 * * 1", 2)
    )

    def reports() -> list[str]:
        return [r.getMessage() for r in caplog.records if "differ in labels" in r.getMessage()]

    for _ in range(3):
        await source.get_schedules()
    (report,) = reports()
    assert "queue" in report
    assert "'slow'" in report
    assert "(unset)" in report
    assert "LabelScheduleSource" in report.split("sending the copy")[1]
    # Another difference: reported again, once.
    await (
        weekly.kicker()
        .with_labels(priority=5)
        .schedule_by_cron(redis_child(source), "0 9 * * 1", 2)
    )
    for _ in range(3):
        await source.get_schedules()
    assert len(reports()) == 2
    assert "priority" in reports()[1]
