"""Request and response bodies of the schedule API."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from taskiq import ScheduledTask
from taskiq.schedule_sources import LabelScheduleSource

from taskiq_dedup import InvalidScheduleError, schedule_id_for
from taskiq_dedup.ledger import Outcome
from taskiq_dedup.triggers import CronTrigger, IntervalTrigger, Trigger, parse_trigger

if TYPE_CHECKING:
    from taskiq import ScheduleSource

    from examples.fastapi_app.executions import Execution
    from taskiq_dedup import MergedSchedule
    from taskiq_dedup.ledger import LedgerEntry

NEW_SCHEDULE = "(new)"
"""Placeholder id naming a schedule in errors before it has its real id."""


def origin_name(source: ScheduleSource) -> str:
    """``label`` for a decorator's schedule, ``redis`` for taskiq-redis, else the class."""
    if isinstance(source, LabelScheduleSource):
        return "label"
    if type(source).__module__.startswith("taskiq_redis"):
        return "redis"
    return type(source).__name__


def _offset_text(offset: timedelta) -> str:
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, minutes = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}:{minutes:02d}"


class TriggerOut(BaseModel):
    """When a schedule fires."""

    kind: Literal["cron", "interval", "once"]
    cron: str | None = None
    timezone: str | None = Field(default=None, description="cron only: zone, offset or UTC")
    every_seconds: int | None = None
    at: datetime | None = None

    @classmethod
    def of(cls, trigger: Trigger) -> TriggerOut:
        """Describe a parsed trigger."""
        if isinstance(trigger, CronTrigger):
            where = "UTC"
            if trigger.zone is not None:
                where = str(trigger.zone)
            elif trigger.offset:
                where = _offset_text(trigger.offset)
            return cls(kind="cron", cron=trigger.expression, timezone=where)
        if isinstance(trigger, IntervalTrigger):
            return cls(kind="interval", every_seconds=trigger.seconds)
        return cls(kind="once", at=trigger.at)


class OriginOut(BaseModel):
    """One copy of a schedule: the source holding it and that source's own id."""

    source: str
    id: str


class ScheduleOut(BaseModel):
    """A schedule under its public id, with every copy it was merged from."""

    id: str = Field(description="the public id: the id a user set on a copy, else content_id")
    content_id: str = Field(description="the deterministic id of the schedule's content")
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    trigger: TriggerOut
    origins: list[OriginOut] = Field(
        description="empty for a one-off that taskiq-redis lists only from its minute on",
    )
    in_code: bool = Field(description="declared in a task decorator: cannot be deleted")
    next_fire: datetime | None

    @classmethod
    def of(cls, merged: MergedSchedule, now: datetime) -> ScheduleOut:
        """Describe a merged schedule."""
        return cls(
            id=merged.public_id,
            content_id=merged.schedule_id,
            task=merged.task.task_name,
            args=merged.task.args,
            kwargs=merged.task.kwargs,
            trigger=TriggerOut.of(merged.trigger),
            origins=[
                OriginOut(source=origin_name(o.source), id=o.task.schedule_id)
                for o in merged.origins
            ],
            in_code=merged.in_code,
            next_fire=merged.trigger.next_fire(now),
        )

    @classmethod
    def unlisted(cls, task: ScheduledTask, now: datetime) -> ScheduleOut:
        """Describe a stored schedule its source does not list yet."""
        trigger = parse_trigger(task)
        return cls(
            id=task.schedule_id,
            content_id=schedule_id_for(task, trigger),
            task=task.task_name,
            args=task.args,
            kwargs=task.kwargs,
            trigger=TriggerOut.of(trigger),
            origins=[],
            in_code=False,
            next_fire=trigger.next_fire(now),
        )


class ScheduleIn(BaseModel):
    """A schedule to add: exactly one of ``cron``, ``interval`` or ``at``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"task": "example:report", "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
                {"task": "example:tick", "interval": 30, "id": "tick-30s"},
                {"task": "example:digest", "at": "2030-01-01T00:00:00Z"},
            ],
        },
    )

    task: str = Field(description="a registered task name, e.g. example:report")
    id: str | None = Field(
        default=None,
        description="your name for the schedule (its public id); default: the content id",
    )
    cron: str | None = Field(default=None, description="five fields: minute hour day month weekday")
    timezone: str | None = Field(default=None, description="IANA zone of the cron, default UTC")
    interval: float | None = Field(default=None, description="seconds, a whole number >= 1")
    at: datetime | None = Field(default=None, description="one-off time (naive = UTC)")
    args: list[Any] = Field(default_factory=list)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    def to_scheduled_task(self) -> ScheduledTask:
        """Return the schedule, validated by taskiq-dedup's own trigger parser.

        :raises InvalidScheduleError: naming the bad cron, timezone or interval.
        """
        if self.timezone is not None and self.cron is None:
            raise InvalidScheduleError(
                detail=f"timezone {self.timezone!r} applies to cron schedules only",
            )
        fields: dict[str, Any] = {
            "task_name": self.task,
            "labels": {},
            "args": self.args,
            "kwargs": self.kwargs,
            "cron": self.cron,
            "cron_offset": self.timezone,
            "interval": self.interval,
            "time": self.at,
        }
        # Parse before taskiq's own model checks, so every problem is named alike.
        parse_trigger(ScheduledTask.model_construct(schedule_id=NEW_SCHEDULE, **fields))
        if self.interval is not None:
            fields["interval"] = int(self.interval)
        if self.id is not None:
            fields["schedule_id"] = self.id
        return ScheduledTask(**fields)


class ExecutionOut(BaseModel):
    """One run of a task body, as the task recorded it."""

    task: str
    schedule_id: str | None
    slot: int | None
    slot_time: datetime | None
    task_id: str
    pid: int
    at: datetime

    @classmethod
    def of(cls, execution: Execution) -> ExecutionOut:
        """Describe a recorded execution."""
        slot = execution.slot
        return cls(
            task=execution.task,
            schedule_id=execution.schedule_id,
            slot=slot,
            slot_time=None if slot is None else datetime.fromtimestamp(slot, tz=timezone.utc),
            task_id=execution.task_id,
            pid=execution.pid,
            at=datetime.fromtimestamp(execution.at, tz=timezone.utc),
        )


class FiringOut(BaseModel):
    """One firing of a schedule in the firing ledger (``taskiq_dedup.ledger``)."""

    slot: int
    slot_time: datetime
    outcome: Outcome = Field(
        description=(
            "missed: no scheduler sent it; unconfirmed: its sender died after claiming it, "
            "perhaps after sending it (worker shows whether a worker took it); sent: in the "
            "queue, no worker took it yet; running, ran, failed: a leased run and its end; "
            "started: taken by a worker on a broker that cannot redeliver (a success is not "
            "recorded, a failure is); "
            "skipped_overlap: not run, the schedule's previous run still held its lease"
        ),
    )
    claimed_by: str = Field(
        description=(
            "the scheduler attempt (host:pid#random) that sent it, or found it missed or "
            "unconfirmed"
        ),
    )
    sent_at: datetime | None
    detected_at: datetime | None = Field(
        description="when a claim found the slot missed or unconfirmed"
    )
    taken_over: bool = Field(description="sent by a scheduler that took a lapsed claim over")
    worker: str | None = Field(description="the worker (host:pid) that took it last")
    started_at: datetime | None
    finished_at: datetime | None
    duplicates_dropped: int = Field(description="deliveries of it the worker guard refused")

    @classmethod
    def of(cls, entry: LedgerEntry) -> FiringOut:
        """Describe a ledger entry."""
        return cls(
            slot_time=datetime.fromtimestamp(entry.slot, tz=timezone.utc),
            **dataclasses.asdict(entry),
        )


class HealthOut(BaseModel):
    """Whether Redis answers, and which environment this process serves."""

    status: Literal["ok", "unavailable"]
    redis: str
    redis_url: str = Field(description="credentials redacted")
    prefix: str
    dedup: bool
    embedded_scheduler: bool
    source_stats: dict[str, int] = Field(
        description="this web worker's CompositeScheduleSource counters (claims won, "
        "duplicates cancelled, ...): with EMBEDDED_SCHEDULER=1 its scheduler's",
    )
