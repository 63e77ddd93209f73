"""The firing ledger on the private Redis: three schedulers, one worker guard, history()."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import pytest
from redis.asyncio import Redis
from taskiq import InMemoryBroker, ScheduledTask
from taskiq.kicker import AsyncKicker
from taskiq.message import TaskiqMessage
from taskiq.schedule_sources import LabelScheduleSource

from taskiq_dedup import CompositeScheduleSource, DedupMiddleware
from taskiq_dedup.claims import FiringClaims
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.ledger import LEDGER_LENGTH, MISSED_RECORDED, LedgerEntry, history
from taskiq_dedup.triggers import epoch_seconds
from tests.support.clock import FakeClock
from tests.support.firing import fire
from tests.support.polling import eventually

Factory = Callable[..., CompositeScheduleSource]
TTL_MS = 3_600_000
INTERVAL = 30  # seconds: the late window (2 min) then holds 4 slots
LEDGER_MEMORY_BOUND = 5 * 1024
"""Bytes the firing state of a schedule with a full ledger stays under (MEMORY
USAGE, docs/METRICS.md "Firing ledger"), with a 50-character scheduler name."""


@pytest.fixture
def broker() -> InMemoryBroker:
    broker = InMemoryBroker()

    @broker.task(task_name="app:tick", schedule=[{"interval": INTERVAL, "args": [1]}])
    async def tick(n: int) -> int:
        return n

    return broker


@pytest.fixture
async def worker(redis: Redis, prefix: str) -> AsyncIterator[InMemoryBroker]:
    """A worker whose DedupMiddleware executes each firing it is handed once.

    It records each run's end (``record_finish``), as on a broker that redelivers.
    """
    broker = InMemoryBroker(await_inplace=True)
    broker.add_middlewares(DedupMiddleware(redis=redis, prefix=prefix, record_finish=True))

    @broker.task(task_name="app:tick")
    async def tick(n: int) -> int:
        return n

    await broker.startup()
    yield broker
    await broker.shutdown()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_source(
    broker: InMemoryBroker, redis_url: str, prefix: str, clock: FakeClock
) -> AsyncIterator[Factory]:
    made: list[CompositeScheduleSource] = []

    async def factory(holder: str, **options: object) -> CompositeScheduleSource:
        source = CompositeScheduleSource(
            [LabelScheduleSource(broker)],
            prefix=prefix,
            redis_url=redis_url,
            clock=clock,
            holder=holder,
            **options,  # type: ignore[arg-type]
        )
        await source.startup()
        made.append(source)
        return source

    yield factory  # type: ignore[misc]
    for source in made:
        await source.shutdown()


async def send(
    source: CompositeScheduleSource, task: ScheduledTask, worker: InMemoryBroker
) -> bool:
    """Fire ``task`` as taskiq's scheduler does; a won firing reaches the worker twice."""
    if not await fire(source, task):
        return False
    for _ in range(2):  # the second copy is a duplicate delivery the guard drops
        await (
            AsyncKicker(task.task_name, worker, task.labels)
            .with_labels(schedule_id=task.schedule_id)
            .with_task_id(task.task_id)
            .kiq(*task.args)
        )
    return True


async def test_three_schedulers_one_claimer_and_one_run_per_entry_and_a_missed_slot_once(
    make_source: Factory,
    worker: InMemoryBroker,
    clock: FakeClock,
    redis: Redis,
    prefix: str,
    *,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="taskiq_dedup")
    schedulers = [await make_source(f"s{i}", broker=worker) for i in range(3)]
    tasks = [(await s.get_schedules())[0] for s in schedulers]
    sent: list[int] = []

    async def tick_all() -> None:
        for source, task in zip(schedulers, tasks, strict=True):
            if await send(source, task, worker):
                sent.append(int(task.labels["dedup_slot"]))

    first = epoch_seconds(clock.now)
    for _ in range(4):
        await tick_all()
        clock.advance(seconds=INTERVAL)
    # Every scheduler is down past the late window: the oldest slots are never sent,
    # the ones still in the window are sent late (in the background, through `worker`).
    clock.advance(seconds=INTERVAL * 9)
    await tick_all()
    current = epoch_seconds(clock.now)
    every_slot = list(range(first, current + 1, INTERVAL))
    keys = KeySpace(prefix)

    entries: list[LedgerEntry] = []

    async def settled() -> bool:
        entries[:] = await history(redis, keys, tasks[0].schedule_id)
        return [e.slot for e in entries if e.outcome in ("ran", "missed")] == every_slot

    await eventually(settled, timeout=10)
    missed = [e.slot for e in entries if e.outcome == "missed"]
    assert 1 <= len(missed) <= MISSED_RECORDED
    assert missed == list(range(missed[0], missed[-1] + 1, INTERVAL))  # one gap, each once
    assert sum(s.stats.missed for s in schedulers) == len(missed)  # found once across 3
    reported = [r for r in caplog.records if "was never sent" in r.getMessage()]
    assert [r.slot for r in reported] == missed  # type: ignore[attr-defined]
    # No slot won twice. After the gap, two schedulers of one tick may each win a
    # different slot (the late one and the current one): how many is timing.
    assert len(sent) == len(set(sent)) >= 5
    assert set(sent) <= set(every_slot)
    for entry in entries:
        if entry.outcome == "missed":
            assert entry.claimed_by.split("#")[0] in {"s0", "s1", "s2"}  # who found it
            assert isinstance(entry.detected_at, datetime)
            assert (entry.sent_at, entry.worker, entry.started_at) == (None, None, None)
            continue
        assert entry.outcome == "ran"
        assert entry.claimed_by.split("#")[0] in {"s0", "s1", "s2"}
        assert entry.worker  # the one worker that ran it (host:pid)
        assert entry.sent_at is not None
        assert entry.started_at is not None
        assert entry.finished_at is not None
        assert entry.started_at <= entry.finished_at
        # The scheduler's own sends reach the worker twice, the late re-sends once:
        assert entry.duplicates_dropped == (1 if entry.slot in sent else 0)
        assert not entry.taken_over


async def test_ledger_stays_bounded_after_many_firings(
    make_source: Factory, worker: InMemoryBroker, clock: FakeClock, redis: Redis, prefix: str
) -> None:
    source = await make_source("a-scheduler-host-with-a-long-name.example.internal")
    [task] = await source.get_schedules()
    fired = 0
    for _ in range(LEDGER_LENGTH * 2 + 5):
        fired += await send(source, task, worker)
        clock.advance(seconds=INTERVAL)
    assert fired == LEDGER_LENGTH * 2 + 5
    keys = KeySpace(prefix)
    entries = await history(redis, keys, task.schedule_id)
    assert len(entries) == LEDGER_LENGTH
    assert entries[-1].slot == epoch_seconds(clock.now) - INTERVAL  # the newest are kept
    assert all(e.outcome == "ran" for e in entries)
    usage = await redis.memory_usage(keys.firings(task.schedule_id))
    assert usage is not None
    print(f"firing state with a full ledger: {usage} bytes")  # the figure in the docs
    assert usage <= LEDGER_MEMORY_BOUND


async def test_takeover_and_a_lost_confirm_reply_write_one_entry(redis: Redis, prefix: str) -> None:
    keys = KeySpace(prefix)
    key = keys.firings("job")
    first = FiringClaims(redis, "a", pending_lease=0.2)
    lapsed = first.new_attempt()
    await first.claim(key, lapsed, [10], TTL_MS)
    second = FiringClaims(redis, "b", pending_lease=30)

    async def taken() -> bool:
        return (await second.claim(key, "b#1", [10], TTL_MS)).won

    await eventually(taken, timeout=5)
    assert not await first.confirm(key, lapsed, 10, TTL_MS)  # its copy went too: no entry
    assert await second.confirm(key, "b#1", 10, TTL_MS, takeover=True)
    await second.confirm(key, "b#1", 10, TTL_MS, takeover=True)  # a lost reply's retry
    [entry] = await history(redis, keys, "job")
    assert (entry.slot, entry.claimed_by, entry.taken_over, entry.outcome) == (
        10,
        "b#1",
        True,
        "sent",  # no worker has taken it
    )


async def test_a_released_claim_records_its_missed_slots_and_the_next_sender_none(
    redis: Redis, prefix: str
) -> None:
    keys = KeySpace(prefix)
    key = keys.firings("job")
    claims = FiringClaims(redis, "a")
    await claims.claim(key, "a#1", [10], TTL_MS)
    await claims.confirm(key, "a#1", 10, TTL_MS)
    await claims.claim(key, "a#2", [50], TTL_MS)
    many = list(range(20, 50, 2))  # more than one claim records
    assert await claims.release(key, "a#2", missed=many)  # the send failed
    assert (await claims.claim(key, "b#1", [50], TTL_MS)).previous == 49  # nothing to report
    assert await claims.confirm(key, "b#1", 50, TTL_MS)
    assert await claims.confirm(key, "b#1", 50, TTL_MS)  # a lost reply's retry: no new entry
    entries = await history(redis, keys, "job")
    assert [(e.slot, e.outcome) for e in entries] == [
        (10, "sent"),
        *((slot, "missed") for slot in many[-MISSED_RECORDED:]),
        (50, "sent"),
    ]


async def test_a_failed_run_and_a_retry_show_in_the_run_record(redis: Redis, prefix: str) -> None:
    keys = KeySpace(prefix)
    claims = FiringClaims(redis, "a")
    await claims.claim(keys.firings("job"), "a#1", [60], TTL_MS)
    await claims.confirm(keys.firings("job"), "a#1", 60, TTL_MS)
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    labels = {"schedule_id": "job", "dedup_slot": 60}
    message = TaskiqMessage(task_id="t-1", task_name="job", labels=labels, args=[], kwargs={})
    await middleware.pre_execute(message)
    [running] = await history(redis, keys, "job")
    assert running.outcome == "running"
    assert running.finished_at is None
    await middleware.on_error(message, None, RuntimeError("boom"))  # type: ignore[arg-type]
    [failed] = await history(redis, keys, "job")
    assert failed.outcome == "failed"
    assert failed.worker == running.worker
    assert failed.finished_at is not None
    retry = message.model_copy(update={"labels": {**labels, "_retries": "1"}})
    await middleware.pre_execute(retry)
    await middleware.post_execute(retry, None)  # type: ignore[arg-type]
    [ran] = await history(redis, keys, "job")
    assert ran.outcome == "ran"
    assert ran.duplicates_dropped == 0


async def test_a_once_claimed_run_shows_started_and_a_failure_failed(
    redis: Redis, prefix: str
) -> None:
    """On a broker that cannot redeliver the run's end is not recorded, a failure is."""
    keys = KeySpace(prefix)
    claims = FiringClaims(redis, "a")
    for slot in (60, 120):
        await claims.claim(keys.firings("job"), "a#1", [slot], TTL_MS)
        await claims.confirm(keys.firings("job"), "a#1", slot, TTL_MS)
    broker = InMemoryBroker()
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    middleware.set_broker(broker)
    messages = [
        TaskiqMessage(
            task_id=f"t-{slot}",
            task_name="job",
            labels={"schedule_id": "job", "dedup_slot": slot},
            args=[],
            kwargs={},
        )
        for slot in (60, 120)
    ]
    for message in messages:
        assert await middleware.pre_execute(message) is message
    await middleware.post_execute(messages[0], None)  # type: ignore[arg-type]
    await middleware.on_error(messages[1], None, RuntimeError("boom"))  # type: ignore[arg-type]
    started, failed = await history(redis, keys, "job")
    assert (started.slot, started.outcome, started.finished_at) == (60, "started", None)
    assert started.worker is not None
    assert started.started_at is not None
    assert (failed.slot, failed.outcome) == (120, "failed")
    assert failed.finished_at is not None


async def test_run_records_are_read_under_the_public_id_the_messages_carry(
    redis: Redis, prefix: str
) -> None:
    keys = KeySpace(prefix)
    claims = FiringClaims(redis, "a")
    await claims.claim(keys.firings("content-id"), "a#1", [60], TTL_MS)  # claims: the content id
    await claims.confirm(keys.firings("content-id"), "a#1", 60, TTL_MS)
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    labels = {"schedule_id": "nightly", "dedup_slot": 60}  # the sent copy: its user-set id
    message = TaskiqMessage(task_id="t-1", task_name="job", labels=labels, args=[], kwargs={})
    await middleware.pre_execute(message)
    await middleware.post_execute(message, None)  # type: ignore[arg-type]
    [entry] = await history(redis, keys, "content-id", run_id="nightly")
    assert (entry.outcome, entry.claimed_by) == ("ran", "a#1")
    assert entry.worker is not None
    [unjoined] = await history(redis, keys, "content-id")
    assert (unjoined.outcome, unjoined.worker) == ("sent", None)
