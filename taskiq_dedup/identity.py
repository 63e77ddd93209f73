"""Deterministic schedule ids: what a schedule *is*, not where it was declared.

``schedule_id_for`` hashes the task name, the normalised trigger (cron with its
timezone or offset, interval in seconds, one-off time in UTC) and the arguments in
their JSON form - the form they travel to the worker in - with dict keys sorted,
tuples as lists, sets sorted, and datetimes (also ISO-8601 strings, as a datetime
argument reads after a JSON round trip) in UTC, naive ones read as UTC. Labels and the ids
child sources assign are not part of it, so the copy declared in a decorator and
the copies registered into Redis at every start-up are one schedule.

To choose an id yourself, set the ``dedup_id`` label on the schedule (in the
decorator's ``schedule`` entry ``"labels": {"dedup_id": "nightly-report"}``, or
``task.kicker().with_labels(dedup_id="nightly-report")``).
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic_core import PydanticSerializationError, to_jsonable_python

from taskiq_dedup.errors import InvalidScheduleError
from taskiq_dedup.labels import PINNED_ID_LABEL
from taskiq_dedup.triggers import Trigger, as_utc, describe, parse_trigger

if TYPE_CHECKING:
    from taskiq import ScheduledTask

ID_VERSION = 1
"""Bumped if the hashed content ever changes, so old and new ids cannot collide."""

ID_LENGTH = 32
"""Hex digits kept from the SHA-256 digest: 128 bits."""


_ISO_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?")


def _normalise(value: Any) -> Any:  # noqa: ANN401 -- arbitrary task arguments
    if isinstance(value, datetime):
        return as_utc(value)
    if isinstance(value, str) and _ISO_DATETIME.fullmatch(value):
        # A datetime argument after a JSON round trip (a Redis copy): same rule.
        return as_utc(datetime.fromisoformat(value.replace("Z", "+00:00")))
    if isinstance(value, dict):
        return {key: _normalise(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(item) for item in value]
    if isinstance(value, (set, frozenset)):
        items = [_canonical_json(_normalise(item)) for item in value]
        return [json.loads(item) for item in sorted(items)]
    return value


def _canonical_json(value: Any) -> str:  # noqa: ANN401 -- arbitrary task arguments
    return json.dumps(
        to_jsonable_python(value),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def schedule_id_for(task: ScheduledTask, trigger: Trigger | None = None) -> str:
    """Return the deterministic id of ``task`` (or its pinned ``dedup_id`` label).

    ``trigger`` saves parsing it again when the caller already has.

    :raises InvalidScheduleError: the trigger is invalid or an argument has no
        JSON form; the message names the task and the culprit.
    """
    pinned = task.labels.get(PINNED_ID_LABEL)
    if pinned is not None:
        if not isinstance(pinned, str) or not pinned.strip():
            raise InvalidScheduleError(
                detail=f"{describe(task)}: label {PINNED_ID_LABEL!r} must be a "
                f"non-empty string, got {pinned!r}",
            )
        return pinned
    trigger = trigger or parse_trigger(task)
    try:
        content = _canonical_json(
            {
                "v": ID_VERSION,
                "task": task.task_name,
                "trigger": trigger.canonical(),
                "args": _normalise(list(task.args)),
                "kwargs": _normalise(dict(task.kwargs)),
            },
        )
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise InvalidScheduleError(
            detail=f"{describe(task)}: arguments have no JSON form ({exc}); pass "
            f"JSON-compatible arguments or pin an id with the {PINNED_ID_LABEL!r} label",
        ) from exc
    return hashlib.sha256(content.encode()).hexdigest()[:ID_LENGTH]
