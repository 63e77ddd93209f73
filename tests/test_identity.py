"""schedule_id_for: the same schedule from anywhere is one id; different content differs."""

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from taskiq import InMemoryBroker, ScheduledTask
from taskiq.schedule_sources import LabelScheduleSource

from taskiq_dedup import InvalidScheduleError, schedule_id_for


def scheduled(**fields: object) -> ScheduledTask:
    base: dict[str, object] = {"task_name": "app:report", "labels": {}, "args": [], "kwargs": {}}
    return ScheduledTask.model_validate({**base, **fields})


def test_child_ids_and_labels_are_not_identity() -> None:
    one = scheduled(cron="*/5 * * * *", schedule_id="a", labels={"x": 1})
    two = scheduled(cron="*/5  *  * * *", schedule_id="b", labels={"y": "2"})
    assert schedule_id_for(one) == schedule_id_for(two)
    assert len(schedule_id_for(one)) == 32


async def test_label_copy_and_kicker_copy_are_one_schedule() -> None:
    broker = InMemoryBroker()

    @broker.task(
        task_name="app:report",
        retry_on_error=True,
        schedule=[{"cron": "0 9 * * *", "args": [7], "kwargs": {"to": "ops"}}],
    )
    async def report(day: int, to: str) -> None: ...

    label_source = LabelScheduleSource(broker)
    await label_source.startup()
    (from_label,) = await label_source.get_schedules()

    captured: list[ScheduledTask] = []

    class Capture(LabelScheduleSource):
        async def add_schedule(self, schedule: ScheduledTask) -> None:
            captured.append(schedule)

    await report.kicker().schedule_by_cron(Capture(broker), "0 9 * * *", 7, to="ops")
    (from_kicker,) = captured
    assert from_label.labels != from_kicker.labels  # taskiq's two paths label differently
    assert from_label.schedule_id != from_kicker.schedule_id
    assert schedule_id_for(from_label) == schedule_id_for(from_kicker)


def test_json_round_trip_keeps_the_id() -> None:
    original = scheduled(
        time=datetime(2030, 1, 2, 3, 4, 5),
        args=[(1, 2), {"b": 1, "a": datetime(2030, 1, 1)}],
        kwargs={"when": datetime(2030, 1, 1, tzinfo=timezone.utc)},
    )
    restored = ScheduledTask.model_validate(original.model_dump(mode="json"))
    assert schedule_id_for(original) == schedule_id_for(restored)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"cron": "0 9 * * *"}, {"cron": "0 10 * * *"}),
        ({"cron": "0 9 * * *"}, {"cron": "0 9 * * *", "cron_offset": "Europe/Berlin"}),
        ({"cron": "0 9 * * *", "cron_offset": timedelta(hours=1)}, {"cron": "0 9 * * *"}),
        ({"interval": 5}, {"interval": 6}),
        ({"interval": 5}, {"interval": 5, "args": [1]}),
        ({"interval": 5, "kwargs": {"a": 1}}, {"interval": 5, "kwargs": {"a": "1"}}),
        ({"interval": 5}, {"interval": 5, "task_name": "app:other"}),
        ({"time": datetime(2030, 1, 1)}, {"time": datetime(2030, 1, 1, 0, 0, 1)}),
    ],
)
def test_different_content_gives_different_ids(
    left: dict[str, object], right: dict[str, object]
) -> None:
    assert schedule_id_for(scheduled(**left)) != schedule_id_for(scheduled(**right))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"interval": 60}, {"interval": timedelta(minutes=1)}),
        ({"cron": "0 9 * * *"}, {"cron": "0 9 * * *", "cron_offset": "UTC"}),
        ({"cron": "0 9 * * *"}, {"cron": "0 9 * * *", "cron_offset": timedelta(0)}),
        (
            {"time": datetime(2030, 1, 1)},
            {"time": datetime(2030, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))},
        ),
    ],
)
def test_equivalent_triggers_give_one_id(left: dict[str, object], right: dict[str, object]) -> None:
    assert schedule_id_for(scheduled(**left)) == schedule_id_for(scheduled(**right))


def test_pinned_id_wins() -> None:
    task = scheduled(interval=5, labels={"dedup_id": "nightly-report"})
    assert schedule_id_for(task) == "nightly-report"
    with pytest.raises(InvalidScheduleError, match="dedup_id"):
        schedule_id_for(scheduled(interval=5, labels={"dedup_id": ""}))


def test_arguments_without_json_form_are_named() -> None:
    with pytest.raises(InvalidScheduleError) as info:
        schedule_id_for(scheduled(interval=5, args=[object()]))
    assert "app:report" in str(info.value)
    assert "JSON" in str(info.value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def test_sets_are_sorted() -> None:
    one = scheduled(interval=3, args=[{"b", "a", "c"}])
    two = scheduled(interval=3, args=[["a", "b", "c"]])
    assert schedule_id_for(one) == schedule_id_for(two)


@given(kwargs=st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_stable_under_dict_ordering(kwargs: dict[str, object]) -> None:
    reordered = dict(reversed(list(kwargs.items())))
    assert schedule_id_for(scheduled(interval=3, kwargs=kwargs)) == schedule_id_for(
        scheduled(interval=3, kwargs=reordered)
    )


@given(args=st.lists(json_values, max_size=5))
def test_stable_under_list_or_tuple(args: list[object]) -> None:
    as_tuples = [tuple(a) if isinstance(a, list) else a for a in args]
    assert schedule_id_for(scheduled(interval=3, args=args)) == schedule_id_for(
        scheduled(interval=3, args=as_tuples)
    )


@given(moment=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)))
def test_naive_is_utc(moment: datetime) -> None:
    aware = moment.replace(tzinfo=timezone.utc)
    assert schedule_id_for(scheduled(time=moment)) == schedule_id_for(scheduled(time=aware))
    assert schedule_id_for(scheduled(interval=1, args=[moment])) == schedule_id_for(
        scheduled(interval=1, args=[aware])
    )


@example(a=[[False, False]], b=[[False, 0]])
@given(a=st.lists(json_values, max_size=3), b=st.lists(json_values, max_size=3))
def test_different_args_differ(a: list[object], b: list[object]) -> None:
    # Compare the JSON text, not Python values: False == 0 in Python, not in JSON.
    same_json = json.dumps(
        scheduled(interval=3, args=a).model_dump(mode="json")["args"], sort_keys=True
    ) == json.dumps(scheduled(interval=3, args=b).model_dump(mode="json")["args"], sort_keys=True)
    assert (
        schedule_id_for(scheduled(interval=3, args=a))
        == schedule_id_for(scheduled(interval=3, args=b))
    ) == same_json
