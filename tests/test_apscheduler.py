"""DedupExecutor: schedulers in this process sharing one real Redis run each run once."""

from __future__ import annotations

import asyncio
import itertools
import logging
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MISSED,
    JobExecutionEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger
from redis.asyncio import Redis

from taskiq_dedup.apscheduler import DedupExecutor, JobTrigger, job_schedule_id
from taskiq_dedup.errors import ConfigurationError
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.leases import Leases
from tests.support.polling import eventually
from tests.support.processes import wait_until
from tests.support.redis_server import RedisServer

CALLS: Counter[str] = Counter()
_CALLS_LOCK = threading.Lock()


def record(name: str) -> None:
    with _CALLS_LOCK:
        CALLS[name] += 1


async def record_async(name: str) -> None:
    record(name)


def explode(name: str) -> None:
    record(name)
    raise RuntimeError("the job failed")


class Runs:
    """Every run outcome of several schedulers, from their events."""

    def __init__(self) -> None:
        self.events: list[JobExecutionEvent] = []
        self._lock = threading.Lock()

    def listen(self, scheduler: AsyncIOScheduler | BackgroundScheduler) -> None:
        scheduler.add_listener(self._add, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)

    def _add(self, event: JobExecutionEvent) -> None:
        with self._lock:
            self.events.append(event)

    def slots(self, code: int, bucket: int = 1) -> Counter[int]:
        with self._lock:
            return Counter(
                int(e.scheduled_run_time.timestamp()) // bucket * bucket
                for e in self.events
                if e.code == code
            )


def make_async(redis_url: str, prefix: str, **options: object) -> AsyncIOScheduler:
    executor = DedupExecutor(redis_url=redis_url, prefix=prefix, **options)  # type: ignore[arg-type]
    return AsyncIOScheduler(executors={"default": executor}, timezone=timezone.utc)


def executor_of(scheduler: AsyncIOScheduler | BackgroundScheduler) -> DedupExecutor:
    found = scheduler._lookup_executor("default")
    assert isinstance(found, DedupExecutor)
    return found


async def test_two_asyncio_schedulers_run_each_run_once(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    runs = Runs()
    schedulers = [make_async(redis_url, prefix) for _ in range(2)]
    for index, scheduler in enumerate(schedulers):
        runs.listen(scheduler)
        # without ids: every scheduler's copy is one job; started apart, buckets still line up
        scheduler.add_job(record, "interval", seconds=1, args=[f"{prefix}-interval"])
        scheduler.add_job(record_async, "cron", second="*", args=[f"{prefix}-cron"], id="tick")
        scheduler.start()
        if index == 0:
            await asyncio.sleep(0.3)  # a different phase for the second scheduler's interval
    calls = [f"{prefix}-cron", f"{prefix}-interval"]
    try:
        await eventually(lambda: len(runs.slots(EVENT_JOB_EXECUTED)) >= 4, timeout=15, interval=0.1)
        for scheduler in schedulers:
            scheduler.pause()
        # every run handed over has reported its event before the count
        await eventually(lambda: sum(CALLS[c] for c in calls) == len(runs.events), timeout=5)
    finally:
        for scheduler in schedulers:
            scheduler.shutdown()
    for tick in (True, False):
        # the interval job has another id in each scheduler: one job all the same;
        # a 1 s interval's bucket is its run time's second, as a cron's slot is
        seen = Counter(
            int(e.scheduled_run_time.timestamp())
            for e in runs.events
            if (e.job_id == "tick") == tick
        )
        assert seen, tick
        assert max(seen.values()) == 1, (tick, seen)
    assert CALLS[f"{prefix}-cron"] == len([e for e in runs.events if e.job_id == "tick"])
    tick = f"tick@{record_async.__module__}:record_async"
    assert await redis.exists(KeySpace(prefix).firings(tick))
    total = sum(executor_of(s).stats.ran for s in schedulers)
    skipped = sum(executor_of(s).stats.duplicates_skipped for s in schedulers)
    assert total == len(runs.events)
    assert skipped >= 1


async def test_a_job_that_raises_is_that_runs_failure_not_run_again(
    redis_url: str, prefix: str
) -> None:
    runs = Runs()
    schedulers = [make_async(redis_url, prefix) for _ in range(3)]
    for scheduler in schedulers:
        runs.listen(scheduler)
        scheduler.add_job(explode, "cron", second="*", args=[f"{prefix}-boom"], id="boom")
        scheduler.start()
    try:
        await eventually(lambda: len(runs.slots(EVENT_JOB_ERROR)) >= 3, timeout=15, interval=0.1)
    finally:
        for scheduler in schedulers:
            scheduler.shutdown()
    failures = runs.slots(EVENT_JOB_ERROR)
    assert max(failures.values()) == 1, failures
    assert CALLS[f"{prefix}-boom"] == sum(failures.values())
    assert not runs.slots(EVENT_JOB_EXECUTED)


def test_background_schedulers_with_thread_pools_run_each_run_once(
    redis_url: str, prefix: str
) -> None:
    runs = Runs()
    schedulers = []
    for _ in range(3):
        executor = DedupExecutor(ThreadPoolExecutor(4), redis_url=redis_url, prefix=prefix)
        scheduler = BackgroundScheduler(executors={"default": executor}, timezone=timezone.utc)
        runs.listen(scheduler)
        scheduler.add_job(record, "interval", seconds=1, args=[f"{prefix}-threads"])
        schedulers.append(scheduler)
        scheduler.start()
    try:
        wait_until(lambda: len(runs.slots(EVENT_JOB_EXECUTED)) >= 4, timeout=15)
    finally:
        for scheduler in schedulers:
            scheduler.shutdown()
    buckets = runs.slots(EVENT_JOB_EXECUTED)
    assert max(buckets.values()) == 1, buckets
    assert CALLS[f"{prefix}-threads"] == sum(buckets.values())


async def test_coalesce_and_misfire_grace_keep_their_meaning_across_schedulers(
    redis_url: str, prefix: str
) -> None:
    """Run times handed in by every scheduler: a late one is reported once, a due one runs once."""
    runs = Runs()
    schedulers = [make_async(redis_url, prefix) for _ in range(2)]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    missed, due = now - timedelta(seconds=30), now
    jobs = []
    for scheduler in schedulers:
        runs.listen(scheduler)
        scheduler.start(paused=True)
        jobs.append(
            scheduler.add_job(
                record,
                "cron",
                second="*",
                args=[f"{prefix}-grace"],
                id="graced",
                misfire_grace_time=5,
                coalesce=False,
            ),
        )
    try:
        for scheduler, job in zip(schedulers, jobs, strict=True):
            executor_of(scheduler).submit_job(job, [missed, due])
        await eventually(
            lambda: runs.slots(EVENT_JOB_MISSED) and runs.slots(EVENT_JOB_EXECUTED),
            timeout=10,
        )
        await eventually(
            lambda: sum(executor_of(s).stats.duplicates_skipped for s in schedulers) == 2,
            timeout=10,
        )
    finally:
        for scheduler in schedulers:
            scheduler.shutdown()
    assert runs.slots(EVENT_JOB_MISSED) == Counter({int(missed.timestamp()): 1})
    assert runs.slots(EVENT_JOB_EXECUTED) == Counter({int(due.timestamp()): 1})
    assert CALLS[f"{prefix}-grace"] == 1


async def test_redis_down_past_the_retry_window_skips_with_one_error_line(
    own_redis: RedisServer, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    runs = Runs()
    scheduler = make_async(own_redis.url, prefix, claim_retry_window=0.3)
    runs.listen(scheduler)
    scheduler.add_job(record, "cron", second="*", args=[f"{prefix}-down"], id="down")
    own_redis.stop()
    executor = executor_of(scheduler)
    with caplog.at_level(logging.ERROR, logger="taskiq_dedup.apscheduler"):
        scheduler.start()
        try:
            await eventually(lambda: executor.stats.redis_errors >= 2, timeout=15, interval=0.1)
            assert scheduler.running
        finally:
            scheduler.shutdown()
    assert CALLS[f"{prefix}-down"] == 0
    assert not runs.events
    lines = [r for r in caplog.records if r.name == "taskiq_dedup.apscheduler"]
    assert len(lines) == executor.stats.redis_errors
    assert all("skipped" in r.getMessage() and r.exc_info is None for r in lines)


async def test_redis_down_with_the_run_policy_runs_without_a_claim(
    own_redis: RedisServer, prefix: str
) -> None:
    scheduler = make_async(own_redis.url, prefix, claim_retry_window=0.3, on_redis_error="run")
    scheduler.add_job(record, "cron", second="*", args=[f"{prefix}-run"], id="run")
    own_redis.stop()
    executor = executor_of(scheduler)
    scheduler.start()
    try:
        await eventually(lambda: CALLS[f"{prefix}-run"] >= 1, timeout=15, interval=0.1)
    finally:
        scheduler.shutdown()
    assert executor.stats.run_without_claim >= 1
    assert executor.stats.claimed == 0


SPANS: dict[str, list[tuple[float, float]]] = {}


async def slow(name: str) -> None:
    """Run for 1.5 s: longer than the 1 s interval it is scheduled at."""
    start = time.monotonic()
    await asyncio.sleep(1.5)
    SPANS.setdefault(name, []).append((start, time.monotonic()))


def overlaps(spans: list[tuple[float, float]]) -> int:
    ordered = sorted(spans)
    return sum(1 for (_, end), (start, _) in itertools.pairwise(ordered) if start < end)


async def run_slow_job(redis_url: str, prefix: str, max_instances: int) -> list[DedupExecutor]:
    """Two schedulers in this process, one event loop: a job that outlasts its interval."""
    schedulers = [make_async(redis_url, prefix) for _ in range(2)]
    for scheduler in schedulers:
        scheduler.add_job(
            slow, "interval", seconds=1, args=[prefix], id="slow", max_instances=max_instances
        )
        scheduler.start()
    try:
        await eventually(lambda: len(SPANS.get(prefix, [])) >= 3, timeout=20, interval=0.1)
        for scheduler in schedulers:
            scheduler.pause()
        await eventually(
            lambda: all(not executor_of(s).inner._instances for s in schedulers), timeout=5
        )
    finally:
        for scheduler in schedulers:
            scheduler.shutdown()
    return [executor_of(s) for s in schedulers]


async def test_max_instances_one_holds_across_schedulers(redis_url: str, prefix: str) -> None:
    executors = await run_slow_job(redis_url, prefix, max_instances=1)
    assert overlaps(SPANS[prefix]) == 0, SPANS[prefix]
    assert sum(e.stats.max_instances_skipped for e in executors) >= 1


async def test_without_the_job_lease_runs_overlap(redis_url: str, prefix: str) -> None:
    """``max_instances=2`` is counted per process: the overlap check above can fail."""
    await run_slow_job(redis_url, prefix, max_instances=2)
    assert overlaps(SPANS[prefix]) >= 1, SPANS[prefix]


async def test_a_crashed_holders_job_lease_is_taken_over(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    scheduler = make_async(redis_url, prefix)
    job = scheduler.add_job(record, "cron", second="*", args=[f"{prefix}-crash"], id="crashy")
    key = KeySpace(prefix).job_lease(f"crashy@{job.func_ref}")
    # a worker that took the lease and died: its lease lapses, nobody renews it
    holder = "gone:1#dead"
    dead = await Leases(redis).claim(
        key,
        token=holder,
        task_id="1",
        generation=0,
        worker="gone:1",
        lease_ms=500,
        retention_ms=60_000,
    )
    assert dead.won
    executor = executor_of(scheduler)
    scheduler.start()
    try:
        await eventually(lambda: CALLS[f"{prefix}-crash"] >= 1, timeout=10, interval=0.1)
    finally:
        scheduler.shutdown()
    assert executor.stats.instance_takeovers == 1


@pytest.fixture
def paused() -> Iterator[BackgroundScheduler]:
    """A started, paused scheduler: its jobs have their defaults (misfire grace, ...)."""
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.start(paused=True)
    yield scheduler
    scheduler.shutdown(wait=False)


def _job(scheduler: BackgroundScheduler, *args: object, **kwargs: object):
    return scheduler.add_job(record, *args, **{"args": ["x"], **kwargs})


def test_identity_pins_user_ids_and_hashes_generated_ones(paused: BackgroundScheduler) -> None:
    one = two = paused
    a = _job(one, "interval", seconds=10, args=["x"])
    b = _job(two, "interval", seconds=10, args=["x"])
    assert a.id != b.id  # APScheduler drew two ids
    assert job_schedule_id(a, JobTrigger(a)) == job_schedule_id(b, JobTrigger(b))
    other = _job(one, "interval", seconds=10, args=["y"])
    assert job_schedule_id(other, JobTrigger(other)) != job_schedule_id(a, JobTrigger(a))
    pinned = _job(one, "cron", minute="*", id="digest")
    assert job_schedule_id(pinned, JobTrigger(pinned)) == f"digest@{pinned.func_ref}"


def test_run_times_map_to_slots_every_scheduler_agrees_on(paused: BackgroundScheduler) -> None:
    scheduler = paused
    interval = JobTrigger(_job(scheduler, "interval", seconds=10))
    at = datetime(2030, 1, 1, 0, 0, 17, 500000, tzinfo=timezone.utc)
    base = int(at.timestamp()) - 7
    assert interval.slot_of(at) == base
    assert interval.at(at).slots_between(base - 30, base) == [base - 20, base - 10]
    cron = JobTrigger(_job(scheduler, "cron", minute="*/5"))
    assert cron.slot_of(at) == int(at.timestamp())
    five = int(datetime(2030, 1, 1, 0, 5, tzinfo=timezone.utc).timestamp())
    assert cron.next_slot(five - 300) == five
    date = JobTrigger(_job(scheduler, "date", run_date=at))
    assert date.next_slot(date.slot_of(at)) is None


def test_bad_input_names_the_culprit(paused: BackgroundScheduler) -> None:
    scheduler = paused
    with pytest.raises(ConfigurationError, match="jitter"):
        JobTrigger(_job(scheduler, "cron", minute="*", jitter=5, id="shaky"))
    with pytest.raises(ConfigurationError, match="whole number"):
        JobTrigger(_job(scheduler, "interval", seconds=1.5, id="halves"))
    either = OrTrigger([CronTrigger(minute="1"), CronTrigger(minute="2")])
    with pytest.raises(ConfigurationError, match="OrTrigger"):
        JobTrigger(_job(scheduler, either, id="either"))
    with pytest.raises(ConfigurationError, match="on_redis_error"):
        DedupExecutor(redis_url="redis://127.0.0.1:1/0", on_redis_error="retry")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="prefix"):
        DedupExecutor(redis_url="redis://127.0.0.1:1/0", prefix="a b")
    with pytest.raises(ConfigurationError, match="redis_url"):
        DedupExecutor(redis_url="")
    lam = scheduler.add_job(lambda: None, "interval", seconds=5)
    with pytest.raises(ConfigurationError, match="importable reference"):
        job_schedule_id(lam, JobTrigger(lam))


def test_the_base_package_does_not_import_apscheduler() -> None:
    code = (
        "import sys, taskiq_dedup, taskiq_dedup.source, taskiq_dedup.middleware;"
        "print(any(m.split('.')[0] == 'apscheduler' for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
