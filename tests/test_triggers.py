"""Slots: the same firing gets the same slot on every host, within the clock-skew bound."""

from datetime import datetime, timedelta, timezone

import pytest
from taskiq import ScheduledTask

from taskiq_dedup import InvalidScheduleError
from taskiq_dedup.triggers import (
    CLAIM_GRACE,
    MAX_CLOCK_SKEW,
    CronTrigger,
    IntervalTrigger,
    OneOffTrigger,
    epoch_seconds,
    parse_trigger,
)

UTC = timezone.utc
NOON = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def task(**fields: object) -> ScheduledTask:
    base: dict[str, object] = {"task_name": "t", "labels": {}, "args": [], "kwargs": {}}
    return ScheduledTask.model_validate({**base, **fields})


@pytest.mark.parametrize("delta", [-4.9, -2, 0, 0.2, 2, 30, 54.9])
def test_cron_slot_is_the_minute_fired_even_with_skew(delta: float) -> None:
    trigger = parse_trigger(task(cron="* * * * *"))
    assert trigger.slot(NOON + timedelta(seconds=delta)) == epoch_seconds(NOON)


def test_cron_slot_is_the_latest_cron_time() -> None:
    trigger = parse_trigger(task(cron="*/15 * * * *"))
    assert trigger.slot(NOON + timedelta(minutes=20)) == epoch_seconds(NOON + timedelta(minutes=15))


def test_cron_offset_and_timezone_are_honoured() -> None:
    shifted = parse_trigger(task(cron="0 14 * * *", cron_offset=timedelta(hours=2)))
    assert shifted.slot(NOON) == epoch_seconds(NOON)  # 14:00 at +02:00 is 12:00 UTC
    berlin = parse_trigger(task(cron="0 13 * * *", cron_offset="Europe/Berlin"))
    assert berlin.slot(NOON + timedelta(seconds=1)) == epoch_seconds(NOON)  # CET in March
    assert isinstance(berlin, CronTrigger)
    assert berlin.next_fire(NOON) == NOON + timedelta(days=1)


def test_interval_buckets_align_to_the_epoch() -> None:
    trigger = parse_trigger(task(interval=7))
    assert isinstance(trigger, IntervalTrigger)
    for second in range(100):
        now = NOON + timedelta(seconds=second, milliseconds=500)
        slot = trigger.slot(now)
        assert slot % 7 == 0
        assert slot <= now.timestamp() < slot + 7


def test_one_off_slot_is_its_time() -> None:
    trigger = parse_trigger(task(time=datetime(2026, 3, 10, 12, 0, 30)))
    assert isinstance(trigger, OneOffTrigger)
    assert trigger.slot(NOON + timedelta(hours=5)) == epoch_seconds(NOON) + 30
    assert trigger.claim_expiry(100, timedelta(days=1)) == 100 + 86400 + CLAIM_GRACE.total_seconds()


def test_claims_outlive_the_window_a_slot_can_be_fired_again_in() -> None:
    cron = parse_trigger(task(cron="* * * * *"))
    assert cron.claim_expiry(0) >= 60 + MAX_CLOCK_SKEW.total_seconds()
    interval = parse_trigger(task(interval=30))
    assert interval.claim_expiry(0) >= 30 + MAX_CLOCK_SKEW.total_seconds()


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [
        ({"cron": "61 * * * *"}, "61 * * * *"),
        ({"cron": "* * * *"}, "* * * *"),
        ({"cron": "not a cron"}, "not a cron"),
        ({"cron": "* * * * * *"}, "* * * * * *"),
        ({"cron": "* * * * *", "cron_offset": "Mars/Olympus"}, "Mars/Olympus"),
        ({"cron": "* * * * *", "interval": 5}, "exactly one"),
    ],
)
def test_bad_triggers_are_named(fields: dict[str, object], culprit: str) -> None:
    with pytest.raises(InvalidScheduleError) as info:
        parse_trigger(task(**fields))
    assert culprit in str(info.value)
    assert "'t'" in str(info.value)


@pytest.mark.parametrize("interval", [0, -5, 1.5])
def test_bad_intervals_are_named(interval: float) -> None:
    with_cron = ScheduledTask.model_construct(
        task_name="t",
        labels={},
        args=[],
        kwargs={},
        interval=interval,
        cron="* * * * *",
        time=None,
        schedule_id="x",
    )
    with pytest.raises(InvalidScheduleError, match="exactly one"):
        parse_trigger(with_cron)
    bad = ScheduledTask.model_construct(
        task_name="t",
        labels={},
        args=[],
        kwargs={},
        interval=interval,
        cron=None,
        time=None,
        schedule_id="x",
    )
    with pytest.raises(InvalidScheduleError, match="interval"):
        parse_trigger(bad)
