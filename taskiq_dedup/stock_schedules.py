"""Naming the firings of stock schedulers, which run without the composite source.

taskiq's ``LabelScheduleSource`` gives every schedule a random id in every
process, so copies of one decorator schedule sent by N stock schedulers share
no key. ``firing_of`` runs in the sending scheduler (the middleware's
``pre_send``) and matches the message to the task's decorator ``schedule``
entries: if exactly one entry has the message's explicit ``schedule_id``, its
``dedup_id`` label, or else its arguments, the message gets that schedule's deterministic id
(``schedule_id_for``) and the slot of its trigger at ``now``
(``parse_trigger(...).slot``) - the names the composite source would give it.

Several entries with the same arguments are told apart by their trigger only
for crons (the one whose cron time is due now); otherwise the match is
ambiguous. A message whose schedule is not in the decorator (a Redis schedule
source) keeps its id, which is shared by every scheduler reading that store.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from taskiq import ScheduledTask
from taskiq.exceptions import TaskiqError

from taskiq_dedup.identity import schedule_id_for
from taskiq_dedup.labels import PINNED_ID_LABEL, SCHEDULE_ID_LABEL, SLOT_LABEL
from taskiq_dedup.triggers import (
    MAX_CLOCK_SKEW,
    CronTrigger,
    Trigger,
    epoch_seconds,
    parse_trigger,
)

if TYPE_CHECKING:
    from taskiq.abc.broker import AsyncBroker
    from taskiq.message import TaskiqMessage

    from taskiq_dedup.clock import Clock

logger = logging.getLogger(__name__)

DUE_WINDOW = timedelta(minutes=1) + MAX_CLOCK_SKEW
"""How far after its cron time a firing can be sent: taskiq's loop fires a cron
within its minute (and up to ``MAX_CLOCK_SKEW`` early or late on a skewed host)."""


@dataclass(frozen=True)
class Firing:
    """The deterministic name of one firing."""

    schedule_id: str
    slot: int


@dataclass(frozen=True)
class _Entry:
    task: ScheduledTask
    trigger: Trigger
    pinned_id: str | None


def _entries(task_name: str, task_labels: dict[str, Any]) -> list[_Entry]:
    """Return the decorator schedules of the task, as the label source reads them."""
    entries: list[_Entry] = []
    shared = {key: value for key, value in task_labels.items() if key != "schedule"}
    for entry in task_labels.get("schedule") or []:
        if not isinstance(entry, dict) or not {"cron", "interval", "time"} & entry.keys():
            continue
        try:
            task = ScheduledTask(
                task_name=task_name,
                labels={**(entry.get("labels") or {}), **shared},
                args=list(entry.get("args") or []),
                kwargs=dict(entry.get("kwargs") or {}),
                cron=entry.get("cron"),
                cron_offset=entry.get("cron_offset"),
                time=entry.get("time"),
                interval=entry.get("interval"),
            )
            trigger = parse_trigger(task)
        except (TaskiqError, ValueError, TypeError):
            continue  # the composite source names invalid schedules; here they are not matched
        pinned = entry.get("schedule_id")
        entries.append(_Entry(task, trigger, pinned if isinstance(pinned, str) else None))
    return entries


def _due(trigger: Trigger, now: datetime) -> bool:
    if not isinstance(trigger, CronTrigger):
        return True
    late = epoch_seconds(now) - int(trigger.slot(now))
    return 0 <= late <= DUE_WINDOW.total_seconds()


def firing_of(
    message: TaskiqMessage,
    task_labels: dict[str, Any],
    now: datetime,
) -> Firing | str:
    """Name the firing ``message`` is, or say why it cannot be named."""
    schedule_id = str(message.labels.get("schedule_id"))
    entries = _entries(message.task_name, task_labels)
    if not entries:
        return "its task declares no schedule in its decorator"
    candidates = [entry for entry in entries if entry.pinned_id == schedule_id]
    dedup_id = message.labels.get(PINNED_ID_LABEL)
    if not candidates and dedup_id is not None:
        candidates = [e for e in entries if e.task.labels.get(PINNED_ID_LABEL) == dedup_id]
    if not candidates:
        candidates = [
            entry
            for entry in entries
            if entry.pinned_id is None
            and list(entry.task.args) == list(message.args)
            and dict(entry.task.kwargs) == dict(message.kwargs)
        ]
    if len(candidates) > 1:
        candidates = [entry for entry in candidates if _due(entry.trigger, now)]
    if not candidates:
        return "no decorator schedule of its task has its arguments"
    if len(candidates) > 1:
        return "several decorator schedules of its task have its arguments"
    match = candidates[0]
    try:
        identity = schedule_id_for(match.task, match.trigger)
    except TaskiqError as exc:
        return str(exc)
    return Firing(identity, match.trigger.slot(now))


def ambiguous_tasks(tasks: dict[str, dict[str, Any]]) -> list[str]:
    """Return the names of tasks whose decorator schedules cannot all be told apart.

    Entries with the same arguments are told apart only when all are crons
    (by the one due); with an interval or one-off among them they are not.
    """
    names: list[str] = []
    for name, labels in tasks.items():
        groups: dict[str, list[_Entry]] = {}
        for entry in _entries(name, labels):
            if entry.pinned_id is None and PINNED_ID_LABEL not in entry.task.labels:
                groups.setdefault(repr((entry.task.args, entry.task.kwargs)), []).append(entry)
        if any(
            len(group) > 1 and not all(isinstance(e.trigger, CronTrigger) for e in group)
            for group in groups.values()
        ):
            names.append(name)
    return names


class StockNaming:
    """Names stock schedulers' firings for one broker; warns once per task it cannot."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._warned: set[str] = set()

    def warn_ambiguous(self, broker: AsyncBroker) -> None:
        """Log one WARNING per task whose decorator schedules cannot be told apart."""
        tasks = {name: dict(task.labels) for name, task in broker.get_all_tasks().items()}
        for name in ambiguous_tasks(tasks):
            self._warned.add(name)
            logger.warning(
                "Task %s has decorator schedules with the same arguments, not all crons: "
                "a stock scheduler's firing of them cannot be told apart, so it is "
                "deduplicated only by the second it is sent in; give each a dedup_id "
                "label or use CompositeScheduleSource",
                name,
            )

    def name(self, message: TaskiqMessage, broker: AsyncBroker) -> None:
        """Give ``message`` its schedule's id and slot, or the current second as its slot."""
        now = self.clock()
        task = broker.find_task(message.task_name)
        named = firing_of(message, dict(task.labels) if task is not None else {}, now)
        if isinstance(named, Firing):
            message.labels[SCHEDULE_ID_LABEL] = named.schedule_id
            message.labels[SLOT_LABEL] = str(named.slot)
            return
        message.labels[SLOT_LABEL] = str(math.floor(now.timestamp()))
        if message.task_name not in self._warned:
            self._warned.add(message.task_name)
            logger.warning(
                "Schedule %s of task %s cannot be named without CompositeScheduleSource "
                "(%s): its copies from several schedulers collapse only if sent within "
                "the same second, and only if they share the schedule id",
                message.labels[SCHEDULE_ID_LABEL],
                message.task_name,
                named,
            )
