"""Deterministic schedule ids: what a schedule *is*, not where it was declared.

A schedule is its task, its trigger in canonical form and its arguments exactly
as the worker receives them. ``schedule_id_for`` hashes:

* the task name;
* the trigger: a cron in its canonical spelling (:mod:`taskiq_dedup.crons`: equal
  firing sets are one trigger) with its timezone or offset, an interval in
  seconds, a one-off time in UTC (taskiq reads a naive time as UTC);
* the arguments in the JSON form taskiq's kicker and formatter send them in
  (``TaskiqMessage.model_dump(mode="json")``, what the JSON serializer sends): a
  ``datetime`` and the string it serialises to are one value, two different
  strings are two values. Dict keys are sorted and sets are sorted, since neither
  order reaches the task as meaning.

Labels and the ids child sources assign are not part of it, so the copy declared
in a decorator and the copies registered into Redis at every start-up are one
schedule.

To choose an id yourself, set the ``dedup_id`` label on the schedule (in the
decorator's ``schedule`` entry ``"labels": {"dedup_id": "nightly"}``, or
``task.kicker().with_labels(dedup_id="nightly")``). A pin is scoped to its task:
the id is ``nightly@<task name>``, so the same pin on two tasks is two schedules.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticSerializationError, to_jsonable_python
from taskiq.message import TaskiqMessage

from taskiq_dedup.errors import InvalidScheduleError
from taskiq_dedup.labels import PINNED_ID_LABEL
from taskiq_dedup.triggers import Trigger, describe, parse_trigger

if TYPE_CHECKING:
    from taskiq import ScheduledTask

ID_VERSION = 2
"""Bumped whenever the hashed content changes, so old and new ids cannot collide.
2: arguments exactly as sent (no datetime-like string folding), canonical crons."""

ID_LENGTH = 32
"""Hex digits kept from the SHA-256 digest: 128 bits."""

PIN_SEPARATOR = "@"
"""Joins a ``dedup_id`` pin to its task name: ``<pin>@<task name>``."""


def _sort_sets(value: Any) -> Any:  # noqa: ANN401 -- arbitrary task arguments
    """Replace sets by sorted lists (their JSON order is Python's hash order)."""
    if isinstance(value, dict):
        return {key: _sort_sets(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_sort_sets(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_sort_sets(item) for item in value), key=_canonical_json)
    return value


def _canonical_json(value: Any) -> str:  # noqa: ANN401 -- arbitrary task arguments
    return json.dumps(
        to_jsonable_python(value, inf_nan_mode="null"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _as_sent(task: ScheduledTask) -> tuple[Any, Any]:
    """Return the args and kwargs in the JSON form taskiq's formatter sends them in."""
    message = TaskiqMessage(
        task_id="",
        task_name=task.task_name,
        labels={},
        args=_sort_sets(list(task.args)),
        kwargs=_sort_sets(dict(task.kwargs)),
    )
    sent = message.model_dump(mode="json", include={"args", "kwargs"})
    return sent["args"], sent["kwargs"]


def content_digest(content: dict[str, Any]) -> str:
    """Return the id of ``content``: its canonical JSON (keys and sets sorted), hashed.

    For adapters of other schedulers (``taskiq_dedup.apscheduler``), which
    describe a job by their own fields.

    :raises PydanticSerializationError, TypeError, ValueError: a value has no JSON form.
    """
    text = _canonical_json({"v": ID_VERSION, **_sort_sets(content)})
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


def pinned_id(task_name: str, pin: str) -> str:
    """Return the id of a schedule pinned with ``dedup_id=pin`` on ``task_name``.

    ``<pin>@<task name>`` when the pin holds no ``@`` and does not start with
    ``#``; otherwise the pin is replaced by ``#`` and its digest, so distinct
    (pin, task) pairs never share an id.
    """
    if PIN_SEPARATOR in pin or pin.startswith("#"):
        pin = "#" + hashlib.sha256(pin.encode("utf-8", "surrogatepass")).hexdigest()[:ID_LENGTH]
    return f"{pin}{PIN_SEPARATOR}{task_name}"


def schedule_id_for(task: ScheduledTask, trigger: Trigger | None = None) -> str:
    """Return the deterministic id of ``task`` (scoped to its pinned ``dedup_id``, if set).

    ``trigger`` saves parsing it again when the caller already has.

    :raises InvalidScheduleError: the trigger is invalid or an argument has no
        JSON form; the message names the task and the culprit.
    """
    pin = task.labels.get(PINNED_ID_LABEL)
    if pin is not None:
        if not isinstance(pin, str) or not pin.strip():
            raise InvalidScheduleError(
                detail=f"{describe(task)}: label {PINNED_ID_LABEL!r} must be a "
                f"non-empty string, got {pin!r}",
            )
        return pinned_id(task.task_name, pin)
    trigger = trigger or parse_trigger(task)
    try:
        args, kwargs = _as_sent(task)
        content = _canonical_json(
            {
                "v": ID_VERSION,
                "task": task.task_name,
                "trigger": trigger.canonical(),
                "args": args,
                "kwargs": kwargs,
            },
        )
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise InvalidScheduleError(
            detail=f"{describe(task)}: arguments have no JSON form ({exc}); pass "
            f"JSON-compatible arguments or pin an id with the {PINNED_ID_LABEL!r} label",
        ) from exc
    return hashlib.sha256(content.encode()).hexdigest()[:ID_LENGTH]
