"""Counting what the demo run did, per schedule and slot (``table`` prints it).

Pure functions of what the run left behind: the schedules the API listed, the
execution list the tasks wrote, and the INFO lines the processes logged.

Slots due. A slot is *due* if its time falls in the measured window: at or after
the end of warm-up, and early enough that its last possible firing plus a
settle margin lies before the end of the run. A cron slot is fired at the
first loop tick of its minute (the schedulers run with ``--skip-first-run``);
an interval slot (a bucket ``[s, s + every)``) may be fired by a scheduler at
any moment of its bucket, so it needs ``every`` more seconds.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal

from croniter import croniter

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from examples.fastapi_app.executions import Execution

Firing = tuple[str, int]
"""(schedule id, slot in epoch seconds)."""

CANCELLED_LINE = re.compile(r"Firing (?P<slot>\d+) of schedule (?P<schedule>\S+) was sent by ")
"""taskiq_dedup.firing logs it (INFO) for each firing a scheduler did not send."""
DROPPED_LINE = re.compile(r"Duplicate task \S+ \(.*?\) not executed: (?P<key>\S+) is ")
"""taskiq_dedup.middleware logs it (INFO) for each delivery a worker did not run;
the key is ``<prefix>:run:<schedule id>:<slot>``."""
CLAIM_ERROR_LINE = re.compile(r"Cannot claim a firing of schedule (?P<schedule>\S+) ")
"""taskiq_dedup.source logs it (ERROR) when Redis failed a claim: a fault."""


def firing_of_key(key: str, kind: str) -> Firing | None:
    """Parse ``<prefix>:<kind>:<schedule id>:<slot>`` (a ``KeySpace`` key)."""
    head, _, rest = key.rpartition(f":{kind}:")
    schedule_id, _, slot = rest.rpartition(":")
    if not head or not schedule_id or not slot.isdigit():
        return None
    return schedule_id, int(slot)


def count_lines(texts: Iterable[str], pattern: re.Pattern[str], kind: str) -> Counter[Firing]:
    """Count the firings named by ``pattern``'s lines across log ``texts``.

    A line names its firing by a ``key`` of ``kind`` or by ``schedule`` and ``slot``.
    """
    found: Counter[Firing] = Counter()
    for text in texts:
        for match in pattern.finditer(text):
            named = match.groupdict()
            firing = (
                (named["schedule"], int(named["slot"]))
                if "slot" in named
                else firing_of_key(match["key"], kind)
            )
            if firing is not None:
                found[firing] += 1
    return found


@dataclass(frozen=True)
class Schedule:
    """One row of the table: a schedule as ``GET /schedules`` listed it."""

    schedule_id: str
    task: str
    kind: Literal["cron", "interval"]
    cron: str | None = None
    every: int | None = None
    origins: tuple[str, ...] = ()

    @classmethod
    def from_api(cls, item: dict[str, Any]) -> Schedule:
        """Read one entry of ``GET /schedules`` (UTC crons and intervals only)."""
        trigger = item["trigger"]
        origins = tuple(origin["source"] for origin in item["origins"])
        if trigger["kind"] == "interval":
            every = trigger["every_seconds"]
            return cls(item["id"], item["task"], "interval", every=every, origins=origins)
        if trigger["kind"] == "cron" and trigger["timezone"] == "UTC":
            return cls(item["id"], item["task"], "cron", cron=trigger["cron"], origins=origins)
        raise ValueError(f"the demo counts UTC crons and intervals only, not {trigger}")

    @property
    def trigger(self) -> str:
        """Short text of the trigger."""
        return f"every {self.every} s" if self.kind == "interval" else f"cron {self.cron}"

    def slot_at(self, moment: float) -> int:
        """Return the slot a firing at ``moment`` belongs to (for a message without one)."""
        if self.every is not None:
            return math.floor(moment) // self.every * self.every
        start = datetime.fromtimestamp(math.floor(moment) + 1, tz=timezone.utc)
        return int(self._croniter(start).get_prev(float))

    def due_slots(self, start: float, end: float, settle: float) -> list[int]:
        """Slots at or after ``start`` whose last firing + ``settle`` is before ``end``."""
        lateness = self.every or 0
        slots = []
        slot = self.slot_at(start)
        if slot < start:
            slot = self._next(slot)
        while slot + lateness + settle <= end:
            slots.append(slot)
            slot = self._next(slot)
        return slots

    def _next(self, slot: int) -> int:
        if self.every is not None:
            return slot + self.every
        return int(self._croniter(datetime.fromtimestamp(slot, tz=timezone.utc)).get_next(float))

    def _croniter(self, start: datetime) -> croniter:
        if self.cron is None:
            raise ValueError(f"schedule {self.schedule_id} has no cron")
        return croniter(self.cron, start)


@dataclass
class Row:
    """What happened to one schedule."""

    schedule: Schedule
    due: list[int]
    runs: Counter[int] = field(default_factory=Counter)
    """Executions per slot, every slot seen (in the window or not)."""
    cancelled: int = 0
    dropped: int = 0

    @property
    def executions_due(self) -> int:
        """Executions of the slots due."""
        return sum(self.runs[slot] for slot in self.due)

    @property
    def missed(self) -> list[int]:
        """Slots due that never ran."""
        return [slot for slot in self.due if self.runs[slot] == 0]

    @property
    def duplicates(self) -> int:
        """Executions beyond the first of any slot, in the window or not."""
        return sum(count - 1 for count in self.runs.values() if count > 1)

    @property
    def per_slot(self) -> str:
        """Executions per slot due: mean (min-max)."""
        counts = [self.runs[slot] for slot in self.due]
        if not counts:
            return "-"
        mean = sum(counts) / len(counts)
        return f"{mean:.1f} ({min(counts)}-{max(counts)})"


@dataclass
class Report:
    """Every row, plus what fits no row."""

    rows: list[Row]
    window: tuple[float, float]
    settle: float
    as_shipped: bool
    unmatched: int = 0
    claim_errors: int = 0

    @property
    def slots_due(self) -> int:
        """Slots due across every schedule."""
        return sum(len(row.due) for row in self.rows)

    @property
    def exactly_once(self) -> bool:
        """Every slot due ran once, no slot ran twice, and some slot was due."""
        return self.slots_due > 0 and all(not r.missed and not r.duplicates for r in self.rows)

    def as_dict(self) -> dict[str, Any]:
        """Return the figures, for ``--json``."""
        return {
            "mode": "as-shipped" if self.as_shipped else "taskiq-dedup",
            "window": list(self.window),
            "settle": self.settle,
            "exactly_once": self.exactly_once,
            "unmatched_executions": self.unmatched,
            "claim_errors": self.claim_errors,
            "schedules": [
                {
                    "id": row.schedule.schedule_id,
                    "task": row.schedule.task,
                    "trigger": row.schedule.trigger,
                    "origins": list(row.schedule.origins),
                    "slots_due": len(row.due),
                    "executions": row.executions_due,
                    "executions_per_slot": {str(s): row.runs[s] for s in row.due},
                    "missed": row.missed,
                    "duplicates": row.duplicates,
                    "cancelled_at_schedulers": row.cancelled,
                    "dropped_at_worker": row.dropped,
                }
                for row in self.rows
            ],
        }


def build_report(
    schedules: Sequence[Schedule],
    executions: Iterable[Execution],
    *,
    window: tuple[float, float],
    settle: float,
    as_shipped: bool,
    cancelled: Counter[Firing] | None = None,
    dropped: Counter[Firing] | None = None,
    claim_errors: int = 0,
) -> Report:
    """Count executions per schedule and slot, and the duplicates stopped on the way.

    An execution belongs to the schedule named by its ``schedule_id`` label,
    else (taskiq as shipped gives each copy its own id) to the only schedule of
    its task. Its slot is its ``dedup_slot`` label, else the slot its run time
    falls in.
    """
    start, end = window
    rows = {s.schedule_id: Row(s, s.due_slots(start, end, settle)) for s in schedules}
    by_task = Counter(s.task for s in schedules)
    only_of_task = {s.task: rows[s.schedule_id] for s in schedules if by_task[s.task] == 1}
    unmatched = 0
    for execution in executions:
        row = rows.get(execution.schedule_id or "") or only_of_task.get(execution.task)
        if row is None:
            unmatched += 1
            continue
        slot = execution.slot
        row.runs[row.schedule.slot_at(execution.at) if slot is None else slot] += 1
    for (schedule_id, _slot), count in (cancelled or Counter()).items():
        if schedule_id in rows:
            rows[schedule_id].cancelled += count
    for (schedule_id, _slot), count in (dropped or Counter()).items():
        if schedule_id in rows:
            rows[schedule_id].dropped += count
    return Report(
        rows=list(rows.values()),
        window=window,
        settle=settle,
        as_shipped=as_shipped,
        unmatched=unmatched,
        claim_errors=claim_errors,
    )
