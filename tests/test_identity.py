"""schedule_id_for: the same schedule from anywhere is one id; different content differs."""

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, Field
from taskiq import InMemoryBroker, ScheduledTask
from taskiq.kicker import AsyncKicker
from taskiq.schedule_sources import LabelScheduleSource

from taskiq_dedup import InvalidScheduleError, schedule_id_for
from taskiq_dedup.identity import content_digest, pinned_id


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


def test_pinned_id_is_scoped_to_its_task() -> None:
    task = scheduled(interval=5, labels={"dedup_id": "nightly-report"})
    assert schedule_id_for(task) == "nightly-report@app:report"
    other = scheduled(task_name="app:other", interval=5, labels={"dedup_id": "nightly-report"})
    assert schedule_id_for(other) == "nightly-report@app:other"
    # The same pin and task is one schedule whatever its trigger:
    assert schedule_id_for(scheduled(cron="0 9 * * *", labels={"dedup_id": "nightly-report"})) == (
        schedule_id_for(task)
    )
    with pytest.raises(InvalidScheduleError, match="dedup_id"):
        schedule_id_for(scheduled(interval=5, labels={"dedup_id": ""}))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (("a@b", "c"), ("a", "b@c")),  # split either side of an @
        (("x", "#1"), ("x", "#2")),
        (("x", "p"), ("x", "#" + "0" * 32)),
    ],
)
def test_pins_that_look_alike_stay_apart(left: tuple[str, str], right: tuple[str, str]) -> None:
    ids = {
        schedule_id_for(scheduled(task_name=task, interval=5, labels={"dedup_id": pin}))
        for task, pin in (left, right)
    }
    assert len(ids) == 2


def test_arguments_without_json_form_are_named() -> None:
    with pytest.raises(InvalidScheduleError) as info:
        schedule_id_for(scheduled(interval=5, args=[object()]))
    assert "app:report" in str(info.value)
    assert "JSON" in str(info.value)


moments = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(2200, 1, 1),
    timezones=st.none()
    | st.just(timezone.utc)
    | st.builds(
        lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-14 * 60, 14 * 60)
    ),
)
iso_strings = st.builds(
    lambda moment, separator, zone: moment.replace(tzinfo=None).isoformat(separator) + zone,
    moments,
    st.sampled_from(["T", " "]),
    st.sampled_from(["", "Z", "+00:00", "+01:00", "-05:30"]),
)
"""Strings that look like datetimes: the same instant spelled several ways."""

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.text(max_size=20)
    | iso_strings
    | st.floats(allow_nan=False),
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


def as_the_worker_receives(args: list[object]) -> str:
    """The args of a message sent by taskiq's own kicker and formatter, as JSON text."""
    broker = InMemoryBroker()
    message = AsyncKicker("app:report", broker, {})._prepare_message(*args)
    sent = json.loads(broker.formatter.dumps(message).message)
    return json.dumps(sent["args"], sort_keys=True)


@given(moment=moments)
def test_a_datetime_and_the_string_it_is_sent_as_are_one(moment: datetime) -> None:
    (as_sent,) = json.loads(as_the_worker_receives([moment]))
    assert isinstance(as_sent, str)
    assert schedule_id_for(scheduled(interval=1, args=[moment])) == schedule_id_for(
        scheduled(interval=1, args=[as_sent])
    )


@given(moment=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)))
def test_naive_one_off_time_is_utc(moment: datetime) -> None:
    aware = moment.replace(tzinfo=timezone.utc)
    assert schedule_id_for(scheduled(time=moment)) == schedule_id_for(scheduled(time=aware))


def test_datetime_like_strings_are_strings() -> None:
    # One instant, three strings: the task receives three different values.
    spellings = ["2026-01-01T01:00:00+01:00", "2026-01-01T00:00:00Z", "2026-01-01T00:00:00"]
    ids = {schedule_id_for(scheduled(interval=60, args=[text])) for text in spellings}
    assert len(ids) == 3
    # A naive and an aware datetime are sent as different strings, so differ too:
    naive, aware = datetime(2026, 1, 1), datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert as_the_worker_receives([naive]) != as_the_worker_receives([aware])
    assert schedule_id_for(scheduled(interval=60, args=[naive])) != schedule_id_for(
        scheduled(interval=60, args=[aware])
    )


def test_arguments_are_taken_as_the_formatter_sends_them() -> None:
    # taskiq's formatter sends infinity as null and a model by field name.
    class Point(BaseModel):
        x: int = Field(alias="X")

    assert as_the_worker_receives([float("inf"), Point(X=1)]) == '[null, {"x": 1}]'
    assert schedule_id_for(scheduled(interval=5, args=[float("inf"), Point(X=1)])) == (
        schedule_id_for(scheduled(interval=5, args=[None, {"x": 1}]))
    )


@example(a=[[False, False]], b=[[False, 0]])
@example(a=["2026-01-01T00:00:00Z"], b=["2026-01-01T00:00:00+00:00"])
@given(a=st.lists(json_values, max_size=3), b=st.lists(json_values, max_size=3))
def test_different_args_differ(a: list[object], b: list[object]) -> None:
    # Compare what the worker receives as JSON text, not Python values: False == 0
    # in Python, not in JSON, and two strings naming one instant are two strings.
    same_json = as_the_worker_receives(a) == as_the_worker_receives(b)
    assert (
        schedule_id_for(scheduled(interval=3, args=a))
        == schedule_id_for(scheduled(interval=3, args=b))
    ) == same_json


@given(pin=st.text(min_size=1, max_size=12).filter(str.strip), a=st.text(), b=st.text())
def test_pinned_id_depends_on_the_task(pin: str, a: str, b: str) -> None:
    left = schedule_id_for(scheduled(task_name=a, interval=5, labels={"dedup_id": pin}))
    right = schedule_id_for(scheduled(task_name=b, interval=5, labels={"dedup_id": pin}))
    assert (left == right) == (a == b)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("0 9 * * mon", "0 9 * * 1"),
        ("0 9 * * 0", "0 9 * * 7"),
        ("0 9 * * sun", "0 9 * * 7"),
        ("*/1 * * * *", "* * * * *"),
        ("0 9 * jan,feb *", "0 9 * 1-2 *"),
        ("0 9 * * mon-fri", "0 9 * * 1,2,3,4,5"),
        ("0 9 * * sat-sun", "0 9 * * 0,6"),
        ("0 9 * * 5-7", "0 9 * * 0,5,6"),
        ("*/15 * * * *", "0,15,30,45 * * * *"),
        ("0 9 ? * *", "0 9 * * *"),
        # Either day rule: a day-of-month covering every day makes every day match.
        ("0 9 1-31 * mon", "0 9 * * *"),
        # Days no chosen month has are dropped; months with none of the days too.
        ("0 9 30 2 mon", "0 9 * 2 mon"),
        ("0 9 30,31 2,4 *", "0 9 30 4 *"),
    ],
)
def test_equal_firing_sets_give_one_id(left: str, right: str) -> None:
    assert schedule_id_for(scheduled(cron=left)) == schedule_id_for(scheduled(cron=right))


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ("0 9 * * mon", "0 9 1-31 * mon"),  # restricted day-of-month: either day matches
        ("0 9 1 * mon", "0 9 1 * *"),
        ("0 9 1 * mon", "0 9 * * mon"),
        ("0 9 * * 0", "0 9 * * 6"),
    ],
)
def test_different_firing_sets_differ(left: str, right: str) -> None:
    assert schedule_id_for(scheduled(cron=left)) != schedule_id_for(scheduled(cron=right))


MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
WEEKDAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
FIELDS = [(0, 59), (0, 23), (1, 28), (1, 12), (0, 6)]
"""Value ranges generated per field; days stop at 28 so every month has each one."""
DAY, WEEKDAY = 2, 4

CronSets = tuple[frozenset[int] | None, ...]
"""Per field, the chosen values, or None for an unrestricted field."""


@st.composite
def cron_sets(draw: st.DrawFn) -> CronSets:
    fields: list[frozenset[int] | None] = []
    for low, high in FIELDS:
        full = range(low, high + 1)
        chosen = draw(st.none() | st.frozensets(st.sampled_from(full), min_size=1, max_size=5))
        fields.append(None if chosen is None or len(chosen) == len(full) else chosen)
    return tuple(fields)


def _spell_value(draw: st.DrawFn, index: int, value: int) -> str:
    options = [str(value)]
    if index == 3:
        options.append(draw(st.sampled_from([MONTHS[value - 1], MONTHS[value - 1].upper()])))
    if index == WEEKDAY:
        options.append(WEEKDAYS[value])
        if value == 0:
            options.append("7")
    return draw(st.sampled_from(options))


@st.composite
def spelled(draw: st.DrawFn, sets: CronSets) -> str:
    """One of the many spellings of ``sets``: names or numbers, 0 or 7, ranges or lists."""
    words = []
    for index, chosen in enumerate(sets):
        if chosen is None:
            options = ["*"]
            other_day = {DAY: WEEKDAY, WEEKDAY: DAY}.get(index)
            if other_day is None or sets[other_day] is None:
                # Next to a restricted day field these count as restricted (either rule).
                options.append("*/1")
                if index == WEEKDAY:
                    options += ["0-6", "sun-sat", "0-7"]
            words.append(draw(st.sampled_from(options)))
            continue
        ordered = sorted(chosen)
        runs: list[list[int]] = []
        for value in ordered:
            if runs and value == runs[-1][-1] + 1:
                runs[-1].append(value)
            else:
                runs.append([value])
        parts = []
        for run in runs:
            if len(run) > 1 and draw(st.booleans()):
                first, last = _spell_value(draw, index, run[0]), _spell_value(draw, index, run[-1])
                parts.append(f"{first}-{last}" if last != "7" else f"{first}-{run[-1]}")
            else:
                parts.extend(_spell_value(draw, index, value) for value in run)
        words.append(",".join(draw(st.permutations(parts))))
    return " ".join(words)


@settings(deadline=None)  # croniter's first expansion of a spelling is the slow part
@given(data=st.data(), sets=cron_sets())
def test_spellings_of_one_firing_set_give_one_id(data: st.DataObject, sets: CronSets) -> None:
    one, two = data.draw(spelled(sets)), data.draw(spelled(sets))
    assert schedule_id_for(scheduled(cron=one)) == schedule_id_for(scheduled(cron=two))


@settings(deadline=None)
@given(data=st.data(), a=cron_sets(), b=cron_sets())
def test_different_firing_sets_give_different_ids(
    data: st.DataObject, a: CronSets, b: CronSets
) -> None:
    # Generated sets are all distinct firing sets: days 1-28 exist in every month,
    # full fields are unrestricted, and weekdays recur on every day of the month.
    left, right = data.draw(spelled(a)), data.draw(spelled(b))
    assert (schedule_id_for(scheduled(cron=left)) == schedule_id_for(scheduled(cron=right))) == (
        a == b
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def test_the_id_hashes_the_documented_content_exactly() -> None:
    """Ids are stored in Redis: one that changes between releases re-fires every
    schedule. The hashed text is written out here by hand; changing it needs a new
    ``ID_VERSION``."""
    task = scheduled(
        task_name="app:job",
        cron="*/5 * * * *",
        args=[1, "é", float("inf"), {9, 10}],
        kwargs={"b": {"y": 1, "x": 2}, "a": None},
    )
    text = (
        '{"args":[1,"é",null,[10,9]],"kwargs":{"a":null,"b":{"x":2,"y":1}},'
        '"task":"app:job","trigger":"cron:0-55/5 * * * *@UTC","v":2}'
    )
    assert schedule_id_for(task) == _digest(text)


def test_an_adapters_content_digest_is_its_canonical_json_hashed() -> None:
    content = {"when": "é", "tags": {"b", "a"}, "job": "x", "mixed": {1, "1"}, "n": float("nan")}
    text = '{"job":"x","mixed":["1",1],"n":null,"tags":["a","b"],"v":2,"when":"é"}'
    assert content_digest(content) == _digest(text)
    assert content_digest(dict(reversed(content.items()))) == _digest(text)


def test_a_pin_is_hashed_exactly_when_it_could_be_mistaken() -> None:
    """A pin holding ``@`` or starting with ``#`` is replaced by ``#`` and its digest,
    so no pin spells another (pin, task) pair's id."""
    assert pinned_id("app:job", "nightly") == "nightly@app:job"
    assert pinned_id("c", "a@b") == f"#{_digest('a@b')}@c"
    assert pinned_id("c", "#x") == f"#{_digest('#x')}@c"
    assert pinned_id("b@c", "a") != pinned_id("c", "a@b")
    assert pinned_id("c", f"#{_digest('a@b')}") != pinned_id("c", "a@b")
    lone = "\ud800@"  # a lone surrogate: still a pin, hashed as its UTF-8 spelling
    assert (
        pinned_id("c", lone)
        == "#" + hashlib.sha256(lone.encode("utf-8", "surrogatepass")).hexdigest()[:32] + "@c"
    )
