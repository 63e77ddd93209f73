"""A firing survives failed sends, dead senders, late and drifting ticks.

Schedulers here are taskiq's own ``TaskiqScheduler`` calling ``on_ready`` on the
composite source, over brokers whose kicks fail on command; every message goes
through a real redis-server's claim state.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import (
    Context,
    InMemoryBroker,
    ScheduledTask,
    TaskiqDepends,
    TaskiqMiddleware,
    TaskiqScheduler,
)
from taskiq.exceptions import ScheduledTaskCancelledError, SendTaskError
from taskiq.message import BrokerMessage, TaskiqMessage
from taskiq.schedule_sources import LabelScheduleSource

from taskiq_dedup import CompositeScheduleSource, DedupMiddleware
from taskiq_dedup.labels import SLOT_LABEL
from taskiq_dedup.locks import acquire_lock
from tests.support.clock import FakeClock
from tests.support.polling import eventually
from tests.support.redis_server import RedisServer

TASK = "app:job"


class FlakyBroker(InMemoryBroker):
    """An in-memory broker whose next ``fail`` kicks raise, or that hangs on ``hang``."""

    def __init__(self) -> None:
        super().__init__(await_inplace=True)
        self.fail = 0
        self.hang = False
        self.delay = 0.0

    async def kick(self, message: BrokerMessage) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise SendTaskError
        await super().kick(message)


class Recorder(TaskiqMiddleware):
    """Records the slot of every message a broker took."""

    def __init__(self, sent: list[int]) -> None:
        super().__init__()
        self.sent = sent

    def post_send(self, message: TaskiqMessage) -> None:
        self.sent.append(int(message.labels[SLOT_LABEL]))


class World:
    """Schedulers sharing one Redis, each with its own broker (its own process)."""

    def __init__(self, redis_url: str, prefix: str, clock: FakeClock) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.clock = clock
        self.sent: list[int] = []
        self.executed: list[int] = []
        self.sources: list[CompositeScheduleSource] = []

    def broker(self, *, guard: bool = False) -> FlakyBroker:
        broker = FlakyBroker()
        middlewares: list[TaskiqMiddleware] = [Recorder(self.sent)]
        if guard:
            middlewares.append(DedupMiddleware(redis_url=self.redis_url, prefix=self.prefix))
        broker.add_middlewares(*middlewares)
        executed = self.executed

        @broker.task(task_name=TASK)
        async def job(n: int, context: Context = TaskiqDepends()) -> None:  # noqa: B008
            del n
            executed.append(int(context.message.labels[SLOT_LABEL]))

        return broker

    async def scheduler(
        self, schedule: dict[str, Any], *, guard: bool = False, **options: Any
    ) -> tuple[TaskiqScheduler, CompositeScheduleSource, FlakyBroker]:
        broker = self.broker(guard=guard)
        label = LabelScheduleSource(broker)
        source = CompositeScheduleSource(
            [label],
            redis_url=self.redis_url,
            prefix=self.prefix,
            clock=self.clock,
            broker=broker,
            **options,
        )
        await source.startup()
        await broker.startup()
        label.schedules["declared"] = ScheduledTask(
            task_name=TASK, labels={}, args=[1], kwargs={}, **schedule
        )
        self.sources.append(source)
        return TaskiqScheduler(broker, [source]), source, broker

    async def close(self) -> None:
        for source in self.sources:
            await source.shutdown()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 10, 9, 0, 0, tzinfo=timezone.utc))


@pytest.fixture
async def world(redis_url: str, prefix: str, clock: FakeClock) -> AsyncIterator[World]:
    made = World(redis_url, prefix, clock)
    try:
        yield made
    finally:
        await made.close()


async def tick(scheduler: TaskiqScheduler, source: CompositeScheduleSource) -> BaseException | None:
    """One ``on_ready`` of the schedule, in its own task as taskiq's loop runs it."""
    (task,) = await source.get_schedules()

    async def send() -> None:
        await scheduler.on_ready(source, task)

    try:
        await asyncio.create_task(send())
    except Exception as exc:  # the loop logs it and moves on
        return exc
    return None


async def test_a_failed_send_is_sent_by_a_waiting_replica(world: World) -> None:
    sick, sick_source, sick_broker = await world.scheduler({"interval": 60})
    healthy, healthy_source, _ = await world.scheduler({"interval": 60})
    sick_broker.fail = 99  # a broken broker connection: every kick fails, after a while
    sick_broker.delay = 0.3
    sick_tick = asyncio.create_task(tick(sick, sick_source))
    await eventually(lambda: sick_source.firings.stats.claimed == 1, timeout=10)
    assert await tick(healthy, healthy_source) is None  # waited out the sick send, then sent
    assert isinstance(await sick_tick, SendTaskError)  # the sick replica had won the claim
    assert len(world.executed) == 1
    assert sick_source.stats.send_failures == 1
    assert healthy_source.stats.fired == 1


async def test_a_sick_replica_never_loses_firings_for_all(world: World, clock: FakeClock) -> None:
    pairs = [await world.scheduler({"interval": 10}) for _ in range(3)]
    pairs[0][2].fail = 10**6
    for _ in range(5):
        await asyncio.gather(*(tick(s, src) for s, src, _ in pairs))
        clock.advance(seconds=10)
    assert len(set(world.executed)) == len(world.executed) == 5


async def test_a_one_off_is_not_lost_to_a_failed_send(world: World, clock: FakeClock) -> None:
    scheduler, source, broker = await world.scheduler({"time": clock.now})
    broker.fail = 1
    assert isinstance(await tick(scheduler, source), SendTaskError)
    await eventually(lambda: len(world.executed) == 1, timeout=10, message=str(world.executed))
    assert source.stats.send_failures == 1
    assert source.stats.fired == 1


async def test_a_send_cut_by_a_timeout_is_released(world: World) -> None:
    hung, hung_source, hung_broker = await world.scheduler({"interval": 60})
    other, other_source, _ = await world.scheduler({"interval": 60})
    hung_broker.hang = True
    (task,) = await hung_source.get_schedules()
    first = asyncio.create_task(  # taskiq's --send-timeout wraps the send like this
        asyncio.wait_for(hung.on_ready(hung_source, task), timeout=0.5),
    )
    await asyncio.sleep(0.1)
    assert await tick(other, other_source) is None
    with pytest.raises(asyncio.TimeoutError):
        await first
    assert len(world.executed) == 1
    assert other_source.stats.fired == 1


async def test_a_send_queued_longer_than_its_lease_is_not_taken_over(world: World) -> None:
    """A live process renews the lease of a send waiting its turn (a burst)."""
    slow, slow_source, slow_broker = await world.scheduler({"interval": 60}, pending_lease=0.3)
    other, other_source, _ = await world.scheduler({"interval": 60})
    slow_broker.delay = 1.0  # three leases behind the other sends of its tick
    first = asyncio.create_task(tick(slow, slow_source))
    await asyncio.sleep(0.1)
    assert await tick(other, other_source) is None  # waits, then finds it sent
    assert await first is None
    assert (other_source.stats.takeovers, other_source.stats.duplicates_cancelled) == (0, 1)
    assert len(world.sent) == 1
    assert slow_source.stats.fired == 1
    assert slow_source.firings.stats.renewals >= 2


async def test_a_send_hung_past_the_renewal_limit_is_taken_over(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("taskiq_dedup.firing.MAX_RENEWED", 0.5)
    hung, hung_source, hung_broker = await world.scheduler({"interval": 60}, pending_lease=0.3)
    other, other_source, _ = await world.scheduler({"interval": 60})
    hung_broker.hang = True  # no --send-timeout: the send never ends
    stuck = asyncio.create_task(tick(hung, hung_source))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    assert await tick(other, other_source) is None
    assert time.monotonic() - started >= 0.5  # renewed until the limit, then lapsed
    assert other_source.stats.takeovers == 1
    assert len(world.executed) == 1
    assert "its lease is no longer renewed" in caplog.text
    stuck.cancel()


async def test_a_sender_that_died_after_claiming_is_taken_over(world: World) -> None:
    _, dying_source, _ = await world.scheduler({"interval": 60}, pending_lease=0.5)
    other, other_source, _ = await world.scheduler({"interval": 60})
    (task,) = await dying_source.get_schedules()
    await dying_source.pre_send(task)  # claimed; this process "dies": no send, no release
    await dying_source.firings.close()  # a dead process renews no lease
    started = time.monotonic()
    assert await tick(other, other_source) is None
    assert time.monotonic() - started >= 0.4  # not before the lease lapsed
    assert len(world.executed) == 1
    assert other_source.stats.takeovers == 1


async def test_a_sender_that_died_before_confirming_is_stopped_by_the_worker_guard(
    world: World,
) -> None:
    dying, dying_source, dying_broker = await world.scheduler(
        {"interval": 60}, guard=True, pending_lease=0.5
    )
    other, other_source, _ = await world.scheduler({"interval": 60}, guard=True)
    (task,) = await dying_source.get_schedules()
    await dying_source.pre_send(task)
    await dying_source.firings.close()  # it dies after this kick: nothing renews its lease
    await dying.broker.kick(  # sent, then the process dies before post_send confirms
        dying_broker.formatter.dumps(
            TaskiqMessage(
                task_id=task.task_id or "",
                task_name=TASK,
                labels={**task.labels, "schedule_id": task.schedule_id},
                args=task.args,
                kwargs=task.kwargs,
            ),
        ),
    )
    assert await tick(other, other_source) is None  # takes over and sends a second copy
    assert other_source.stats.takeovers == 1
    assert len(world.sent) == 1  # the recorder saw the takeover's send
    assert len(world.executed) == 1  # the worker guard dropped the second copy


@pytest.mark.parametrize("second", [57, 3, 0])
async def test_late_and_early_cron_ticks_send_every_minute_once(
    world: World, clock: FakeClock, second: int
) -> None:
    """A loop that fires ``* 9 * * *`` at :57 of each minute (a scheduler started
    late), at :03, or on the minute. (Schedulers whose clocks disagree each fire by
    their own clock: ``test_protocol_model.py`` runs three skewed by up to 4 s.)"""
    scheduler, source, _ = await world.scheduler({"cron": "* 9 * * *"})
    clock.now = datetime(2026, 3, 10, 9, 0, 0, tzinfo=timezone.utc) + timedelta(seconds=second)
    for _ in range(60):
        assert await tick(scheduler, source) is None
        clock.advance(minutes=1)
    expected = [
        int(datetime(2026, 3, 10, 9, m, tzinfo=timezone.utc).timestamp()) for m in range(60)
    ]
    assert world.sent == expected
    assert world.executed == expected


async def test_interval_drift_skips_no_bucket(world: World, clock: FakeClock) -> None:
    """taskiq's loop phase only slips later: a tick that crosses a bucket boundary
    must not leave the bucket it skipped unsent."""
    scheduler, source, _ = await world.scheduler({"interval": 10})
    start = int(clock.now.timestamp())
    phases = [9, 19, 30, 40, 50, 61, 71]  # slipped by 1 s twice, once across a boundary
    for phase in phases:
        clock.now = datetime.fromtimestamp(start + phase, tz=timezone.utc)
        assert await tick(scheduler, source) is None
    await eventually(lambda: len(world.sent) == 8, timeout=10, message=str(world.sent))
    assert world.sent == sorted(world.sent)
    assert world.sent == list(range(start, start + 80, 10))
    assert source.stats.sent_late == 1  # the tick at 30 s sent bucket 20; bucket 30 followed


async def test_slots_older_than_the_window_are_reported_once_as_missed(
    world: World, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="taskiq_dedup")
    first, first_source, _ = await world.scheduler({"interval": 60})
    second, second_source, _ = await world.scheduler({"interval": 60})
    assert await tick(first, first_source) is None
    clock.advance(minutes=6)  # every scheduler down (or blocked) for six slots
    await asyncio.gather(tick(first, first_source), tick(second, second_source))
    missed = [r for r in caplog.records if "was never sent" in r.getMessage()]
    assert len(missed) == 2  # the two slots older than the late window, once each
    assert first_source.stats.missed + second_source.stats.missed == 2
    # The four slots of the window (one period + LATE_WINDOW) are sent, oldest first.
    await eventually(lambda: len(world.executed) == 5, timeout=10)


async def test_a_pre_send_on_a_hung_redis_gives_up_within_its_deadline(
    world: World, own_redis: RedisServer
) -> None:
    world.redis_url = own_redis.url
    scheduler, source, _ = await world.scheduler({"interval": 60}, claim_retry_window=1.0)
    (task,) = await source.get_schedules()
    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ScheduledTaskCancelledError):
            await source.pre_send(task)
        elapsed = time.monotonic() - started
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    assert elapsed < 3  # the client's 5 s socket timeout times its retries would take 20 s
    assert source.stats.claim_errors == 1
    del scheduler


async def test_an_add_schedule_loser_writes_when_the_holder_failed(
    redis_url: str, prefix: str, redis: Redis
) -> None:
    from taskiq.serializers import JSONSerializer  # noqa: PLC0415
    from taskiq_redis import ListRedisScheduleSource  # noqa: PLC0415

    class FailingOnce(ListRedisScheduleSource):
        failed = False

        async def add_schedule(self, schedule: ScheduledTask) -> None:
            if not FailingOnce.failed:
                FailingOnce.failed = True
                await asyncio.sleep(0.3)  # the loser is waiting meanwhile
                raise ConnectionError("store went away")
            await super().add_schedule(schedule)

    def store() -> FailingOnce:
        return FailingOnce(redis_url, prefix=f"{prefix}-s", serializer=JSONSerializer())

    sources = [
        CompositeScheduleSource([store()], redis_url=redis_url, prefix=prefix) for _ in range(2)
    ]
    for source in sources:
        await source.startup()
    try:
        schedule = ScheduledTask(task_name=TASK, labels={}, args=[], kwargs={}, cron="0 9 * * *")
        results = await asyncio.gather(
            *(s.add_schedule(schedule.model_copy()) for s in sources), return_exceptions=True
        )
        assert sum(isinstance(r, ConnectionError) for r in results) == 1
        assert len(await sources[0].sources[0].get_schedules()) == 1  # the loser wrote it
    finally:
        for source in sources:
            await source.shutdown()
    assert await acquire_lock(redis, f"{prefix}:lock", "me", 10_000)
    assert await acquire_lock(redis, f"{prefix}:lock", "me", 10_000)  # a retry finds its own
    assert not await acquire_lock(redis, f"{prefix}:lock", "other", 10_000)


async def test_the_source_warns_of_an_evicting_redis_at_start_up(
    redis_servers: list[RedisServer], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(extra_args=["--maxmemory-policy", "volatile-lru"]).start()
    redis_servers.append(server)
    source = CompositeScheduleSource(
        [LabelScheduleSource(InMemoryBroker())], redis_url=server.url, prefix=prefix
    )
    with caplog.at_level(logging.WARNING, logger="taskiq_dedup"):
        await source.startup()
    await source.shutdown()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "volatile-lru" in warnings[0]
