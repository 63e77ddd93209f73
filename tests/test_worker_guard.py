"""The worker guard's protocols on a real redis-server: binds, claims, leases, settling.

Each test is named in a row of docs/DESIGN.md ("The worker-side protocols"); the ``regression`` ones
failed on the code before the two-phase binding, deadlines, one heartbeat loop,
stock-scheduler naming, bounded settling and start-up checks.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from redis.asyncio import Redis
from taskiq import AckableMessage, InMemoryBroker, TaskiqScheduler
from taskiq.exceptions import SendTaskError
from taskiq.kicker import AsyncKicker
from taskiq.message import TaskiqMessage
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import ListQueueBroker

from taskiq_dedup import DedupMiddleware, DedupReceiver, checks, skip
from taskiq_dedup.errors import DedupUnavailableError
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.labels import SCHEDULE_ID_LABEL, SLOT_LABEL
from taskiq_dedup.stats import DedupStats
from tests.reliability.proxy import LatencyProxy
from tests.support.clock import FakeClock
from tests.support.polling import eventually
from tests.support.redis_server import RedisServer
from tests.test_middleware import Brokers, deliver, firing, recorder, redis_now_ms


@pytest.fixture
async def brokers(redis_url: str, prefix: str) -> AsyncIterator[Brokers]:
    made = Brokers(redis_url, prefix)
    yield made
    for broker in made.made:
        await broker.shutdown()


def idem_key(prefix: str, task: str, value: str) -> str:
    return KeySpace(prefix).idempotency(task, value)


class FailingKicks:
    """Makes the next ``count`` sends of ``broker`` fail, as a broken connection would."""

    def __init__(self, broker: Any, count: int = 1) -> None:
        self.left = count
        self._kick = broker.kick
        broker.kick = self.kick

    async def kick(self, message: Any) -> None:
        if self.left > 0:
            self.left -= 1
            raise ConnectionError("the broker refused the message")
        await self._kick(message)


# ------------------------------------------------ idempotency bind (defect 1)


async def test_failed_send_leaves_the_key_to_a_later_kick(
    brokers: Brokers, redis: Redis, prefix: str
) -> None:
    """Regression: a kick that never reached the queue must not answer later kicks."""
    middleware = DedupMiddleware(redis=redis, prefix=prefix, pending_ttl=0.3)
    broker = brokers.queue(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="charge")
    FailingKicks(broker)
    with pytest.raises(SendTaskError):
        await task.kicker().with_labels(idempotency_key="order-1").kiq("first")
    key = idem_key(prefix, "charge", "order-1")
    assert await redis.hget(key, "phase") == b"pending"

    handle = await task.kicker().with_labels(idempotency_key="order-1").kiq("second")
    assert await redis.hget(key, "task_id") == handle.task_id.encode()
    assert await redis.hget(key, "phase") == b"sent"
    await deliver(broker, DedupReceiver(broker, max_async_tasks=10))
    assert (await handle.wait_result(timeout=5)).return_value == "second"
    assert calls == ["second"]
    assert middleware.stats == DedupStats(executed=1)


async def test_kick_while_the_first_is_pending_waits_for_its_confirmation(
    brokers: Brokers, redis: Redis, prefix: str
) -> None:
    """A later kick is an echo only once the first task is in the queue."""
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    broker = brokers.queue(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="charge")
    first = task.kicker().with_labels(idempotency_key="k")._prepare_message("first")
    first = await middleware.pre_send(first)  # bound, pending: not sent yet
    binds: list[str] = []
    bind = middleware._leases.bind

    async def counted_bind(key: str, task_id: str, **options: Any) -> Any:
        binding = await bind(key, task_id, **options)
        binds.append(binding.verdict)
        return binding

    middleware._leases.bind = counted_bind  # type: ignore[method-assign]
    second = asyncio.create_task(task.kicker().with_labels(idempotency_key="k").kiq("second"))
    key = idem_key(prefix, "charge", "k")
    await eventually(lambda: binds.count("wait") >= 2, 5)  # it asks again and again
    assert not second.done()
    assert await redis.llen(f"{prefix}:queue") == 0  # the second kick waits, sends nothing
    await broker.kick(broker.formatter.dumps(first))
    await middleware.post_send(first)
    handle = await asyncio.wait_for(second, 10)
    assert handle.task_id == first.task_id  # answered by the task that exists
    assert await redis.hget(key, "phase") == b"sent"
    receiver = DedupReceiver(broker, max_async_tasks=10)
    await deliver(broker, receiver, count=2)  # the first, then the echo
    assert calls == ["first"]
    assert (await handle.wait_result(timeout=5)).return_value == "first"
    assert middleware.stats == DedupStats(executed=1, idempotent_replays=1)


async def test_pending_kick_that_is_never_confirmed_gives_up_with_a_clear_error(
    brokers: Brokers, redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    middleware = DedupMiddleware(redis=redis, prefix=prefix, pending_ttl=0.2, redis_deadline=0.2)
    broker = brokers.queue(middleware)
    task = broker.register_task(recorder([]), task_name="charge")
    first = await middleware.pre_send(
        task.kicker().with_labels(idempotency_key="k")._prepare_message("first")
    )
    key = idem_key(prefix, "charge", "k")
    # A sender whose pending binding never lapses (its window is pushed forward).
    await redis.hset(key, "pending_until", str(await redis_now_ms(redis) + 3_600_000))
    with pytest.raises(DedupUnavailableError, match=first.task_id):
        await task.kicker().with_labels(idempotency_key="k").kiq("second")


async def test_confirm_after_another_kick_took_the_key_points_the_handle_at_it(
    brokers: Brokers, redis: Redis, prefix: str
) -> None:
    """A slow confirmation finds the key taken: the handle follows the task that answers."""
    middleware = DedupMiddleware(redis=redis, prefix=prefix, pending_ttl=0.2)
    broker = brokers.queue(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="charge")
    slow = await middleware.pre_send(
        task.kicker().with_labels(idempotency_key="k")._prepare_message("slow")
    )
    key = idem_key(prefix, "charge", "k")

    async def lapsed() -> bool:
        return await redis_now_ms(redis) > int(await redis.hget(key, "pending_until"))

    await eventually(lapsed, 5)
    later = await task.kicker().with_labels(idempotency_key="k").kiq("later")
    await broker.kick(broker.formatter.dumps(slow))  # the slow send lands after all
    await middleware.post_send(slow)
    assert slow.task_id == later.task_id
    await deliver(broker, DedupReceiver(broker, max_async_tasks=10), count=2)
    assert calls == ["later"]
    assert middleware.stats == DedupStats(executed=1, dropped_done=1)  # done by then


async def test_delivered_message_of_a_lapsed_pending_bind_takes_the_key(
    brokers: Brokers, redis: Redis, prefix: str
) -> None:
    """The sender died between the send and the confirmation; a later kick bound.

    The delivered message exists, so it runs; the later kick's confirmation
    then follows it.
    """
    middleware = DedupMiddleware(redis=redis, prefix=prefix, pending_ttl=0.2)
    broker = brokers.queue(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="charge")
    orphan = await middleware.pre_send(
        task.kicker().with_labels(idempotency_key="k")._prepare_message("orphan")
    )
    await broker.kick(broker.formatter.dumps(orphan))  # sent; its sender dies here
    key = idem_key(prefix, "charge", "k")

    async def lapsed() -> bool:
        return await redis_now_ms(redis) > int(await redis.hget(key, "pending_until"))

    await eventually(lapsed, 5)
    later = task.kicker().with_labels(idempotency_key="k")._prepare_message("later")
    later = await middleware.pre_send(later)
    assert not skip.is_skip(later)  # bound pending to the later kick
    await deliver(broker, DedupReceiver(broker, max_async_tasks=10))  # the orphan
    assert calls == ["orphan"]
    await broker.kick(broker.formatter.dumps(later))
    await middleware.post_send(later)
    assert later.task_id == orphan.task_id
    await deliver(broker, DedupReceiver(broker, max_async_tasks=10))
    assert calls == ["orphan"]
    assert middleware.stats == DedupStats(executed=1, dropped_done=1)  # done by then


async def test_lost_run_on_a_list_queue_is_run_by_a_later_kick(
    brokers: Brokers, redis: Redis, prefix: str
) -> None:
    """Regression: a ListQueueBroker worker died mid-task; echoes never re-ran it."""
    dead = DedupMiddleware(redis=redis, prefix=prefix, lease_ttl=0.2)
    dead_broker = brokers.queue(dead)
    dead_broker.register_task(recorder([]), task_name="charge")
    await AsyncKicker("charge", dead_broker, {"idempotency_key": "k"}).kiq("lost")
    messages = dead_broker.listen()
    raw = await anext(messages)
    await messages.aclose()
    claimed = await dead.pre_execute(dead_broker.formatter.loads(raw))
    assert not skip.is_skip(claimed)
    del claimed  # the worker dies: nothing renews the lease
    key = idem_key(prefix, "charge", "k")

    async def lapsed() -> bool:
        return await redis_now_ms(redis) > int(await redis.hget(key, "lease_until"))

    await eventually(lapsed, 5)
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    broker = brokers.queue(middleware)
    calls: list[Any] = []
    broker.register_task(recorder(calls), task_name="charge")
    handle = await AsyncKicker("charge", broker, {"idempotency_key": "k"}).kiq("again")
    await deliver(broker, DedupReceiver(broker, max_async_tasks=10))
    assert calls == ["again"]
    assert (await handle.wait_result(timeout=5)).return_value == "again"


async def test_lost_run_on_a_redelivering_broker_is_answered_by_its_redelivery(
    redis: Redis, prefix: str
) -> None:
    """A stream broker redelivers the dead worker's message: later kicks stay echoes."""
    middleware = DedupMiddleware(redis=redis, prefix=prefix, lease_ttl=0.2, rerun_lost=False)
    message = TaskiqMessage(
        task_id="t-1", task_name="charge", labels={"idempotency_key": "k"}, args=[], kwargs={}
    )
    assert await middleware.pre_send(message) is message
    await middleware.post_send(message)
    claimed = await middleware.pre_execute(message)
    assert claimed is message
    del claimed, message
    key = idem_key(prefix, "charge", "k")

    async def lapsed() -> bool:
        return await redis_now_ms(redis) > int(await redis.hget(key, "lease_until"))

    await eventually(lapsed, 5)
    later = TaskiqMessage(
        task_id="t-2", task_name="charge", labels={"idempotency_key": "k"}, args=[], kwargs={}
    )
    echo = await middleware.pre_send(later)
    assert skip.is_skip(echo)
    assert echo.task_id == "t-1"


async def test_lost_bind_and_confirm_replies_are_recognised_on_retry(
    own_redis: RedisServer, prefix: str
) -> None:
    """A retried bind or confirm whose first reply was lost finds its own attempt."""
    proxy = LatencyProxy(own_redis.port).start()
    client = Redis.from_url(proxy.url, socket_timeout=0.5)
    try:
        middleware = DedupMiddleware(redis=client, prefix=prefix)
        message = TaskiqMessage(
            task_id="t-1", task_name="charge", labels={"idempotency_key": "k"}, args=[], kwargs={}
        )
        proxy.drop_next_reply()
        assert await middleware.pre_send(message) is message  # bound, reply lost, retried
        proxy.drop_next_reply()
        await middleware.post_send(message)  # confirmed, reply lost, retried
        assert message.task_id == "t-1"
        assert middleware.stats == DedupStats()
        key = idem_key(prefix, "charge", "k")
        direct = Redis.from_url(own_redis.url)
        assert await direct.hmget(key, "task_id", "phase") == [b"t-1", b"sent"]
        await direct.aclose()
    finally:
        await client.aclose()
        proxy.close()


async def test_confirm_rebinds_a_key_lost_with_redis_data(
    brokers: Brokers, redis: Redis, prefix: str
) -> None:
    """Redis restarted without persistence between bind and confirm: the sent kick binds."""
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    broker = brokers.queue(middleware)
    task = broker.register_task(recorder([]), task_name="charge")
    message = await middleware.pre_send(
        task.kicker().with_labels(idempotency_key="k")._prepare_message("x")
    )
    key = idem_key(prefix, "charge", "k")
    await redis.delete(key)  # the data went with the restart
    await middleware.post_send(message)
    assert await redis.hmget(key, "task_id", "phase") == [message.task_id.encode(), b"sent"]


# -------------------------------------------------- claims and finishes


async def test_lost_claim_and_finish_replies_are_recognised_on_retry(
    own_redis: RedisServer, prefix: str
) -> None:
    """A claim or finish retried after its reply was lost counts as its own attempt."""
    proxy = LatencyProxy(own_redis.port).start()
    client = Redis.from_url(proxy.url, socket_timeout=0.5)
    direct = Redis.from_url(own_redis.url)
    try:
        middleware = DedupMiddleware(redis=client, prefix=prefix)
        message = TaskiqMessage(
            task_id="t", task_name="report", labels=firing(), args=[], kwargs={}
        )
        proxy.drop_next_reply()
        assert await middleware.pre_execute(message) is message  # claimed, not "running"
        proxy.drop_next_reply()
        await middleware.post_execute(message, None)  # type: ignore[arg-type]
        assert middleware.stats == DedupStats(executed=1)  # no lease reported lost
        key = KeySpace(prefix).firing("nightly", 1_700_000_000)
        assert await direct.hmget(key, "state", "attempts") == [b"done", b"1"]
    finally:
        await client.aclose()
        await direct.aclose()
        proxy.close()


async def test_kick_arriving_while_another_kick_of_its_key_runs_is_dropped(
    redis: Redis, prefix: str
) -> None:
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    labels = {"idempotency_key": "k"}
    first = TaskiqMessage(task_id="t-1", task_name="charge", labels=labels, args=[], kwargs={})
    other = TaskiqMessage(task_id="t-2", task_name="charge", labels=labels, args=[], kwargs={})
    assert await middleware.pre_send(first) is first
    await middleware.post_send(first)
    assert await middleware.pre_execute(first) is first
    dropped = await middleware.pre_execute(other)  # a copy sent outside pre_send
    assert dropped.labels[skip.SKIP_LABEL] == "duplicate"
    await middleware.post_execute(first, None)  # type: ignore[arg-type]
    assert middleware.stats == DedupStats(executed=1, dropped_other_kick=1)
    await middleware.shutdown()


# ------------------------------------------------------- deadlines (defect 2)


@pytest.fixture
def stopped(own_redis: RedisServer) -> Iterator[RedisServer]:
    """``own_redis``, hung (SIGSTOP) for the test: connections open, nothing answers."""
    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)
    try:
        yield own_redis
    finally:
        if own_redis.process is not None:
            own_redis.process.send_signal(signal.SIGCONT)


async def test_claim_against_a_hung_redis_ends_at_its_deadline(
    stopped: RedisServer, prefix: str
) -> None:
    """Regression: 5 s socket timeout x the client's retries made ~20 s per message."""
    middleware = DedupMiddleware(redis_url=stopped.url, prefix=prefix)
    message = TaskiqMessage(task_id="t", task_name="report", labels=firing(), args=[], kwargs={})
    try:
        # The default deadline is 5 s; the old code needed about 20 s here.
        skipped = await asyncio.wait_for(middleware.pre_execute(message), 12)
    finally:
        await middleware.shutdown()
    assert skip.is_skip(skipped)
    assert skipped.labels[skip.SKIP_LABEL] == "unavailable"
    assert middleware.stats == DedupStats(redis_errors=1)


async def test_renewal_is_retried_within_the_lease_when_replies_are_lost(
    own_redis: RedisServer, prefix: str
) -> None:
    """A renewal whose reply is lost is tried again at once, not a period later."""
    proxy = LatencyProxy(own_redis.port).start()
    client = Redis.from_url(proxy.url, socket_timeout=0.3)
    direct = Redis.from_url(own_redis.url)
    middleware = DedupMiddleware(redis=client, prefix=prefix, lease_ttl=1.5)
    message = TaskiqMessage(task_id="t", task_name="report", labels=firing(), args=[], kwargs={})
    try:
        assert await middleware.pre_execute(message) is message
        key = KeySpace(prefix).firing("nightly", 1_700_000_000)
        first = int(await direct.hget(key, "lease_until"))
        proxy.drop_next_reply()  # the first renewal's reply

        async def renewed_twice() -> bool:
            return int(await direct.hget(key, "lease_until")) > first + 900

        await eventually(renewed_twice, 5)
        assert await redis_now_ms(direct) < int(await direct.hget(key, "lease_until"))
        await middleware.post_execute(message, None)  # type: ignore[arg-type]
        assert middleware.stats == DedupStats(executed=1)
        assert await direct.hget(key, "state") == b"done"
    finally:
        await middleware.shutdown()
        await client.aclose()
        await direct.aclose()
        proxy.close()


async def test_renewal_after_a_blocked_event_loop_still_tries(redis: Redis, prefix: str) -> None:
    """A round that starts after the lease's end (the loop was blocked) still renews."""
    middleware = DedupMiddleware(redis=redis, prefix=prefix, lease_ttl=60.0)
    message = TaskiqMessage(task_id="t", task_name="report", labels=firing(), args=[], kwargs={})
    assert await middleware.pre_execute(message) is message
    hold = middleware._holds.get(message)
    assert hold is not None
    hold.renewed_at -= 3600  # as if the loop had been blocked for an hour
    key = KeySpace(prefix).firing("nightly", 1_700_000_000)
    await redis.hset(key, "lease_until", "0")  # and the lease had lapsed, untaken
    await middleware._holds.renew()
    assert int(await redis.hget(key, "lease_until")) > await redis_now_ms(redis)
    assert middleware.stats == DedupStats(executed=1)
    await middleware.post_execute(message, None)  # type: ignore[arg-type]
    assert await redis.hget(key, "state") == b"done"
    await middleware.shutdown()


# ------------------------------------------------- bounded memory (defect 3)


async def test_thousands_of_inline_runs_leave_no_callbacks_or_holds(
    redis: Redis, prefix: str
) -> None:
    """Regression: each inline run added a done-callback to the long-lived task."""
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    broker = InMemoryBroker(await_inplace=True).with_middlewares(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="report")
    await broker.startup()
    runs = 2000

    async def kick_all() -> tuple[int, int]:
        current = asyncio.current_task()
        before = len(getattr(current, "_callbacks", None) or [])
        for slot in range(runs):
            await task.kicker().with_labels(**firing(slot=slot)).kiq(slot)
        return before, len(getattr(current, "_callbacks", None) or [])

    # A pure-Python task shows its done-callbacks (the awaiting test's wake-up is one).
    py_task = asyncio.tasks._PyTask(kick_all())  # type: ignore[attr-defined]
    before, after = await py_task
    await broker.shutdown()
    assert len(calls) == runs
    assert after == before
    assert middleware.held == 0
    assert middleware._holds._loop is None or middleware._holds._loop.done()
    assert middleware.stats == DedupStats(executed=runs)


async def test_one_heartbeat_loop_renews_every_hold_in_one_round(redis: Redis, prefix: str) -> None:
    middleware = DedupMiddleware(redis=redis, prefix=prefix, lease_ttl=0.6)
    messages = [
        TaskiqMessage(task_id=f"t{i}", task_name="r", labels=firing(slot=i), args=[], kwargs={})
        for i in range(50)
    ]
    for message in messages:
        assert await middleware.pre_execute(message) is message
    tasks_before = {t.get_name() for t in asyncio.all_tasks()}
    assert sum(name == "taskiq-dedup-heartbeat" for name in tasks_before) == 1
    keys = [KeySpace(prefix).firing("nightly", i) for i in range(50)]
    firsts = [int(await redis.hget(key, "lease_until")) for key in keys]

    async def all_renewed() -> bool:
        values = [int(await redis.hget(key, "lease_until")) for key in keys]
        return all(value > first for value, first in zip(values, firsts, strict=True))

    await eventually(all_renewed, 5)
    for message in messages:
        await middleware.post_execute(message, None)  # type: ignore[arg-type]
    assert middleware.held == 0
    loop = middleware._holds._loop
    assert loop is not None
    await eventually(loop.done, 5)  # the loop ends when nothing is held
    await middleware.shutdown()


# ------------------------------------------- stock schedulers (defect 4)


async def test_two_stock_schedulers_fire_a_decorator_cron_once(
    redis_url: str, redis: Redis, prefix: str
) -> None:
    """Regression: LabelScheduleSource's random ids made every replica's copy run."""
    clock = FakeClock(datetime(2026, 3, 10, 12, 0, 0, 300_000, tzinfo=timezone.utc))
    queue = f"{prefix}:queue"
    calls: list[Any] = []
    schedulers = []
    for _ in range(2):
        broker = ListQueueBroker(redis_url, queue_name=queue).with_middlewares(
            DedupMiddleware(redis=redis, prefix=prefix, clock=clock)
        )
        broker.register_task(
            recorder(calls),
            task_name="report",
            schedule=[{"cron": "* * * * *", "args": ["a"]}, {"cron": "*/5 * * * *", "args": ["b"]}],
        )
        source = LabelScheduleSource(broker)
        await source.startup()
        schedulers.append((TaskiqScheduler(broker, sources=[source]), source, broker))
    ids = set()
    for scheduler, source, _ in schedulers:
        for schedule in await source.get_schedules():
            ids.add(schedule.schedule_id)
            await scheduler.on_ready(source, schedule)  # what the stock loop does at 12:00
    assert len(ids) == 4  # random per process, as taskiq makes them
    worker = schedulers[0][2]
    await deliver(worker, DedupReceiver(worker, max_async_tasks=10), count=4)
    assert sorted(calls) == ["a", "b"]
    for _, _, broker in schedulers:
        await broker.shutdown()


async def test_stock_firing_gets_the_composite_sources_id_and_slot(
    redis: Redis, prefix: str
) -> None:
    clock = FakeClock(datetime(2026, 3, 10, 12, 0, 1, tzinfo=timezone.utc))
    middleware = DedupMiddleware(redis=redis, prefix=prefix, clock=clock)
    broker = InMemoryBroker().with_middlewares(middleware)
    broker.register_task(recorder([]), task_name="report", schedule=[{"interval": 60}])
    source = LabelScheduleSource(broker)
    await source.startup()
    [schedule] = await source.get_schedules()
    from taskiq_dedup import schedule_id_for  # noqa: PLC0415

    message = (
        AsyncKicker("report", broker, schedule.labels)
        .with_labels(schedule_id=schedule.schedule_id)
        ._prepare_message()
    )
    named = await middleware.pre_send(message)
    assert named.labels[SCHEDULE_ID_LABEL] == schedule_id_for(schedule)
    assert named.labels[SLOT_LABEL] == str(int(clock.now.timestamp()) // 60 * 60)


async def test_unmatched_stock_firing_warns_once_and_keeps_the_senders_second(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(datetime(2026, 3, 10, 12, 0, 1, tzinfo=timezone.utc))
    middleware = DedupMiddleware(redis=redis, prefix=prefix, clock=clock)
    broker = InMemoryBroker().with_middlewares(middleware)
    broker.register_task(
        recorder([]),
        task_name="report",
        schedule=[{"interval": 60, "args": [1]}, {"interval": 120, "args": [1]}],
    )
    for _ in range(3):
        message = AsyncKicker("report", broker, {"schedule_id": "abc"})._prepare_message(1)
        named = await middleware.pre_send(message)
        assert named.labels[SCHEDULE_ID_LABEL] == "abc"
        assert named.labels[SLOT_LABEL] == str(int(clock.now.timestamp()))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "several decorator schedules" in warnings[0]
    assert "report" in warnings[0]


async def test_scheduler_start_up_names_tasks_whose_schedules_cannot_be_told_apart(
    redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    broker = InMemoryBroker().with_middlewares(middleware)
    broker.is_worker_process = False  # a scheduler
    both = [{"interval": 60, "args": [1]}, {"cron": "* * * * *", "args": [1]}]
    broker.register_task(recorder([]), task_name="clash", schedule=both)
    broker.register_task(
        recorder([]),
        task_name="pinned",
        schedule=[{**entry, "labels": {"dedup_id": f"p{i}"}} for i, entry in enumerate(both)],
    )
    broker.register_task(
        recorder([]),
        task_name="crons",
        schedule=[{"cron": "0 * * * *", "args": [1]}, {"cron": "30 * * * *", "args": [1]}],
    )
    await middleware.startup()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "clash" in warnings[0]


async def test_dedup_id_label_tells_stock_firings_apart(redis: Redis, prefix: str) -> None:
    clock = FakeClock(datetime(2026, 3, 10, 12, 0, 1, tzinfo=timezone.utc))
    middleware = DedupMiddleware(redis=redis, prefix=prefix, clock=clock)
    broker = InMemoryBroker().with_middlewares(middleware)
    broker.register_task(
        recorder([]),
        task_name="report",
        schedule=[
            {"interval": 60, "args": [1], "labels": {"dedup_id": "minutely"}},
            {"interval": 120, "args": [1], "labels": {"dedup_id": "two-minutely"}},
        ],
    )
    source = LabelScheduleSource(broker)
    await source.startup()
    for schedule in await source.get_schedules():
        message = (
            AsyncKicker("report", broker, schedule.labels)
            .with_labels(schedule_id=schedule.schedule_id)
            ._prepare_message(1)
        )
        named = await middleware.pre_send(message)
        # A pin is scoped to its task (docs/DESIGN.md, "Identity").
        assert named.labels[SCHEDULE_ID_LABEL] == f"{schedule.labels['dedup_id']}@report"
        assert named.labels[SLOT_LABEL] == str(int(clock.now.timestamp()) // 60 * 60)


# ------------------------------------------------- settling (defect 5)


class AckingQueue(ListQueueBroker):
    """A list queue whose deliveries must be acknowledged, as an AMQP broker's are.

    Unacknowledged deliveries are counted in ``unacked``: on AMQP each holds a
    prefetch slot until it is settled.
    """

    unacked: set[str]

    async def listen(self) -> AsyncGenerator[AckableMessage, None]:  # type: ignore[override]
        self.unacked = set()
        async for data in super().listen():
            tag = uuid.uuid4().hex
            self.unacked.add(tag)

            async def ack(tag: str = tag) -> None:
                self.unacked.discard(tag)

            yield AckableMessage(data=data, ack=ack)


@pytest.mark.parametrize("receiver_cls", [DedupReceiver, None], ids=["dedup", "stock"])
async def test_every_delivery_is_settled_on_an_acking_broker(
    *,
    receiver_cls: Any,
    redis_url: str,
    redis: Redis,
    prefix: str,
    own_redis: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: "deferred" and "unavailable" skips stayed unacknowledged forever."""
    from taskiq.receiver import Receiver  # noqa: PLC0415

    monkeypatch.setattr(skip, "REQUEUE_DELAY", 0.01)
    receiver_type = receiver_cls or Receiver
    queue = f"{prefix}:acking"
    broker = AckingQueue(redis_url, queue_name=queue)
    down = Redis.from_url(own_redis.url, socket_connect_timeout=0.2)
    own_redis.kill()
    middleware = DedupMiddleware(redis=down, prefix=prefix, redis_deadline=0.3)
    broker = broker.with_middlewares(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="report")
    receiver = receiver_type(broker, max_async_tasks=10)
    await task.kicker().with_labels(**firing()).kiq("x")
    messages = broker.listen()
    await receiver.callback(await anext(messages))  # Redis down: "unavailable"
    assert broker.unacked == set()  # settled: acknowledged ...
    assert await redis.llen(queue) == 1  # ... once it was back in the queue
    assert calls == []
    await messages.aclose()
    await down.aclose()
    await broker.shutdown()


async def test_copy_of_a_running_holders_task_is_settled_on_an_acking_broker(
    redis_url: str, redis: Redis, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(skip, "REQUEUE_DELAY", 0.01)
    queue = f"{prefix}:acking"
    # stands for an acking broker that redelivers (AMQP): leased, as there
    middleware = DedupMiddleware(redis=redis, prefix=prefix, record_finish=True)
    broker = AckingQueue(redis_url, queue_name=queue).with_middlewares(middleware)
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def long_job(value: str) -> str:
        started.set()
        await release.wait()
        calls.append(value)
        return value

    broker.register_task(long_job, task_name="long_job")
    message = TaskiqMessage(
        task_id="same", task_name="long_job", labels=firing(), args=["x"], kwargs={}
    )
    await broker.kick(broker.formatter.dumps(message))
    await broker.kick(broker.formatter.dumps(message))
    receiver = DedupReceiver(broker, max_async_tasks=10)
    messages = broker.listen()
    running = asyncio.create_task(receiver.callback(await anext(messages)))
    await asyncio.wait_for(started.wait(), 5)
    await receiver.callback(await anext(messages))  # the copy: pushed back, acked
    assert len(broker.unacked) == 1  # only the holder's delivery
    assert await redis.llen(queue) == 1
    release.set()
    await asyncio.wait_for(running, 5)
    await receiver.callback(await anext(messages))  # the copy again: the key is done
    await messages.aclose()
    assert broker.unacked == set()
    assert calls == ["x"]
    assert middleware.stats == DedupStats(executed=1, dropped_running=1, dropped_done=1)
    await broker.shutdown()


# ---------------------------------------------------- start-up checks (6)


async def test_eviction_policy_that_evicts_claims_is_reported(
    redis_servers: list[RedisServer], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(extra_args=["--maxmemory-policy", "allkeys-lru"]).start()
    redis_servers.append(server)
    client = Redis.from_url(server.url)
    try:
        middleware = DedupMiddleware(redis=client, prefix=prefix)
        broker = InMemoryBroker().with_middlewares(middleware)
        await broker.startup()
        await broker.startup()  # checked once
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "allkeys-lru" in warnings[0]
        assert "noeviction" in warnings[0]
        await broker.shutdown()
    finally:
        await client.aclose()


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-ttl", "allkeys-random"])
async def test_check_server_names_every_evicting_policy(
    redis_servers: list[RedisServer], policy: str
) -> None:
    server = RedisServer(extra_args=["--maxmemory-policy", policy]).start()
    redis_servers.append(server)
    client = Redis.from_url(server.url)
    try:
        [problem] = await checks.check_server(client, logging.getLogger("test"))
        assert policy in problem
    finally:
        await client.aclose()


async def test_check_server_passes_noeviction_and_reports_an_old_version(
    own_redis: RedisServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    redis = Redis.from_url(own_redis.url)
    try:
        await redis.config_set("maxmemory-policy", "noeviction")
        assert await checks.check_server(redis, logging.getLogger("test")) == []
        version = (await redis.info("server"))["redis_version"]
        monkeypatch.setattr(checks, "MIN_REDIS_VERSION", (99, 0))
        [problem] = await checks.check_server(redis, logging.getLogger("test"))
    finally:
        await redis.aclose()
    assert version in problem
    assert "99.0" in problem
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [problem]


async def test_check_server_of_an_unreachable_redis_is_one_warning(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = Redis.from_url(own_redis.url, socket_connect_timeout=0.2)
    own_redis.kill()
    try:
        [problem] = await checks.check_server(client, logging.getLogger("test"))
    finally:
        await client.aclose()
    assert "could not check" in problem
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [problem]
