"""What fires when: a schedule's trigger, parsed once, and the slot of a firing.

A *slot* names one firing of a schedule in whole epoch seconds, the same on every
scheduler host:

* cron: the cron time being fired (its offset or timezone honoured), found as the
  latest cron time at or before ``now + MAX_CLOCK_SKEW``;
* interval: the start of the epoch-aligned bucket ``floor(t / interval) * interval``,
  so replicas started at different moments agree;
* one-off: the one-off's own time.

Each trigger also says until when a claim on a slot must live: until the slot can
no longer be fired again by any scheduler, plus ``CLAIM_GRACE``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from taskiq_dedup.errors import InvalidScheduleError

if TYPE_CHECKING:
    from taskiq import ScheduledTask

MAX_CLOCK_SKEW = timedelta(seconds=5)
"""How far scheduler hosts' clocks may disagree. A host up to this far ahead or
behind still names the cron slot it fires correctly (NTP keeps hosts far closer)."""

CLAIM_GRACE = timedelta(seconds=10)
"""How long a claim outlives the last moment its slot can be fired again: covers
``MAX_CLOCK_SKEW`` plus a send held up by a slow broker or Redis."""

CRON_REFIRE_WINDOW = timedelta(minutes=1)
"""taskiq's loop matches cron per minute, so a scheduler (re)started within the
slot's minute fires it again (taskiq issue #244): the claim must cover it."""

_UTC_NAMES = {"utc", "etc/utc", "z", "gmt"}


def as_utc(moment: datetime) -> datetime:
    """Return ``moment`` in UTC, reading a naive datetime as UTC (as taskiq does)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def epoch_seconds(moment: datetime) -> int:
    """Whole epoch seconds of ``moment`` (floored)."""
    return math.floor(as_utc(moment).timestamp())


@dataclass(frozen=True)
class CronTrigger:
    """A five-field cron expression, in UTC, a timezone, or shifted by an offset."""

    expression: str
    zone: tzinfo | None = None
    offset: timedelta | None = None

    def canonical(self) -> str:
        """Text that is equal for equal triggers (whitespace and case folded)."""
        where = "UTC"
        if self.zone is not None:
            where = f"tz={self.zone}"
        elif self.offset:
            where = f"offset={int(self.offset.total_seconds())}"
        return f"cron:{self.expression}@{where}"

    def _local(self, moment: datetime) -> datetime:
        moment = as_utc(moment)
        if self.zone is not None:
            return moment.astimezone(self.zone)
        if self.offset:
            return moment + self.offset
        return moment

    def _to_utc(self, local: datetime) -> datetime:
        if self.zone is None and self.offset:
            local -= self.offset
        return as_utc(local)

    def slot(self, now: datetime) -> int:
        """Epoch seconds of the cron time being fired at ``now``."""
        # Cron times fall on whole minutes, so the answer only changes per minute.
        return _cron_slot(self, epoch_seconds(now + MAX_CLOCK_SKEW) // 60)

    def _slot_of_minute(self, minute: int) -> int:
        end = datetime.fromtimestamp(minute * 60 + 60, tz=timezone.utc)
        fired: datetime = croniter(self.expression, self._local(end)).get_prev(datetime)
        return epoch_seconds(self._to_utc(fired))

    def next_fire(self, now: datetime) -> datetime:
        """Return the next cron time after ``now``, in UTC."""
        nxt: datetime = croniter(self.expression, self._local(now)).get_next(datetime)
        return self._to_utc(nxt)

    def claim_expiry(self, slot: int) -> int:
        """Epoch seconds at which a claim on ``slot`` may expire."""
        return slot + int((CRON_REFIRE_WINDOW + CLAIM_GRACE).total_seconds())


@functools.lru_cache(maxsize=16384)
def _cron_slot(trigger: CronTrigger, minute: int) -> int:
    """``trigger``'s latest cron time within or before ``minute`` (epoch minutes)."""
    return trigger._slot_of_minute(minute)  # the cached half of slot()


@dataclass(frozen=True)
class IntervalTrigger:
    """Every ``seconds`` seconds, in buckets aligned to the epoch."""

    seconds: int

    def canonical(self) -> str:
        """Text that is equal for equal triggers."""
        return f"interval:{self.seconds}"

    def slot(self, now: datetime) -> int:
        """Epoch seconds at which the bucket holding ``now`` starts."""
        return epoch_seconds(now) // self.seconds * self.seconds

    def next_fire(self, now: datetime) -> datetime:
        """Start of the bucket after the one holding ``now``."""
        start = self.slot(now) + self.seconds
        return datetime.fromtimestamp(start, tz=timezone.utc)

    def claim_expiry(self, slot: int) -> int:
        """Return when a claim may expire: the bucket end plus ``CLAIM_GRACE``."""
        return slot + self.seconds + int(CLAIM_GRACE.total_seconds())


@dataclass(frozen=True)
class OneOffTrigger:
    """Once, at ``at`` (UTC)."""

    at: datetime

    def canonical(self) -> str:
        """Text that is equal for equal triggers: the UTC time, microseconds kept."""
        return f"time:{self.at.isoformat()}"

    def slot(self, now: datetime) -> int:
        """Epoch seconds of the one-off time."""
        return epoch_seconds(self.at)

    def next_fire(self, now: datetime) -> datetime | None:
        """Return the one-off time if it is still ahead, else ``None``."""
        return self.at if self.at > as_utc(now) else None

    def claim_expiry(self, slot: int, grace: timedelta) -> int:
        """Return when a claim may expire: ``grace`` after the time, plus ``CLAIM_GRACE``."""
        return slot + int((grace + CLAIM_GRACE).total_seconds())


Trigger = CronTrigger | IntervalTrigger | OneOffTrigger


def describe(task: ScheduledTask) -> str:
    """Short text naming a schedule in errors and logs."""
    what = next((v for v in (task.cron, task.interval, task.time) if v is not None), None)
    return f"schedule {task.schedule_id} of task {task.task_name!r} ({what!r})"


def _zone_or_offset(
    task: ScheduledTask,
) -> tuple[tzinfo | None, timedelta | None]:
    offset = task.cron_offset
    if offset is None or isinstance(offset, timedelta):
        return None, offset or None
    if offset.strip().lower() in _UTC_NAMES:
        return None, None
    try:
        return ZoneInfo(offset), None
    except (ZoneInfoNotFoundError, ValueError, ModuleNotFoundError) as exc:
        raise InvalidScheduleError(
            detail=f"{describe(task)}: unknown timezone {offset!r} in cron_offset",
        ) from exc


@functools.lru_cache(maxsize=4096)
def _valid_cron(expression: str) -> bool:
    """Validate once per distinct expression: croniter's check is the costly part of a merge."""
    if len(expression.split()) != 5 or not croniter.is_valid(expression):  # noqa: PLR2004
        return False
    try:  # a valid expression may still never fire ("0 0 30 2 *")
        croniter(expression, datetime(2000, 1, 1, tzinfo=timezone.utc)).get_next(datetime)
    except CroniterBadDateError:
        return False
    return True


def parse_trigger(task: ScheduledTask) -> Trigger:
    """Parse the one trigger of ``task``, or raise ``InvalidScheduleError`` naming it."""
    present = [name for name in ("cron", "interval", "time") if getattr(task, name) is not None]
    if len(present) != 1:
        raise InvalidScheduleError(
            detail=f"{describe(task)}: needs exactly one of cron, interval, time; "
            f"has {present or 'none'}",
        )
    if task.cron is not None:
        expression = " ".join(task.cron.split()).lower()
        if not _valid_cron(expression):
            raise InvalidScheduleError(
                detail=f"{describe(task)}: invalid cron {task.cron!r} "
                "(five fields: minute hour day month weekday, matching some date)",
            )
        zone, offset = _zone_or_offset(task)
        return CronTrigger(expression, zone, offset)
    if task.interval is not None:
        interval = task.interval
        seconds = interval.total_seconds() if isinstance(interval, timedelta) else interval
        if seconds != int(seconds) or seconds < 1:
            raise InvalidScheduleError(
                detail=f"{describe(task)}: interval must be a whole number of seconds "
                f">= 1, got {task.interval!r}",
            )
        return IntervalTrigger(int(seconds))
    assert task.time is not None  # noqa: S101 -- one trigger is present
    return OneOffTrigger(as_utc(task.time))
