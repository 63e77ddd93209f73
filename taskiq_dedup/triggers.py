"""What fires when: a schedule's trigger, parsed once, and the slot of a firing.

A *slot* names one firing of a schedule in whole epoch seconds, the same on every
scheduler host:

* cron: the cron time being fired (its offset or timezone honoured), found as the
  latest cron time at or before ``now + MAX_CLOCK_SKEW``;
* interval: the start of the epoch-aligned bucket ``floor(t / interval) * interval``,
  so replicas started at different moments agree;
* one-off: the one-off's own time.

A scheduler's tick may come late (taskiq matches a cron anywhere in its minute; a
busy loop slips) or be skipped (the loop holds a schedule while its previous send
is in flight), so a tick offers every slot still due — its *candidates*, the
slots of the last ``LATE_WINDOW`` (plus one period for intervals), current slot
last — and the claim protocol sends the earliest one not yet sent.

Each trigger also says until when a schedule's firing state must live after a
slot was claimed: until the next slot's candidates have all passed, plus
``CLAIM_GRACE``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter

from taskiq_dedup.crons import canonical_cron
from taskiq_dedup.errors import InvalidScheduleError

if TYPE_CHECKING:
    from taskiq import ScheduledTask

MAX_CLOCK_SKEW = timedelta(seconds=5)
"""How far scheduler hosts' clocks may disagree. A host up to this far ahead or
behind still names the cron slot it fires correctly (NTP keeps hosts far closer)."""

CLAIM_GRACE = timedelta(seconds=10)
"""How long a claim outlives the last moment its slot can be fired again: covers
``MAX_CLOCK_SKEW`` plus a send held up by a slow broker or Redis."""

LATE_WINDOW = timedelta(minutes=2)
"""How late a slot may still be sent. taskiq's loop matches a cron anywhere in its
minute (a scheduler started at :40 fires at :40), and a claim may wait out a
Redis retry window and a dead sender's pending lease on top: two minutes covers
all three. A slot older than this that was never sent is logged as missed."""

MAX_CANDIDATES = 256
"""Slots offered by one tick at most (a 1 s interval offers ~180): bounds a claim's size."""

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
    """A five-field cron expression, in UTC, a timezone, or shifted by an offset.

    ``expression`` is the canonical spelling (:func:`taskiq_dedup.crons.canonical_cron`):
    equal firing sets have equal expressions.
    """

    expression: str
    zone: tzinfo | None = None
    offset: timedelta | None = None

    def canonical(self) -> str:
        """Text that is equal for equal triggers (the canonical cron and where it runs)."""
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

    def candidates(self, now: datetime) -> list[int]:
        """Return the cron times of the last ``LATE_WINDOW`` up to the current slot, ascending."""
        return list(_cron_candidates(self, epoch_seconds(now + MAX_CLOCK_SKEW) // 60))

    def _candidates_of_minute(self, minute: int) -> tuple[int, ...]:
        current = self._slot_of_minute(minute)
        earliest = minute * 60 - int(LATE_WINDOW.total_seconds())
        found = [current]
        local = croniter(
            self.expression,
            self._local(datetime.fromtimestamp(current, tz=timezone.utc)),
        )
        while len(found) < MAX_CANDIDATES:
            earlier = epoch_seconds(self._to_utc(local.get_prev(datetime)))
            if earlier < earliest:
                break
            found.append(earlier)
        return tuple(sorted(found))

    def next_fire(self, now: datetime) -> datetime:
        """Return the next cron time after ``now``, in UTC."""
        nxt: datetime = croniter(self.expression, self._local(now)).get_next(datetime)
        return self._to_utc(nxt)

    def slots_between(self, after: int, before: int) -> list[int]:
        """Cron times strictly between two slots (at most ``MAX_CANDIDATES``)."""
        found: list[int] = []
        local = croniter(
            self.expression, self._local(datetime.fromtimestamp(after, tz=timezone.utc))
        )
        while len(found) < MAX_CANDIDATES:
            slot = epoch_seconds(self._to_utc(local.get_next(datetime)))
            if slot >= before:
                break
            found.append(slot)
        return found

    def state_expiry(self, slot: int) -> int:
        """Epoch seconds until which the firing state must outlive a claim on ``slot``."""
        return _cron_state_expiry(self, slot)

    def _state_expiry(self, slot: int) -> int:
        following = epoch_seconds(self.next_fire(datetime.fromtimestamp(slot, tz=timezone.utc)))
        return following + int((LATE_WINDOW + MAX_CLOCK_SKEW + CLAIM_GRACE).total_seconds())


@functools.lru_cache(maxsize=16384)
def _cron_slot(trigger: CronTrigger, minute: int) -> int:
    """``trigger``'s latest cron time within or before ``minute`` (epoch minutes)."""
    return trigger._slot_of_minute(minute)  # the cached half of slot()


@functools.lru_cache(maxsize=16384)
def _cron_state_expiry(trigger: CronTrigger, slot: int) -> int:
    """``trigger``'s state expiry after a claim on ``slot``: one croniter walk per slot."""
    return trigger._state_expiry(slot)


@functools.lru_cache(maxsize=16384)
def _cron_candidates(trigger: CronTrigger, minute: int) -> tuple[int, ...]:
    """``trigger``'s candidates at ``minute`` (epoch minutes), computed once a minute."""
    return trigger._candidates_of_minute(minute)


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

    def candidates(self, now: datetime) -> list[int]:
        """Bucket starts of the last period plus ``LATE_WINDOW``, the current one last.

        A tick that slipped past a bucket boundary finds the bucket it skipped here.
        """
        current = self.slot(now)
        reach = self.seconds + int(LATE_WINDOW.total_seconds())
        count = min(MAX_CANDIDATES, reach // self.seconds + 1)
        return list(range(current - self.seconds * (count - 1), current + 1, self.seconds))

    def next_fire(self, now: datetime) -> datetime:
        """Start of the bucket after the one holding ``now``."""
        start = self.slot(now) + self.seconds
        return datetime.fromtimestamp(start, tz=timezone.utc)

    def slots_between(self, after: int, before: int) -> list[int]:
        """Bucket starts strictly between two slots (at most ``MAX_CANDIDATES``)."""
        first = after // self.seconds * self.seconds + self.seconds
        return list(range(first, before, self.seconds)[:MAX_CANDIDATES])

    def state_expiry(self, slot: int) -> int:
        """Epoch seconds until which the firing state must outlive a claim on ``slot``."""
        following = slot + self.seconds
        reach = self.seconds + int((LATE_WINDOW + CLAIM_GRACE).total_seconds())
        return following + reach


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

    def candidates(self, now: datetime) -> list[int]:
        """Return the one-off's own slot."""
        return [self.slot(now)]

    def slots_between(self, after: int, before: int) -> list[int]:
        """Return nothing: a one-off has no other slots."""
        return []

    def next_fire(self, now: datetime) -> datetime | None:
        """Return the one-off time if it is still ahead, else ``None``."""
        return self.at if self.at > as_utc(now) else None

    def state_expiry(self, slot: int, grace: timedelta) -> int:
        """Return when the state may expire: ``grace`` after the time, plus ``CLAIM_GRACE``.

        A decorator one-off is seen again at every scheduler start within ``grace``.
        """
        return slot + int((grace + CLAIM_GRACE).total_seconds())


Trigger = CronTrigger | IntervalTrigger | OneOffTrigger


class SlotTrigger(Protocol):
    """What the claim protocol needs of a trigger another scheduler drives.

    ``CronTrigger`` and ``IntervalTrigger`` fit it; an adapter for another
    scheduler (``taskiq_dedup.apscheduler``) implements it for that scheduler's
    triggers without this module knowing them.
    """

    def canonical(self) -> str:
        """Text that is equal for equal triggers."""

    def slot(self, now: datetime) -> int:
        """Epoch seconds naming the firing due at ``now``."""

    def candidates(self, now: datetime) -> list[int]:
        """Slots a firing at ``now`` may claim, ascending, the current one last."""

    def slots_between(self, after: int, before: int) -> list[int]:
        """Slots strictly between two slots (reported as missed when skipped)."""

    def state_expiry(self, slot: int) -> int:
        """Epoch seconds until which the firing state must outlive a claim on ``slot``."""


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
        try:
            canonical = canonical_cron(expression)
        except ValueError as exc:  # UnsupportedCronError: L, W, #
            raise InvalidScheduleError(
                detail=f"{describe(task)}: cron {task.cron!r}: {exc}"
            ) from exc
        zone, offset = _zone_or_offset(task)
        return CronTrigger(canonical, zone, offset)
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
