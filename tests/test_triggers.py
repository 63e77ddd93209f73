"""Slots: the same firing gets the same slot on every host, within the clock-skew bound."""

import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pycron
import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st
from taskiq import ScheduledTask

from taskiq_dedup import InvalidScheduleError
from taskiq_dedup.triggers import (
    CLAIM_GRACE,
    LATE_WINDOW,
    MAX_CANDIDATES,
    MAX_CLOCK_SKEW,
    CronTrigger,
    IntervalTrigger,
    OneOffTrigger,
    _cron_slot,
    _valid_cron,
    as_utc,
    describe,
    epoch_seconds,
    parse_trigger,
)
from tests.test_identity import CronSets, cron_sets, spelled

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
    assert trigger.state_expiry(100, timedelta(days=1)) == 100 + 86400 + CLAIM_GRACE.total_seconds()
    assert trigger.candidates(NOON) == [epoch_seconds(NOON) + 30]
    assert trigger.slots_between(0, 10**9) == []


def test_state_outlives_the_next_slots_window() -> None:
    """A cursor that expired before the next slot's window passed would lose late firings."""
    window = (LATE_WINDOW + MAX_CLOCK_SKEW).total_seconds()
    cron = parse_trigger(task(cron="* * * * *"))
    assert cron.state_expiry(0) >= 60 + window
    daily = parse_trigger(task(cron="0 9 * * *"))
    nine = epoch_seconds(datetime(2026, 3, 10, 9, 0, tzinfo=timezone.utc))
    assert daily.state_expiry(nine) >= nine + 86400 + window
    interval = parse_trigger(task(interval=30))
    assert interval.state_expiry(0) >= 30 + 30 + LATE_WINDOW.total_seconds()


def test_candidates_cover_the_late_window_up_to_the_current_slot() -> None:
    cron = parse_trigger(task(cron="* * * * *"))
    late = NOON + timedelta(seconds=57)
    # 12:00:57 + the skew allowance reaches 12:01; the window reaches back 2 min from it.
    assert cron.candidates(late) == [epoch_seconds(NOON) + 60 * m for m in (-1, 0, 1)]
    assert cron.candidates(NOON)[-1] == epoch_seconds(NOON)
    interval = parse_trigger(task(interval=60))
    slots = interval.candidates(NOON + timedelta(seconds=5))
    assert slots == [epoch_seconds(NOON) + 60 * m for m in (-3, -2, -1, 0)]
    every_second = parse_trigger(task(interval=1))
    assert len(every_second.candidates(NOON)) == 1 + 1 + LATE_WINDOW.total_seconds()
    assert interval.slots_between(epoch_seconds(NOON), epoch_seconds(NOON) + 180) == [
        epoch_seconds(NOON) + 60,
        epoch_seconds(NOON) + 120,
    ]
    assert cron.slots_between(epoch_seconds(NOON), epoch_seconds(NOON) + 120) == [
        epoch_seconds(NOON) + 60
    ]
    assert len(interval.slots_between(0, 10**12)) == MAX_CANDIDATES


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


@pytest.mark.parametrize(
    "cron",
    ["0 9 l * *", "0 9 15w * *", "0 9 * * 2#3", "0 9 * * l5"],
)
def test_crons_taskiqs_loop_never_matches_are_named(cron: str) -> None:
    with pytest.raises(InvalidScheduleError, match="taskiq's scheduler") as info:
        parse_trigger(task(cron=cron))
    assert cron in str(info.value)


@settings(deadline=None)
@given(
    data=st.data(),
    sets=cron_sets(),
    moment=st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1)),
)
def test_taskiqs_loop_fires_the_canonical_cron_when_croniter_does(
    data: st.DataObject, sets: CronSets, moment: datetime
) -> None:
    """The loop (pycron) reads the canonical spelling as croniter reads the original."""
    original = data.draw(spelled(sets))
    trigger = parse_trigger(task(cron=original))
    assert isinstance(trigger, CronTrigger)
    moment = moment.replace(second=0, microsecond=0)
    assert pycron.is_now(trigger.expression, moment) == croniter.match(original, moment)
    following = croniter(original, moment).get_next(datetime)
    assert pycron.is_now(trigger.expression, following)


@pytest.mark.parametrize(
    ("cron", "sunday_fires"),
    [("0 9 * * 7", True), ("0 9 * * sat-sun", True), ("0 9 * * mon", False)],
)
def test_sunday_as_7_and_named_ranges_fire_in_taskiqs_loop(cron: str, sunday_fires: bool) -> None:
    sunday = datetime(2026, 1, 4, 9, 0)
    assert not pycron.is_now("0 9 * * 7", sunday)  # pycron alone never matches 7
    assert pycron.is_now(parse_trigger(task(cron=cron)).expression, sunday) == sunday_fires  # type: ignore[union-attr]


@pytest.fixture(autouse=True)
def _cold_caches() -> None:
    """Slots and cron checks are cached per process: start each test without them,
    so a test exercises the code and not an answer an earlier test left behind."""
    _cron_slot.cache_clear()
    _valid_cron.cache_clear()


def test_canonical_forms_name_the_zone_or_offset() -> None:
    assert parse_trigger(task(cron="*/5  *  * * MON")).canonical() == "cron:0-55/5 * * * 1@UTC"
    for utc in ("UTC", "Etc/UTC", timedelta(0)):
        plain = parse_trigger(task(cron="* * * * *", cron_offset=utc))
        assert plain.canonical() == "cron:* * * * *@UTC"
    berlin = parse_trigger(task(cron="* * * * *", cron_offset="Europe/Berlin"))
    assert berlin.canonical() == "cron:* * * * *@tz=Europe/Berlin"
    shifted = parse_trigger(task(cron="* * * * *", cron_offset=timedelta(hours=-2)))
    assert shifted.canonical() == "cron:* * * * *@offset=-7200"
    assert parse_trigger(task(interval=timedelta(minutes=1))) == IntervalTrigger(60)


def test_next_fire_of_each_trigger() -> None:
    interval = parse_trigger(task(interval=7))
    now = NOON + timedelta(seconds=1)
    start = epoch_seconds(now) // 7 * 7 + 7
    assert interval.next_fire(now) == datetime.fromtimestamp(start, tz=UTC)
    assert interval.next_fire(now).tzinfo is UTC
    one_off = OneOffTrigger(NOON)
    assert one_off.next_fire(NOON - timedelta(microseconds=1)) == NOON
    assert one_off.next_fire(NOON) is None
    assert one_off.next_fire(NOON + timedelta(hours=1)) is None
    shifted = parse_trigger(task(cron="0 14 * * *", cron_offset=timedelta(hours=2)))
    assert shifted.next_fire(NOON) == NOON + timedelta(days=1)  # 14:00 at +02:00, tomorrow


def test_as_utc_reads_naive_as_utc_and_converts_aware() -> None:
    naive = as_utc(datetime(2026, 3, 10, 12, 0))  # naive on purpose
    assert naive == NOON
    assert naive.tzinfo is UTC
    plus_two = datetime(2026, 3, 10, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    assert as_utc(plus_two) == NOON
    assert as_utc(plus_two).tzinfo is UTC


def test_describe_names_id_task_and_trigger() -> None:
    assert describe(task(interval=5, schedule_id="s1")) == "schedule s1 of task 't' (5)"
    assert describe(task(cron="0 * * * *", schedule_id="s2")) == (
        "schedule s2 of task 't' ('0 * * * *')"
    )


def test_messages_say_what_a_trigger_needs() -> None:
    none = ScheduledTask.model_construct(
        task_name="t", labels={}, args=[], kwargs={}, cron=None, interval=None, time=None
    )
    with pytest.raises(InvalidScheduleError, match="has none"):
        parse_trigger(none)
    with pytest.raises(InvalidScheduleError) as info:
        parse_trigger(task(cron="61 * * * *"))
    rule = "'61 * * * *' (five fields: minute hour day month weekday, matching some date)"
    assert rule in str(info.value)


def test_the_shortest_interval_is_one_second() -> None:
    assert parse_trigger(task(interval=1)) == IntervalTrigger(1)


@pytest.fixture
def host_in_kathmandu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The host's local time at UTC+05:45: only UTC may enter a slot."""
    monkeypatch.setenv("TZ", "Asia/Kathmandu")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("host_in_kathmandu")
def test_slots_do_not_depend_on_the_hosts_timezone() -> None:
    assert parse_trigger(task(cron="0 * * * *")).slot(NOON + timedelta(minutes=5)) == (
        epoch_seconds(NOON)
    )
    assert parse_trigger(task(interval=60)).slot(NOON) == epoch_seconds(NOON)
