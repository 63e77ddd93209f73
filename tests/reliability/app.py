"""The app the fault runs start as real ``taskiq worker`` / ``taskiq scheduler`` processes.

Configured by the environment (see ``Settings``). Two Redis roles, so that the
table measures this package and not the broker's own durability:

- ``DEDUP_REDIS_URL``: claims and worker-side dedup keys - the server the faults
  hit (killed, restarted, slowed by a proxy);
- ``STABLE_REDIS_URL``: the broker's stream, the Redis schedule store and the
  execution record - never faulted.

Every execution of ``tick`` appends two JSON records (``start``, then ``done``
after ``TASK_SECONDS``) with its ``schedule_id`` and ``dedup_slot`` labels to
the list ``<prefix>:executions`` on the stable server.

``DEDUP_GUARD=off`` runs without the guard, to show that the fault runs' checks
catch duplicates: each scheduler claims in a key space of its own (so every
scheduler wins every claim and sends) and the workers have no ``DedupMiddleware``.

``DEDUP_CLOCK_SKEW`` (seconds) makes this process's clock run ahead (or behind):
both the composite source's ``clock=`` and the clock taskiq's scheduler loop
reads, as on a host whose clock is off.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone, tzinfo
from typing import TYPE_CHECKING, Annotated, Any

from redis.asyncio import Redis
from taskiq import Context, ScheduledTask, ScheduleSource, TaskiqDepends, TaskiqScheduler
from taskiq.message import BrokerMessage
from taskiq.schedule_sources import LabelScheduleSource
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListRedisScheduleSource, RedisStreamBroker

from taskiq_dedup import CompositeScheduleSource, DedupMiddleware
from taskiq_dedup.clock import Clock

if TYPE_CHECKING:
    from collections.abc import Mapping

TICK_TASK = "rel:tick"
NUDGE_TASK = "rel:nudge"

INTERVAL = 2
"""Seconds of the interval schedule declared in the decorator."""

DYNAMIC_INTERVAL = 3
"""Seconds of the interval schedule registered in the Redis schedule store."""

CRONS = {"cron": None, "cron-tz": "Asia/Kathmandu"}
"""``* * * * *`` in UTC and in a zone at UTC+5:45, by their ``kind``: both fire
at each minute's start (taskiq's loop fires a cron once its minute matches and
60 s passed since the last run; ``--skip-first-run`` puts that on the minute)."""

LEASE_TTL = 2.0
"""The worker lease: short, so a SIGKILLed worker's key lapses in seconds."""

IDLE_TIMEOUT_MS = 5000
"""``RedisStreamBroker`` redelivers a dead consumer's messages after this; it must
be at least twice ``LEASE_TTL`` (``DedupMiddleware`` checks)."""


def stream_name(prefix: str) -> str:
    """The broker's stream key (on the stable server)."""
    return f"{prefix}-queue"


def store_prefix(prefix: str) -> str:
    """Prefix of the Redis schedule store ('-': taskiq-redis breaks on ':' there)."""
    return prefix.replace(":", "-") + "-schedules"


def bad_store_prefix(prefix: str) -> str:
    """Prefix of the Redis schedule store seeded with corrupt entries."""
    return prefix.replace(":", "-") + "-bad-schedules"


def executions_key(prefix: str) -> str:
    """The list every execution is recorded in (on the stable server)."""
    return f"{prefix}:executions"


@dataclass(frozen=True)
class Settings:
    """What one process of the app is configured with."""

    dedup_url: str = "redis://127.0.0.1:1/0"
    stable_url: str = "redis://127.0.0.1:1/0"
    prefix: str = "reliability"
    clock_skew: float = 0.0
    task_seconds: float = 0.0
    bad_input: bool = False
    """Add the bad schedules of ``BAD_LABEL_SCHEDULES`` and the child ``bad_store``."""
    guard: bool = True
    """``False``: no shared claims and no worker-side guard (see the module docstring)."""
    kick_failure_rate: float = 0.0
    """Share of this process's kicks that raise, as a replica with a sick broker
    connection sees (1.0: every send fails)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            dedup_url=env.get("DEDUP_REDIS_URL", cls.dedup_url),
            stable_url=env.get("STABLE_REDIS_URL", cls.stable_url),
            prefix=env.get("DEDUP_PREFIX", cls.prefix),
            clock_skew=float(env.get("DEDUP_CLOCK_SKEW", "0")),
            task_seconds=float(env.get("TASK_SECONDS", "0")),
            bad_input=env.get("BAD_INPUT") == "1",
            guard=env.get("DEDUP_GUARD", "on") != "off",
            kick_failure_rate=float(env.get("KICK_FAILURE_RATE", "0")),
        )

    def env(self) -> dict[str, str]:
        """The environment that makes a child process read these settings."""
        return {
            "DEDUP_REDIS_URL": self.dedup_url,
            "STABLE_REDIS_URL": self.stable_url,
            "DEDUP_PREFIX": self.prefix,
            "DEDUP_CLOCK_SKEW": str(self.clock_skew),
            "TASK_SECONDS": str(self.task_seconds),
            "BAD_INPUT": "1" if self.bad_input else "0",
            "DEDUP_GUARD": "on" if self.guard else "off",
            "KICK_FAILURE_RATE": str(self.kick_failure_rate),
        }

    def claim_prefix(self) -> str:
        """Where the schedulers claim: one key space, or one per process unguarded."""
        return self.prefix if self.guard else f"{self.prefix}:solo-{os.getpid()}"


def skewed_clock(skew: float) -> Clock:
    """A ``Clock`` running ``skew`` seconds ahead (negative: behind)."""
    delta = timedelta(seconds=skew)

    def clock() -> datetime:
        return datetime.now(tz=timezone.utc) + delta

    return clock


def skew_scheduler_loop(skew: float) -> None:
    """Make taskiq's scheduler loop read a clock ``skew`` seconds off.

    The loop decides *when* to fire from ``datetime.now`` in its module; the
    composite source names the slot from its own ``clock``. A skewed host has
    both off, so both are shifted.
    """
    import taskiq.cli.scheduler.run as loop_module  # noqa: PLC0415

    delta = timedelta(seconds=skew)

    class SkewedDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]
            return datetime.now(tz) + delta

    loop_module.datetime = SkewedDatetime  # type: ignore[misc]


def dynamic_schedule() -> ScheduledTask:
    """The schedule registered in the Redis store before the schedulers start."""
    return ScheduledTask(
        task_name=TICK_TASK,
        labels={},
        args=["dyn"],
        kwargs={},
        interval=DYNAMIC_INTERVAL,
    )


async def register_dynamic(settings: Settings) -> str:
    """Register ``dynamic_schedule()`` through a composite; return its id."""
    store = ListRedisScheduleSource(
        settings.stable_url, prefix=store_prefix(settings.prefix), serializer=JSONSerializer()
    )
    composite = CompositeScheduleSource(
        [store], redis_url=settings.dedup_url, prefix=settings.prefix
    )
    await composite.startup()
    try:
        schedule = dynamic_schedule()
        await composite.add_schedule(schedule)
        assert schedule.schedule_id is not None  # set by add_schedule
        return schedule.schedule_id
    finally:
        await composite.shutdown()


settings = Settings.from_env()


class SickableStreamBroker(RedisStreamBroker):
    """The stream broker whose kicks fail at ``Settings.kick_failure_rate``."""

    async def kick(self, message: BrokerMessage) -> None:
        if settings.kick_failure_rate and random.random() < settings.kick_failure_rate:
            raise ConnectionError("the broker connection of this replica is sick")
        await super().kick(message)


broker = SickableStreamBroker(
    settings.stable_url,
    queue_name=stream_name(settings.prefix),
    consumer_group_name=f"{settings.prefix}-workers",
    idle_timeout=IDLE_TIMEOUT_MS,
    xread_block=1000,
)
if settings.guard:
    broker.add_middlewares(
        DedupMiddleware(redis_url=settings.dedup_url, prefix=settings.prefix, lease_ttl=LEASE_TTL),
    )
label_source = LabelScheduleSource(broker)
store_source = ListRedisScheduleSource(
    settings.stable_url, prefix=store_prefix(settings.prefix), serializer=JSONSerializer()
)
children: list[ScheduleSource] = [label_source, store_source]
if settings.bad_input:
    children.append(
        ListRedisScheduleSource(
            settings.stable_url,
            prefix=bad_store_prefix(settings.prefix),
            serializer=JSONSerializer(),
        )
    )
composite = CompositeScheduleSource(
    children,
    redis_url=settings.dedup_url,
    prefix=settings.claim_prefix(),
    clock=skewed_clock(settings.clock_skew),
)
scheduler = TaskiqScheduler(broker, sources=[composite])

if settings.clock_skew:
    skew_scheduler_loop(settings.clock_skew)

_recorder: Redis | None = None


async def _record(phase: str, kind: str, context: Context) -> None:
    global _recorder  # noqa: PLW0603 -- one client per worker process
    if _recorder is None:
        _recorder = Redis.from_url(settings.stable_url)
    labels = context.message.labels
    record = {
        "phase": phase,
        "kind": kind,
        "schedule_id": labels.get("schedule_id"),
        "slot": labels.get("dedup_slot"),
        "task_id": context.message.task_id,
        "pid": os.getpid(),
        "at": time.time(),
    }
    await _recorder.rpush(executions_key(settings.prefix), json.dumps(record))


@broker.task(
    task_name=TICK_TASK,
    schedule=[
        {"interval": INTERVAL, "args": ["interval"]},
        *(
            {"cron": "* * * * *", "cron_offset": zone, "args": [kind]}
            for kind, zone in CRONS.items()
        ),
    ],
)
async def tick(kind: str, context: Annotated[Context, TaskiqDepends()]) -> None:
    """Record the start, take ``TASK_SECONDS``, record the end."""
    await _record("start", kind, context)
    if settings.task_seconds:
        await asyncio.sleep(settings.task_seconds)
    await _record("done", kind, context)


@broker.task(task_name=NUDGE_TASK)
async def nudge() -> None:
    """Does nothing: a new message makes ``RedisStreamBroker`` look for stale ones."""


WEIRD_TASK = "rel:wéird:*?[x]{y} 日本"
"""A task name with unicode, colons, glob characters and a space."""

HUGE_ARGUMENT = "x" * 65536


def bad_label_schedules() -> list[dict[str, Any]]:
    """Label schedules each of which must be skipped with a WARNING naming it,
    plus one odd but healthy one (``weird``: odd task name, 64 KB argument)."""
    return [
        {"interval": INTERVAL, "args": ["weird", HUGE_ARGUMENT]},
        {"cron": "61 * * * *", "args": ["bad-cron", ""]},
        {"cron": "* * * * *", "cron_offset": "Mars/Olympus", "args": ["bad-zone", ""]},
        {"time": datetime(2001, 1, 1, tzinfo=timezone.utc), "args": ["ancient", ""]},
        {"time": datetime(9999, 1, 1, tzinfo=timezone.utc), "args": ["far-future", ""]},
        {"interval": 5, "args": ["no-json", object()]},
    ]


if settings.bad_input:

    @broker.task(task_name=WEIRD_TASK, schedule=bad_label_schedules())
    async def weird(
        kind: str, payload: object, context: Annotated[Context, TaskiqDepends()]
    ) -> None:
        """Record an execution of an odd schedule."""
        await _record("start", kind, context)
        await _record("done", kind, context)


class _RunsOnUnpickle:
    """Unpickling this creates ``path``: proof that something unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def evil_pickle(path: str) -> bytes:
    """A pickle whose unpickling creates the file ``path``."""
    return pickle.dumps(_RunsOnUnpickle(path))


async def seed_bad_store(settings: Settings, sentinel: str) -> None:
    """Fill the bad store with an invalid cron, non-JSON bytes, JSON that is no
    schedule, and a pickle that creates ``sentinel`` if anything unpickles it."""
    prefix = bad_store_prefix(settings.prefix)
    invalid = ScheduledTask(
        task_name=TICK_TASK, labels={}, args=["bad-store-cron"], kwargs={}, cron="61 * * * *"
    )
    entries = {
        "invalid-cron": invalid.model_dump_json().encode(),
        "not-json": b"\xff\xfenot json",
        "not-a-schedule": b'{"hello": "world"}',
        "pickle": evil_pickle(sentinel),
    }
    client = Redis.from_url(settings.stable_url)
    try:
        for name, payload in entries.items():
            await client.set(f"{prefix}:data:{name}", payload)
            await client.rpush(f"{prefix}:cron", name)
    finally:
        await client.aclose()
