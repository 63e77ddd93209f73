"""Catch-up in one process: missed slots found, claimed and sent once, on the private Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import pytest
from redis.asyncio import Redis
from taskiq import Context, InMemoryBroker, TaskiqDepends
from taskiq.schedule_sources import LabelScheduleSource

from taskiq_dedup import CompositeScheduleSource, catch_up
from taskiq_dedup.catch_up import (
    CatchUp,
    CatchUpPolicy,
    CatchUpTarget,
    missed_slots,
    parse_catch_up,
)
from taskiq_dedup.claims import FiringClaims
from taskiq_dedup.errors import ConfigurationError
from taskiq_dedup.firing import FiringCoordinator
from taskiq_dedup.identity import pinned_id
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.triggers import MAX_CANDIDATES, CronTrigger, IntervalTrigger, epoch_seconds
from tests.support.clock import FakeClock
from tests.support.polling import eventually

NOW = datetime(2026, 3, 10, 12, 0, 30, tzinfo=timezone.utc)  # 30 s into a minute
MINUTE = epoch_seconds(NOW) // 60 * 60  # the current cron slot
EVERY_MINUTE = CronTrigger("* * * * *")
SCHEDULE = "report"


def test_labels_are_read_as_the_wire_sends_them() -> None:
    assert parse_catch_up({}, where="s") is None
    assert parse_catch_up({"dedup_catch_up": 0}, where="s") is None
    assert parse_catch_up({"dedup_catch_up": "600"}, where="s") == CatchUpPolicy(600)
    assert parse_catch_up(
        {"dedup_catch_up": 600, "dedup_catch_up_all": "True"}, where="s"
    ) == CatchUpPolicy(600, every_slot=True)
    with pytest.raises(ConfigurationError, match=r"^s: dedup_catch_up must be .*got 1.5"):
        parse_catch_up({"dedup_catch_up": 1.5}, where="s")
    for bad in (True, "inf", "nan", "-60", "soon"):
        with pytest.raises(ConfigurationError, match="dedup_catch_up must be"):
            parse_catch_up({"dedup_catch_up": bad}, where="s")


def test_missed_slots_are_before_the_current_one_and_within_the_window() -> None:
    assert missed_slots(EVERY_MINUTE, NOW, 170) == [MINUTE - 120, MINUTE - 60, MINUTE]
    assert missed_slots(EVERY_MINUTE, NOW, 30) == [MINUTE]  # 30 s back: the edge is in
    assert missed_slots(EVERY_MINUTE, NOW, 29) == []
    assert missed_slots(EVERY_MINUTE, NOW - timedelta(seconds=31), 60) == [MINUTE - 60]
    many = missed_slots(IntervalTrigger(1), NOW, 3600)
    assert len(many) == MAX_CANDIDATES
    assert many[-1] == epoch_seconds(NOW)  # the latest are kept


@pytest.fixture
async def replicas(redis_url: str, prefix: str) -> AsyncIterator[list[CatchUp]]:
    """Three schedulers' catch-up, each with its own claims client."""
    clients = [Redis.from_url(redis_url) for _ in range(3)]
    made = [
        CatchUp(
            FiringCoordinator(
                FiringClaims(client, f"replica-{index}"),
                KeySpace(prefix),
                one_off_grace=timedelta(days=1),
            )
        )
        for index, client in enumerate(clients)
    ]
    yield made
    for client in clients:
        await client.aclose()


async def seed_cursor(redis: Redis, prefix: str, slot: int, schedule_id: str = SCHEDULE) -> None:
    """The firing state as a schedule that last fired at ``slot`` left it."""
    key = KeySpace(prefix).firings(schedule_id)
    await redis.hset(key, mapping={"sent": slot, "sent_by": "before-the-outage"})
    await redis.expire(key, 24 * 3600)


def target(sent: list[int], *, window: int = 170, every: bool = False) -> CatchUpTarget:
    async def send(slot: int) -> None:
        await asyncio.sleep(0.01)  # a kick's round trip: lets the replicas interleave
        sent.append(slot)

    return CatchUpTarget(SCHEDULE, EVERY_MINUTE, CatchUpPolicy(window, every), send)


async def test_only_the_latest_missed_slot_is_sent_once_across_replicas(
    replicas: list[CatchUp], redis: Redis, prefix: str
) -> None:
    await seed_cursor(redis, prefix, MINUTE - 300)
    sent: list[int] = []
    await asyncio.gather(*(r.run([target(sent)], NOW) for r in replicas))
    assert sent == [MINUTE]
    assert sum(r.stats.caught_up for r in replicas) == 1
    cursor = await redis.hget(KeySpace(prefix).firings(SCHEDULE), "sent")
    assert cursor == str(MINUTE).encode()  # the loop goes on from there


async def test_every_missed_slot_within_the_window_is_sent_once_with_the_option(
    replicas: list[CatchUp], redis: Redis, prefix: str
) -> None:
    await seed_cursor(redis, prefix, MINUTE - 300)
    sent: list[int] = []
    for _ in range(2):  # a second start finds nothing left
        await asyncio.gather(*(r.run([target(sent, every=True)], NOW) for r in replicas))
    assert sorted(sent) == [MINUTE - 120, MINUTE - 60, MINUTE]  # nothing older than the window
    assert len(sent) == len(set(sent))


async def test_a_schedule_without_history_catches_nothing_up(
    replicas: list[CatchUp], redis: Redis, prefix: str
) -> None:
    sent: list[int] = []
    await replicas[0].run([target(sent, every=True)], NOW)
    assert sent == []
    assert not await redis.exists(KeySpace(prefix).firings(SCHEDULE))


async def test_slots_already_sent_are_not_caught_up(
    replicas: list[CatchUp], redis: Redis, prefix: str
) -> None:
    await seed_cursor(redis, prefix, MINUTE)
    sent: list[int] = []
    await replicas[0].run([target(sent, every=True)], NOW)
    assert sent == []


async def test_a_failed_send_is_released_for_another_replica(
    replicas: list[CatchUp], redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    await seed_cursor(redis, prefix, MINUTE - 300)

    async def broken(slot: int) -> None:
        raise ConnectionError(f"broker down for {slot}")

    failing = CatchUpTarget(SCHEDULE, EVERY_MINUTE, CatchUpPolicy(170), broken)
    await replicas[0].run([failing], NOW)
    assert replicas[0].stats.catch_up_failures == 1
    assert any(
        r.levelno == logging.ERROR and "Catch-up of schedule report failed" in r.getMessage()
        for r in caplog.records
    )
    sent: list[int] = []
    await replicas[1].run([target(sent)], NOW)  # released at once: no lease to wait out
    assert sent == [MINUTE]


@pytest.fixture
def broker() -> InMemoryBroker:
    return InMemoryBroker()


async def test_the_composite_catches_up_at_its_first_fetch_and_after_a_pause(
    broker: InMemoryBroker,
    redis: Redis,
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[Any] = []
    labels = {"dedup_id": "report", "dedup_catch_up": 170}

    @broker.task(task_name="app:report", schedule=[{"cron": "* * * * *", "labels": labels}])
    async def report(context: Annotated[Context, TaskiqDepends()]) -> None:
        runs.append(context.message.labels["dedup_slot"])

    schedule_id = pinned_id("app:report", "report")
    await seed_cursor(redis, prefix, MINUTE - 300, schedule_id)
    clock = FakeClock(NOW)
    source = CompositeScheduleSource(
        [LabelScheduleSource(broker)], redis_url=redis_url, prefix=prefix, clock=clock
    )
    await source.startup()
    try:
        await source.get_schedules()
        await eventually(lambda: runs, timeout=5)
        assert [int(slot) for slot in runs] == [MINUTE]
        assert source.stats.caught_up == 1
        await redis.hset(KeySpace(prefix).firings(schedule_id), "sent", MINUTE - 300)
        await source.get_schedules()  # the loop did not pause: no catch-up
        assert source.catch_up.stats.caught_up == 1
        monkeypatch.setattr(catch_up, "RESUME_GAP", 0.0)  # any gap is now a pause
        await source.get_schedules()
        await eventually(lambda: len(runs) == 2, timeout=5)
        assert source.catch_up.stats.caught_up == 2
    finally:
        await source.shutdown()
