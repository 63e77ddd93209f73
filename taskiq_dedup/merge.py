"""Merging the children's copies of a schedule into one, under one public id.

Copies are merged by content (:func:`taskiq_dedup.schedule_id_for`, the *content
id*, which names claims). The *public id* - the id ``get_schedules`` shows, the
scheduler puts on the message and ``delete_schedule`` takes - is the id a user
set on a copy, else the content id.

* A child's id is **user-set** unless it was generated: it parses as a UUID
  (taskiq, taskiq-redis and ``LabelScheduleSource`` generate ``uuid4().hex``), is
  32 hex digits (this package's content ids), or equals the copy's content id.
* Copies carrying different user ids: the first copy's wins (children in the
  order given, each child's copies in its own order); one WARNING.
* One user id on two different schedules: the first schedule keeps it, the
  other is shown under its content id; one WARNING.
* Copies whose labels differ: the first copy is sent; one WARNING per schedule
  naming the labels, repeated only when the difference changes.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskiq import ScheduledTask, ScheduleSource

from taskiq_dedup.errors import InvalidScheduleError
from taskiq_dedup.identity import schedule_id_for
from taskiq_dedup.labels import PINNED_ID_LABEL, SCHEDULE_ID_LABEL, SLOT_LABEL
from taskiq_dedup.triggers import CronTrigger, OneOffTrigger, Trigger, describe, parse_trigger

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from datetime import datetime, timedelta

logger = logging.getLogger("taskiq_dedup.source")
"""The composite source's logger: merge reports belong to the source users configure."""

_HEX_ID = re.compile(r"[0-9a-f]{32}")

IGNORED_LABELS = frozenset({"schedule", SCHEDULE_ID_LABEL, SLOT_LABEL, PINNED_ID_LABEL})
"""Labels not compared between copies: taskiq's decorator list (only kicker copies
carry it), and the labels this package and taskiq's scheduler set on the message."""


def can_delete(source: ScheduleSource) -> bool:
    """Return whether ``source`` implements ``delete_schedule`` (a decorator source does not)."""
    return type(source).delete_schedule is not ScheduleSource.delete_schedule


def user_set_id(child_id: str, content_id: str) -> str | None:
    """Return ``child_id`` if a user chose it, ``None`` if it was generated."""
    if child_id == content_id or _HEX_ID.fullmatch(child_id.lower()):
        return None
    try:
        uuid.UUID(child_id)
    except ValueError:
        return child_id
    return None


@dataclass(frozen=True)
class Origin:
    """One copy of a schedule: the child source holding it and the child's own task."""

    source: ScheduleSource
    task: ScheduledTask


@dataclass
class MergedSchedule:
    """One schedule with every copy it was merged from.

    ``schedule_id`` is the content id (claim keys use it); ``public_id`` is the
    id shown and accepted (a user-set id, else the content id); ``task`` is the
    copy sent, under ``public_id``, its cron in canonical spelling.
    """

    schedule_id: str
    public_id: str
    task: ScheduledTask
    trigger: Trigger
    origins: list[Origin] = field(default_factory=list)

    @property
    def in_code(self) -> bool:
        """True if a copy lives in a source that cannot delete (a decorator label)."""
        return any(not can_delete(origin.source) for origin in self.origins)

    def answers_to(self, schedule_id: str) -> bool:
        """Return whether ``schedule_id`` is this schedule's public, content or a copy's id."""
        return schedule_id in (self.public_id, self.schedule_id) or any(
            origin.task.schedule_id == schedule_id for origin in self.origins
        )


@dataclass
class _Identified:
    """A child's schedule with its parsed trigger and ids, kept from fetch to fetch."""

    task: ScheduledTask
    trigger: Trigger
    id: str
    user_id: str | None
    sent: ScheduledTask | None = None
    """The copy sent under the public id, when this copy is the one sent."""


@dataclass
class MergeResult:
    """One fetch's merged schedules by public id, and what was skipped."""

    schedules: dict[str, MergedSchedule]
    invalid: int = 0
    stale: int = 0


def _label_text(value: object) -> str:
    """Return a label as text, the form taskiq's kicker sends it in (``prepare_label``)."""
    return str(value)


class Merger:
    """Identifies and merges the children's schedules; reports each problem once."""

    def __init__(self, one_off_grace: timedelta) -> None:
        self.one_off_grace = one_off_grace
        self._known: dict[tuple[int, str], _Identified] = {}
        self._reported: set[str] = set()

    def merge(
        self,
        fetched: Sequence[tuple[ScheduleSource, Iterable[ScheduledTask]]],
        now: datetime,
    ) -> MergeResult:
        """Merge every child's schedules (children in order) as of ``now``."""
        result = MergeResult({})
        by_content: dict[str, MergedSchedule] = {}
        first_copy: dict[str, _Identified] = {}
        user_ids: dict[str, list[str]] = {}  # only schedules with a copy carrying one
        reported: set[str] = set()
        known: dict[tuple[int, str], _Identified] = {}
        for index, (source, tasks) in enumerate(fetched):
            for task in tasks:
                identified = self._identify(index, source, task, reported)
                if identified is None:
                    result.invalid += 1
                    continue
                known[index, task.schedule_id] = identified
                trigger = identified.trigger
                if isinstance(trigger, OneOffTrigger) and now - trigger.at > self.one_off_grace:
                    self._report(
                        reported,
                        f"stale {identified.id}",
                        "Skipping %s: its time passed more than one_off_grace=%s ago",
                        describe(task),
                        self.one_off_grace,
                    )
                    result.stale += 1
                    continue
                merged = by_content.get(identified.id)
                if merged is None:
                    merged = by_content[identified.id] = MergedSchedule(
                        identified.id, identified.id, task, trigger
                    )
                    first_copy[identified.id] = identified
                merged.origins.append(Origin(source, task))
                if identified.user_id is not None:
                    user_ids.setdefault(identified.id, []).append(identified.user_id)
        self._known = known
        taken = set(by_content)  # content ids are never given to another schedule
        for content_id, merged in by_content.items():
            if content_id in user_ids:
                merged.public_id = self._public_id(merged, user_ids[content_id], taken, reported)
                taken.add(merged.public_id)
            merged.task = self._sent_copy(merged, first_copy[content_id])
            if len(merged.origins) > 1:
                self._compare_labels(merged, reported)
            result.schedules[merged.public_id] = merged
        self._reported = reported
        return result

    def _identify(
        self,
        index: int,
        source: ScheduleSource,
        task: ScheduledTask,
        reported: set[str],
    ) -> _Identified | None:
        """Parse and name ``task``, reusing the last fetch's work if it is unchanged.

        Redis children return new but equal objects at every fetch: comparing
        with the last fetch's copy is far cheaper than hashing again, and keeps
        one set of objects alive instead of two.
        """
        previous = self._known.get((index, task.schedule_id))
        if previous is not None and (previous.task is task or previous.task == task):
            return previous
        try:
            trigger = parse_trigger(task)
            content_id = schedule_id_for(task, trigger)
            return _Identified(task, trigger, content_id, user_set_id(task.schedule_id, content_id))
        except InvalidScheduleError as exc:
            self._report(reported, str(exc), "Skipping %s", exc)
        except Exception as exc:  # one malformed entry must not hide the rest
            self._report(
                reported,
                f"malformed {index} {task!r}",
                "Skipping a malformed schedule from %s (%s: %s): %r",
                type(source).__name__,
                type(exc).__name__,
                exc,
                task,
            )
        return None

    def _public_id(
        self,
        merged: MergedSchedule,
        candidates: list[str],
        taken: set[str],
        reported: set[str],
    ) -> str:
        user_ids = list(dict.fromkeys(candidates))
        chosen = user_ids[0]
        if len(user_ids) > 1:
            self._report(
                reported,
                f"user ids {merged.schedule_id} {user_ids}",
                "Copies of %s carry different schedule ids %s; %r is used (the first "
                "copy's, children in the order given); every one of them deletes it",
                describe(merged.task),
                user_ids,
                chosen,
            )
        if chosen in taken:
            self._report(
                reported,
                f"id taken {merged.schedule_id} {chosen}",
                "Schedule id %r is already used by another schedule; %s is listed under "
                "its content id %s instead",
                chosen,
                describe(merged.task),
                merged.schedule_id,
            )
            return merged.schedule_id
        return chosen

    @staticmethod
    def _sent_copy(merged: MergedSchedule, first: _Identified) -> ScheduledTask:
        """Return the first copy under the public id, its cron in canonical spelling."""
        sent = first.sent
        if sent is None or sent.schedule_id != merged.public_id:
            update: dict[str, object] = {"schedule_id": merged.public_id}
            if isinstance(merged.trigger, CronTrigger):
                update["cron"] = merged.trigger.expression
            sent = first.sent = first.task.model_copy(update=update)
        return sent

    def _compare_labels(self, merged: MergedSchedule, reported: set[str]) -> None:
        """Warn once per schedule (and per difference) that copies' labels differ."""
        texts = [
            {k: _label_text(v) for k, v in o.task.labels.items() if k not in IGNORED_LABELS}
            for o in merged.origins
        ]
        differing = sorted(
            name for name in set().union(*texts) if len({labels.get(name) for labels in texts}) > 1
        )
        if not differing:
            return
        first = merged.origins[0]
        details = "; ".join(
            f"{name}: "
            + ", ".join(
                f"{type(o.source).__name__} {o.task.schedule_id}="
                + (repr(labels[name]) if name in labels else "(unset)")
                for o, labels in zip(merged.origins, texts, strict=True)
            )
            for name in differing
        )
        self._report(
            reported,
            f"labels {merged.schedule_id} {details}",
            "Copies of %s differ in labels %s (%s); sending the copy %s from %s "
            "(the first child listed)",
            describe(merged.task),
            ", ".join(differing),
            details,
            first.task.schedule_id,
            type(first.source).__name__,
        )

    def _report(self, reported: set[str], key: str, message: str, *args: object) -> None:
        """Log a WARNING once while the same problem persists across fetches."""
        reported.add(key)
        if key not in self._reported:
            logger.warning(message, *args)
