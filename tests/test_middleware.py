"""DedupMiddleware in one process: real brokers and receivers on the private Redis."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Annotated, Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError
from taskiq import (
    AckableMessage,
    AsyncBroker,
    Context,
    InMemoryBroker,
    SimpleRetryMiddleware,
    SmartRetryMiddleware,
    TaskiqDepends,
)
from taskiq.kicker import AsyncKicker
from taskiq.message import TaskiqMessage
from taskiq.receiver import Receiver
from taskiq.schedule_sources import LabelScheduleSource
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend, RedisStreamBroker

from taskiq_dedup import DedupMiddleware, DedupReceiver, skip
from taskiq_dedup.errors import ConfigurationError, DedupUnavailableError, TaskiqDedupError
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.labels import CLAIM_TOKEN_LABEL
from taskiq_dedup.log_fields import FIELDS
from taskiq_dedup.stats import DedupStats
from tests.support.clock import FakeClock
from tests.support.polling import eventually
from tests.support.redis_server import RedisServer
from tests.support.redis_time import redis_now_ms

MIDDLEWARE_LOG = "taskiq_dedup.middleware"
DOWN_DEADLINE = 0.5  # against a stopped server every try fails at once: give up soon
GROUP = "taskiq"  # RedisStreamBroker's default consumer group
RECEIVERS = pytest.mark.parametrize(
    "receiver_cls", [Receiver, DedupReceiver], ids=["stock", "dedup"]
)


def firing(schedule_id: str = "nightly", slot: int = 1_700_000_000) -> dict[str, Any]:
    return {"schedule_id": schedule_id, "dedup_slot": slot}


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


def infos(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == MIDDLEWARE_LOG and r.levelno == logging.INFO
    ]


class Brokers:
    """Builds brokers on the test's queues and shuts every one down afterwards."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.made: list[AsyncBroker] = []

    def _finish(self, broker: AsyncBroker, middlewares: tuple[Any, ...]) -> AsyncBroker:
        backend = RedisAsyncResultBackend(self.redis_url, prefix_str=f"{self.prefix}:results")
        broker = broker.with_result_backend(backend).with_middlewares(*middlewares)
        self.made.append(broker)
        return broker

    def queue(self, *middlewares: Any, name: str = "queue") -> AsyncBroker:
        queue = f"{self.prefix}:{name}"
        return self._finish(ListQueueBroker(self.redis_url, queue_name=queue), middlewares)

    def stream(self, *middlewares: Any) -> AsyncBroker:
        broker = RedisStreamBroker(
            self.redis_url,
            queue_name=self.stream_name,
            consumer_id="0",
            idle_timeout=600_000,  # redelivery is done by hand (see reclaim)
            xread_block=100,
        )
        return self._finish(broker, middlewares)

    @property
    def stream_name(self) -> str:
        return f"{self.prefix}:stream"


@pytest.fixture
async def brokers(redis_url: str, prefix: str) -> AsyncIterator[Brokers]:
    made = Brokers(redis_url, prefix)
    yield made
    for broker in made.made:
        await broker.shutdown()


@pytest.fixture
def middleware(redis: Redis, prefix: str) -> DedupMiddleware:
    return DedupMiddleware(redis=redis, prefix=prefix)


async def deliver(broker: AsyncBroker, receiver: Receiver, count: int = 1) -> None:
    """Take ``count`` messages from the broker and run each through ``receiver``."""
    messages = broker.listen()
    try:
        for _ in range(count):
            await receiver.callback(await asyncio.wait_for(anext(messages), 5))
    finally:
        await messages.aclose()


def recorder(calls: list[Any]) -> Callable[..., Any]:
    async def record(value: Any) -> Any:
        calls.append(value)
        return value

    return record


async def pending(redis: Redis, stream: str) -> int:
    return int((await redis.xpending(stream, GROUP))["pending"])


async def reclaim(redis: Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """What the broker's redelivery does (XAUTOCLAIM), without waiting for idle time."""
    reply = await redis.xautoclaim(stream, GROUP, "redelivery", min_idle_time=0)
    return list(reply[1])


# ------------------------------------------------------------------ options


@pytest.mark.parametrize(
    "options",
    [
        {"lease_ttl": 0},
        {"lease_ttl": -1},
        {"lease_ttl": math.inf},
        {"done_ttl": 0},
        {"idempotency_ttl": -5},
        {"done_ttl": 10, "lease_ttl": 10},
        {"on_redis_error": "maybe"},
        {"record_finish": "yes"},
        {"rerun_lost": 1},
        {"prefix": ""},
        {"prefix": "a b"},
        {"prefix": "p*"},
    ],
)
def test_bad_options_are_rejected(redis: Redis, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError) as info:
        DedupMiddleware(redis=redis, **options)
    assert isinstance(info.value, TaskiqDedupError)


def test_exactly_one_redis_option(redis: Redis, redis_url: str) -> None:
    with pytest.raises(ConfigurationError):
        DedupMiddleware()
    with pytest.raises(ConfigurationError):
        DedupMiddleware(redis=redis, redis_url=redis_url)


def test_lease_must_be_well_below_the_stream_redelivery_timeout(redis: Redis) -> None:
    short = RedisStreamBroker("redis://127.0.0.1:1/0", idle_timeout=1_500)
    with pytest.raises(ConfigurationError, match="idle_timeout"):
        short.with_middlewares(DedupMiddleware(redis=redis, lease_ttl=1.0))
    fits = RedisStreamBroker("redis://127.0.0.1:1/0", idle_timeout=2_000)
    fits.with_middlewares(DedupMiddleware(redis=redis, lease_ttl=1.0))
    # The defaults: a 60 s lease against the broker's 600 s.
    RedisStreamBroker("redis://127.0.0.1:1/0").with_middlewares(DedupMiddleware(redis=redis))


def test_skip_task_belongs_to_the_broker(redis: Redis) -> None:
    broker = InMemoryBroker()
    assert skip.SKIP_TASK_NAME not in broker.receiver.known_tasks
    broker.with_middlewares(DedupMiddleware(redis=redis))
    assert skip.SKIP_TASK_NAME in broker.receiver.known_tasks
    assert broker.find_task(skip.SKIP_TASK_NAME).broker is broker  # type: ignore[union-attr]
    assert skip.SKIP_TASK_NAME not in InMemoryBroker().get_all_tasks()  # not global


async def test_label_source_does_not_warn_about_the_skip_task(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    broker = InMemoryBroker().with_middlewares(DedupMiddleware(redis=redis))
    await LabelScheduleSource(broker).startup()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------- which messages


async def test_plain_messages_make_no_redis_calls(
    own_redis: RedisServer, brokers: Brokers, prefix: str
) -> None:
    dedup_redis = Redis.from_url(own_redis.url)
    try:
        broker = brokers.queue(DedupMiddleware(redis=dedup_redis, prefix=prefix))
        calls: list[Any] = []
        task = broker.register_task(recorder(calls), task_name="plain")
        receiver = DedupReceiver(broker, max_async_tasks=10)

        async def commands() -> dict[str, int]:
            stats = await dedup_redis.info("commandstats")
            return {k: v["calls"] for k, v in stats.items() if k != "cmdstat_info"}

        before = await commands()
        await task.kiq(1)
        await deliver(broker, receiver)
        assert calls == [1]
        assert await commands() == before

        # The same path with a schedule's labels does talk to this server.
        await task.kicker().with_labels(**firing()).kiq(2)
        await deliver(broker, receiver)
        assert calls == [1, 2]
        assert await commands() != before
    finally:
        await dedup_redis.aclose()


async def test_scheduled_message_without_slot_gets_the_senders_second(
    brokers: Brokers, redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock(datetime(2026, 3, 10, 12, 0, 0, 200_000, tzinfo=timezone.utc))
    broker = brokers.queue(DedupMiddleware(redis=redis, prefix=prefix, clock=clock))
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="cron_job")
    receiver = DedupReceiver(broker, max_async_tasks=10)
    second = math.floor(clock.now.timestamp())

    first = await task.kicker().with_labels(schedule_id="cron-1").kiq("replica-a")
    clock.advance(seconds=0.7)  # another replica's tick, later in the same second
    await task.kicker().with_labels(schedule_id="cron-1").kiq("replica-b")
    clock.advance(seconds=60)  # the next minute's firing
    await task.kicker().with_labels(schedule_id="cron-1").kiq("next-minute")
    await deliver(broker, receiver, 3)

    assert calls == ["replica-a", "next-minute"]
    assert (await first.wait_result(timeout=5)).return_value == "replica-a"
    assert await redis.exists(KeySpace(prefix).firing("cron-1", second))
    assert await redis.exists(KeySpace(prefix).firing("cron-1", second + 60))
    assert len(infos(caplog)) == 1


# ------------------------------------------------------------ duplicates


@RECEIVERS
async def test_second_copy_of_a_firing_is_dropped_quietly(
    receiver_cls: type[Receiver],
    brokers: Brokers,
    middleware: DedupMiddleware,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    broker = brokers.queue(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="report")
    receiver = receiver_cls(broker, max_async_tasks=10)

    first = await task.kicker().with_labels(**firing()).kiq("first")
    second = await task.kicker().with_labels(**firing()).kiq("second")
    await deliver(broker, receiver, 2)

    assert calls == ["first"]
    assert (await first.wait_result(timeout=5)).return_value == "first"
    assert not await second.is_ready()  # no result is written for a dropped copy
    assert middleware.stats == DedupStats(executed=1, dropped_done=1)
    key = KeySpace(prefix).firing("nightly", 1_700_000_000)
    [line] = infos(caplog)
    assert key in line
    assert first.task_id in line  # the holder
    assert "started" in line  # a list queue cannot redeliver: claimed once, never finished
    [record] = [r for r in caplog.records if r.getMessage() == line]
    fields = {name: getattr(record, name) for name in FIELDS}
    assert fields == {
        "schedule_id": "nightly",
        "slot": 1_700_000_000,
        "key": key,
        "holder": first.task_id,
    }
    assert errors(caplog) == []
    skipped_warnings = [r for r in caplog.records if "skipped setting result" in r.getMessage()]
    # The stock receiver's one trade-off: taskiq's own WARNING for the skip.
    assert len(skipped_warnings) == (1 if receiver_cls is Receiver else 0)


@RECEIVERS
async def test_copy_arriving_while_the_first_runs_is_dropped_and_acked(
    receiver_cls: type[Receiver],
    brokers: Brokers,
    middleware: DedupMiddleware,
    redis: Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    broker = brokers.stream(middleware)
    await broker.startup()
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[Any] = []

    async def long_job(value: str) -> str:
        started.set()
        await release.wait()
        calls.append(value)
        return value

    task = broker.register_task(long_job, task_name="long_job")
    receiver = receiver_cls(broker, max_async_tasks=10)
    first = await task.kicker().with_labels(**firing()).kiq("first")
    await task.kicker().with_labels(**firing()).kiq("second")

    messages = broker.listen()
    running = asyncio.create_task(receiver.callback(await anext(messages)))
    await asyncio.wait_for(started.wait(), 5)
    await receiver.callback(await anext(messages))  # the copy, while the first runs
    await messages.aclose()

    assert await pending(redis, brokers.stream_name) == 1  # only the holder's message
    assert middleware.stats.dropped_running == 1
    [line] = infos(caplog)
    assert "running" in line
    assert first.task_id in line
    release.set()
    await asyncio.wait_for(running, 5)
    assert calls == ["first"]
    assert await pending(redis, brokers.stream_name) == 0
    assert middleware.stats == DedupStats(executed=1, dropped_running=1)
    assert errors(caplog) == []


async def test_redelivered_copy_of_a_running_message_waits_for_a_later_delivery(
    brokers: Brokers, middleware: DedupMiddleware, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The holder's own message handed out again must not be acked under it."""
    caplog.set_level(logging.INFO)
    broker = brokers.stream(middleware)
    await broker.startup()
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[Any] = []

    async def long_job(value: str) -> str:
        started.set()
        await release.wait()
        calls.append(value)
        return value

    broker.register_task(long_job, task_name="long_job")
    message = TaskiqMessage(
        task_id=uuid.uuid4().hex, task_name="long_job", labels=firing(), args=["x"], kwargs={}
    )
    await broker.kick(broker.formatter.dumps(message))
    await broker.kick(broker.formatter.dumps(message))  # same task id: indistinguishable
    receiver = DedupReceiver(broker, max_async_tasks=10)

    messages = broker.listen()
    running = asyncio.create_task(receiver.callback(await anext(messages)))
    await asyncio.wait_for(started.wait(), 5)
    await receiver.callback(await anext(messages))
    await messages.aclose()
    assert await pending(redis, brokers.stream_name) == 2
    assert "not acknowledged now" in infos(caplog)[0]

    release.set()
    await asyncio.wait_for(running, 5)
    assert await pending(redis, brokers.stream_name) == 1
    # The broker's redelivery (XAUTOCLAIM) finds the key done and acks it.
    [(entry_id, fields)] = await reclaim(redis, brokers.stream_name)
    stream = brokers.stream_name
    await receiver.callback(
        AckableMessage(data=fields[b"data"], ack=lambda: redis.xack(stream, GROUP, entry_id))
    )
    assert calls == ["x"]
    assert await pending(redis, brokers.stream_name) == 0
    assert middleware.stats == DedupStats(executed=1, dropped_running=1, dropped_done=1)


async def test_prefixes_are_isolated(brokers: Brokers, redis: Redis, prefix: str) -> None:
    a = DedupMiddleware(redis=redis, prefix=f"{prefix}:a")
    b = DedupMiddleware(redis=redis, prefix=f"{prefix}:b")
    calls: list[Any] = []
    for name, middleware in (("a", a), ("b", b)):
        broker = brokers.queue(middleware, name=name)
        task = broker.register_task(recorder(calls), task_name=f"job_{name}")
        await task.kicker().with_labels(**firing()).kiq(name)
        await task.kicker().with_labels(**firing()).kiq(name)
        await deliver(broker, DedupReceiver(broker, max_async_tasks=10), 2)

    assert calls == ["a", "b"]
    assert a.stats == b.stats == DedupStats(executed=1, dropped_done=1)
    keys_a = [k async for k in redis.scan_iter(match=f"{prefix}:a:*")]
    keys_b = [k async for k in redis.scan_iter(match=f"{prefix}:b:*")]
    assert keys_a == [KeySpace(f"{prefix}:a").firing("nightly", 1_700_000_000).encode()]
    assert keys_b == [KeySpace(f"{prefix}:b").firing("nightly", 1_700_000_000).encode()]


# --------------------------------------------------------------- leases


async def test_heartbeat_keeps_a_task_longer_than_its_lease(
    brokers: Brokers, redis: Redis, prefix: str
) -> None:
    # Renewed every second: the event loop may stall up to 2 s (a loaded CI
    # machine) before the outcome changes.
    lease_ttl = 3.0
    middleware = DedupMiddleware(
        redis=redis, prefix=prefix, lease_ttl=lease_ttl, record_finish=True
    )  # a lease, also on a list queue
    broker = brokers.queue(middleware)
    started, release = asyncio.Event(), asyncio.Event()

    async def long_job() -> str:
        started.set()
        await release.wait()
        return "ok"

    task = broker.register_task(long_job, task_name="long_job")
    receiver = DedupReceiver(broker, max_async_tasks=10)
    await task.kicker().with_labels(**firing()).kiq()
    running = asyncio.create_task(deliver(broker, receiver))
    await asyncio.wait_for(started.wait(), 5)
    key = KeySpace(prefix).firing("nightly", 1_700_000_000)
    first_deadline = int(await redis.hget(key, "lease_until"))

    async def renewed_past_first_lease() -> bool:
        now_ms = await redis_now_ms(redis)
        renewed = int(await redis.hget(key, "lease_until"))
        return now_ms > first_deadline and renewed > now_ms  # outlived its first lease

    await eventually(renewed_past_first_lease, timeout=5 * lease_ttl)
    await task.kicker().with_labels(**firing()).kiq()
    await deliver(broker, receiver)
    assert middleware.stats == DedupStats(executed=1, dropped_running=1)
    release.set()
    await asyncio.wait_for(running, 5)
    assert await redis.hget(key, "state") == b"done"


async def test_lapsed_lease_of_a_dead_worker_is_taken_over(
    brokers: Brokers, redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    dead = DedupMiddleware(redis=redis, prefix=prefix, lease_ttl=0.2)
    message = TaskiqMessage(
        task_id="t-1", task_name="report", labels=firing(), args=["x"], kwargs={}
    )
    data = message.model_dump()
    # A worker claims for a delivery that then ends without finishing (as if
    # the worker died, or a middleware raised): once the delivery's message is
    # gone, its lease is no longer renewed and lapses.
    assert await dead.pre_execute(message) is message
    assert dead.held == 1
    del message
    gc.collect()  # on Python 3.13 a frame may keep it until a collection
    assert dead.held == 0
    key = KeySpace(prefix).firing("nightly", 1_700_000_000)

    async def lapsed() -> bool:
        return await redis_now_ms(redis) > int(await redis.hget(key, "lease_until"))

    await eventually(lapsed, timeout=5)
    message = TaskiqMessage.model_validate(data)
    heir = DedupMiddleware(redis=redis, prefix=prefix)
    broker = brokers.queue(heir)
    calls: list[Any] = []
    broker.register_task(recorder(calls), task_name="report")
    await broker.kick(broker.formatter.dumps(message))  # the redelivery
    await deliver(broker, DedupReceiver(broker, max_async_tasks=10))

    assert calls == ["x"]
    assert heir.stats == DedupStats(executed=1, lease_takeovers=1)
    assert await redis.hget(key, "attempts") == b"2"
    assert await redis.hget(key, "state") == b"started"  # the heir's list queue: a once claim
    assert any("Took over" in line and "t-1" in line for line in infos(caplog))


async def test_stalled_holder_loses_its_lease(redis: Redis, prefix: str) -> None:
    stalled = DedupMiddleware(redis=redis, prefix=prefix, lease_ttl=0.2)
    message = TaskiqMessage(task_id="t-1", task_name="report", labels=firing(), args=[], kwargs={})
    await stalled.pre_execute(message)
    assert stalled.held == 1
    loop = stalled._holds._loop
    assert loop is not None
    loop.cancel()  # an event loop blocked past the lease renews nothing
    key = KeySpace(prefix).firing("nightly", 1_700_000_000)

    async def lapsed() -> bool:
        return await redis_now_ms(redis) > int(await redis.hget(key, "lease_until"))

    await eventually(lapsed, timeout=5)
    heir = DedupMiddleware(redis=redis, prefix=prefix)
    copy = message.model_copy(update={"task_id": "t-2"})
    assert await heir.pre_execute(copy) is copy
    await stalled.post_execute(message, None)  # type: ignore[arg-type]
    assert stalled.stats == DedupStats(executed=1, leases_lost=1)
    assert await redis.hget(key, "state") == b"running"  # still the heir's
    assert await redis.hget(key, "task_id") == b"t-2"
    await heir.post_execute(copy, None)  # type: ignore[arg-type]
    assert await redis.hget(key, "state") == b"done"


# ---------------------------------------------------------- once claims


async def script_calls(redis: Redis) -> int:
    """Scripts the server has run so far (``INFO commandstats``)."""
    stats = await redis.info("commandstats")
    return sum(
        int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval")
    )


@pytest.mark.parametrize(
    "case",
    [("queue", None, 1), ("queue", True, 2), ("stream", None, 2), ("stream", False, 1)],
    ids=["list-once", "list-recorded", "stream-leased", "stream-once"],
)
async def test_script_calls_per_firing_are_the_minimum_of_the_broker_kind(
    brokers: Brokers, redis: Redis, prefix: str, case: tuple[str, bool | None, int]
) -> None:
    """One decision where nothing can redeliver (a once claim), two where it can."""
    kind, record_finish, per_message = case
    middleware = DedupMiddleware(redis=redis, prefix=prefix, record_finish=record_finish)
    broker = brokers.queue(middleware) if kind == "queue" else brokers.stream(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="report")
    receiver = DedupReceiver(broker, max_async_tasks=10)
    await broker.startup()
    await task.kicker().with_labels(**firing(slot=0)).kiq(0)
    await deliver(broker, receiver)  # loads the scripts
    before = await script_calls(redis)
    for slot in range(1, 6):
        await task.kicker().with_labels(**firing(slot=slot)).kiq(slot)
        await deliver(broker, receiver)  # one at a time: nothing to batch
    assert await script_calls(redis) - before == 5 * per_message
    assert calls == list(range(6))
    state = b"started" if per_message == 1 else b"done"
    assert await redis.hget(KeySpace(prefix).firing("nightly", 5), "state") == state


async def test_a_copy_of_a_once_claimed_firing_is_dropped_not_pushed_back(
    brokers: Brokers, redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A takeover's copy carries the holder's task id: no lease to wait for, so dropped."""
    caplog.set_level(logging.INFO)
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    broker = brokers.queue(middleware)
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def long_job(value: str) -> str:
        started.set()
        await release.wait()
        calls.append(value)
        return value

    broker.register_task(long_job, task_name="long_job")
    await broker.startup()
    message = TaskiqMessage(
        task_id="same", task_name="long_job", labels=firing(), args=["x"], kwargs={}
    )
    await broker.kick(broker.formatter.dumps(message))
    await broker.kick(broker.formatter.dumps(message))
    receiver = DedupReceiver(broker, max_async_tasks=10)
    messages = broker.listen()
    running = asyncio.create_task(receiver.callback(await anext(messages)))
    await asyncio.wait_for(started.wait(), 5)
    await receiver.callback(await anext(messages))  # the copy, while the first runs
    await messages.aclose()
    assert await redis.llen(f"{prefix}:queue") == 0  # not pushed back
    release.set()
    await asyncio.wait_for(running, 5)
    assert calls == ["x"]
    assert middleware.stats == DedupStats(executed=1, dropped_done=1)
    assert any("is started, held by task same" in line for line in infos(caplog))
    assert middleware.held == 0


async def test_a_once_claimed_firing_of_a_dead_worker_is_not_run_again(
    redis: Redis, prefix: str
) -> None:
    """A list queue lost the message with the worker; a later copy is dropped: at most once."""
    dead = DedupMiddleware(redis=redis, prefix=prefix, lease_ttl=0.2)
    dead.set_broker(InMemoryBroker())
    message = TaskiqMessage(task_id="t-1", task_name="job", labels=firing(), args=[], kwargs={})
    assert await dead.pre_execute(message) is message
    assert dead._holds._loop is None  # nothing to renew
    del message
    gc.collect()
    assert dead.held == 0
    key = KeySpace(prefix).firing("nightly", 1_700_000_000)
    # no lease to lapse (a leased claim's would, after lease_ttl): nothing to wait for
    assert await redis.hget(key, "lease_until") is None
    heir = DedupMiddleware(redis=redis, prefix=prefix)
    heir.set_broker(InMemoryBroker())
    copy = TaskiqMessage(task_id="t-1", task_name="job", labels=firing(), args=[], kwargs={})
    assert skip.is_skip(await heir.pre_execute(copy))
    assert heir.stats == DedupStats(dropped_done=1)
    assert await redis.hget(key, "state") == b"started"
    assert await redis.pttl(key) > 23 * 3600 * 1000  # kept for done_ttl


async def test_a_lost_once_claim_reply_is_recognised_on_retry(redis: Redis, prefix: str) -> None:
    attempt = uuid.uuid4().hex
    middleware = DedupMiddleware(redis=redis, prefix=prefix, record_finish=False)
    key = KeySpace(prefix).firing("nightly", 1)
    for _ in range(2):  # the first reply is lost: the same attempt asks again
        claim = await middleware._leases.claim(
            key,
            token=attempt,
            task_id="t-1",
            generation=0,
            worker="w",
            lease_ms=1000,
            retention_ms=60_000,
            once=True,
        )
        assert claim.won
    assert await redis.hmget(key, "state", "attempts", "lease_until") == [b"started", b"1", None]


# -------------------------------------------------------------- retries


@pytest.mark.parametrize("dedup_last", [True, False], ids=["dedup-last", "dedup-first"])
@pytest.mark.parametrize("retry_cls", [SimpleRetryMiddleware, SmartRetryMiddleware])
@pytest.mark.parametrize("record_finish", [None, True], ids=["once", "leased"])
async def test_failed_firing_is_retried_to_success_once(
    redis: Redis, prefix: str, dedup_last: bool, retry_cls: type[Any], record_finish: bool | None
) -> None:
    """On an ``InMemoryBroker`` a firing is claimed once by default, else leased."""
    middleware = DedupMiddleware(redis=redis, prefix=prefix, record_finish=record_finish)
    retry = (
        retry_cls(default_retry_count=3)
        if retry_cls is SimpleRetryMiddleware
        else retry_cls(default_retry_count=3, default_delay=0)
    )
    broker = InMemoryBroker().with_middlewares(
        *((retry, middleware) if dedup_last else (middleware, retry))
    )
    attempts: list[int] = []

    async def flaky() -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    task = broker.register_task(flaky, task_name="flaky", retry_on_error=True)
    await broker.startup()
    try:
        handle = await task.kicker().with_labels(**firing()).kiq()
        result = await handle.wait_result(timeout=5)
    finally:
        await broker.shutdown()
    assert result.return_value == "ok"
    assert attempts == [1, 2]
    assert middleware.stats == DedupStats(executed=2)
    key = KeySpace(prefix).firing("nightly", 1_700_000_000)
    assert await redis.hget(key, "state") == (b"done" if record_finish else b"started")
    assert await redis.hget(key, "attempts") == b"2"


@pytest.mark.parametrize("record_finish", [True, False], ids=["leased", "once"])
async def test_retry_supersedes_its_failed_holder(
    redis: Redis, prefix: str, record_finish: bool
) -> None:
    """The retry may arrive before the failed run released the key (middleware order)."""
    middleware = DedupMiddleware(redis=redis, prefix=prefix, record_finish=record_finish)
    failed = TaskiqMessage(task_id="t-1", task_name="job", labels=firing(), args=[], kwargs={})
    await middleware.pre_execute(failed)
    retry = failed.model_copy(update={"labels": {**failed.labels, "_retries": "1"}})
    same_again = failed.model_copy(update={"labels": dict(failed.labels)})
    stranger = failed.model_copy(update={"task_id": "t-2", "labels": retry.labels})

    assert skip.is_skip(await middleware.pre_execute(same_again))  # not a retry
    assert skip.is_skip(await middleware.pre_execute(stranger))  # not its retry
    assert await middleware.pre_execute(retry) is retry
    key = KeySpace(prefix).firing("nightly", 1_700_000_000)
    assert await redis.hget(key, "gen") == b"1"
    # The failed run's release comes late and leaves the retry's claim alone.
    await middleware.on_error(failed, None, RuntimeError("boom"))  # type: ignore[arg-type]
    held = b"running" if record_finish else b"started"
    assert await redis.hget(key, "state") == held
    await middleware.post_execute(retry, None)  # type: ignore[arg-type]
    assert await redis.hget(key, "state") == (b"done" if record_finish else b"started")
    # a once claim's copies are counted with the finished ones: that run was taken
    dropped = {"dropped_running": 2} if record_finish else {"dropped_done": 2}
    assert middleware.stats == DedupStats(executed=2, **dropped)


async def test_requeued_task_runs_again(redis: Redis, prefix: str) -> None:
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    broker = InMemoryBroker().with_middlewares(middleware)
    runs: list[str] = []

    async def picky(context: Annotated[Context, TaskiqDepends()]) -> str:
        runs.append("run")
        if len(runs) == 1:
            await context.requeue()
        return "ok"

    task = broker.register_task(picky, task_name="picky")
    await broker.startup()
    try:
        handle = await task.kicker().with_labels(**firing()).kiq()
        assert (await handle.wait_result(timeout=5)).return_value == "ok"
    finally:
        await broker.shutdown()
    assert runs == ["run", "run"]
    assert middleware.stats == DedupStats(executed=2)


# ----------------------------------------------------------- idempotency


async def test_idempotent_kiq_answers_with_the_first_result(
    brokers: Brokers, middleware: DedupMiddleware, redis: Redis, prefix: str
) -> None:
    broker = brokers.queue(middleware)
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[int] = []

    async def charge(amount: int) -> int:
        calls.append(amount)
        started.set()
        await release.wait()
        return amount

    task = broker.register_task(charge, task_name="charge")
    receiver = DedupReceiver(broker, max_async_tasks=10)
    finish = asyncio.Event()
    worker = asyncio.create_task(receiver.listen(finish))
    try:
        first = await task.kicker().with_labels(idempotency_key="order-7").kiq(100)
        await asyncio.wait_for(started.wait(), 5)
        during = await task.kicker().with_labels(idempotency_key="order-7").kiq(200)
        release.set()
        assert (await first.wait_result(timeout=5)).return_value == 100
        after = await task.kicker().with_labels(idempotency_key="order-7").kiq(300)
        other = await task.kicker().with_labels(idempotency_key="order-8").kiq(400)
        assert (await other.wait_result(timeout=5)).return_value == 400

        async def drained() -> bool:
            return await redis.llen(f"{prefix}:queue") == 0

        await eventually(drained, timeout=5)
    finally:
        finish.set()
        await asyncio.wait_for(worker, 10)  # waits for the echoes in flight
    for handle in (during, after):
        assert handle.task_id == first.task_id
        assert (await handle.wait_result(timeout=5)).return_value == 100  # not overwritten
    assert calls == [100, 400]
    assert middleware.stats.idempotent_replays == 2
    assert middleware.stats.executed == 2


async def test_idempotency_key_is_per_task(brokers: Brokers, middleware: DedupMiddleware) -> None:
    broker = brokers.queue(middleware)
    calls: list[Any] = []
    one = broker.register_task(recorder(calls), task_name="one")
    two = broker.register_task(recorder(calls), task_name="two")
    a = await one.kicker().with_labels(idempotency_key="k").kiq("one")
    b = await two.kicker().with_labels(idempotency_key="k").kiq("two")
    assert a.task_id != b.task_id
    await deliver(broker, DedupReceiver(broker, max_async_tasks=10), 2)
    assert sorted(calls) == ["one", "two"]


# ---------------------------------------------------------- Redis errors


@pytest.fixture
async def dead_redis(own_redis: RedisServer) -> AsyncIterator[Redis]:
    """A client whose server is down (``own_redis.start()`` brings it back)."""
    client = Redis.from_url(own_redis.url, socket_connect_timeout=1)
    own_redis.kill()
    yield client
    await client.aclose()


async def test_fail_open_executes_and_reports(
    brokers: Brokers, dead_redis: Redis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = DedupMiddleware(
        redis=dead_redis, prefix=prefix, on_redis_error="execute", redis_deadline=DOWN_DEADLINE
    )
    broker = brokers.queue(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="report")
    await task.kicker().with_labels(**firing()).kiq("ran")
    await deliver(broker, DedupReceiver(broker, max_async_tasks=10))
    assert calls == ["ran"]
    assert middleware.stats == DedupStats(executed_unguarded=1, redis_errors=1)
    [error] = errors(caplog)
    assert error.name == MIDDLEWARE_LOG
    assert "on_redis_error=execute" in error.getMessage()


@RECEIVERS
async def test_fail_closed_leaves_a_stream_message_for_redelivery(
    *,
    receiver_cls: type[Receiver],
    brokers: Brokers,
    own_redis: RedisServer,
    dead_redis: Redis,
    redis: Redis,
    prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    middleware = DedupMiddleware(
        redis=dead_redis, prefix=prefix, redis_deadline=DOWN_DEADLINE
    )  # "reject"
    broker = brokers.stream(middleware)
    await broker.startup()
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="report")
    receiver = receiver_cls(broker, max_async_tasks=10)
    handle = await task.kicker().with_labels(**firing()).kiq("later")
    await deliver(broker, receiver)
    assert calls == []
    assert await pending(redis, brokers.stream_name) == 1  # not acked, not lost
    assert not await handle.is_ready()
    assert len(errors(caplog)) == 1
    assert middleware.stats == DedupStats(redis_errors=1)

    own_redis.start()
    [(entry_id, fields)] = await reclaim(redis, brokers.stream_name)
    stream = brokers.stream_name
    await receiver.callback(
        AckableMessage(data=fields[b"data"], ack=lambda: redis.xack(stream, GROUP, entry_id))
    )
    assert calls == ["later"]
    assert (await handle.wait_result(timeout=5)).return_value == "later"
    assert await pending(redis, brokers.stream_name) == 0


@RECEIVERS
async def test_fail_closed_pushes_a_list_message_back(
    *,
    receiver_cls: type[Receiver],
    brokers: Brokers,
    own_redis: RedisServer,
    dead_redis: Redis,
    redis: Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(skip, "REQUEUE_DELAY", 0.01)
    middleware = DedupMiddleware(redis=dead_redis, prefix=prefix, redis_deadline=DOWN_DEADLINE)
    broker = brokers.queue(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="report")
    receiver = receiver_cls(broker, max_async_tasks=10)
    handle = await task.kicker().with_labels(**firing(), ack_type="when_executed").kiq("later")
    await deliver(broker, receiver)
    assert calls == []
    assert await redis.llen(f"{prefix}:queue") == 1  # back in the queue, as it was
    assert len(errors(caplog)) == 1

    own_redis.start()
    await deliver(broker, receiver)
    assert calls == ["later"]
    labels = (await handle.wait_result(timeout=5)).labels
    assert labels["ack_type"] == "when_executed"
    assert not {skip.SKIP_LABEL, skip.TASK_LABEL} & set(labels)
    assert middleware.stats == DedupStats(executed=1, redis_errors=1)


@pytest.mark.parametrize("record_finish", [None, True], ids=["once", "leased"])
async def test_a_claim_applied_but_unanswered_is_continued_by_its_pushed_back_delivery(
    brokers: Brokers,
    redis: Redis,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    record_finish: bool | None,
) -> None:
    """Redis applied the claim, then every try's reply was lost until the deadline.

    The delivery is pushed back carrying the claim's token: it goes on with that
    attempt and runs at once (a once claim has no lease to lapse; a leased one
    would otherwise wait out its lease).
    """
    monkeypatch.setattr(skip, "REQUEUE_DELAY", 0.01)
    middleware = DedupMiddleware(
        redis=redis, prefix=prefix, redis_deadline=DOWN_DEADLINE, record_finish=record_finish
    )
    real_claim = middleware._leases.claim
    tries: list[str] = []
    lost = [True]  # every reply of the first delivery's tries

    async def unanswered(key: str, **kwargs: Any) -> Any:
        tries.append(kwargs["token"])
        reply = await real_claim(key, **kwargs)  # applied
        if lost[0]:
            raise RedisTimeoutError("reply lost")
        return reply

    monkeypatch.setattr(middleware._leases, "claim", unanswered)
    broker = brokers.queue(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="report")
    receiver = DedupReceiver(broker, max_async_tasks=10)
    handle = await task.kicker().with_labels(**firing()).kiq("x")
    await deliver(broker, receiver)  # the claim fails: pushed back
    assert calls == []
    assert len(tries) >= 2  # retried within the deadline
    lost[0] = False
    await deliver(broker, receiver)  # the same attempt, continued
    assert calls == ["x"]
    assert len(set(tries)) == 1  # one attempt throughout
    assert middleware.stats == DedupStats(executed=1, redis_errors=1)
    key = KeySpace(prefix).firing("nightly", 1_700_000_000)
    assert await redis.hget(key, "attempts") == b"1"
    assert await redis.hget(key, "state") == (b"done" if record_finish else b"started")
    labels = (await handle.wait_result(timeout=5)).labels
    assert CLAIM_TOKEN_LABEL not in labels  # a retry of the run is a new attempt


async def test_idempotent_kiq_without_redis(
    brokers: Brokers, dead_redis: Redis, redis: Redis, prefix: str
) -> None:
    calls: list[Any] = []
    closing = DedupMiddleware(redis=dead_redis, prefix=prefix, redis_deadline=DOWN_DEADLINE)
    closed = brokers.queue(closing, name="closed")
    task = closed.register_task(recorder(calls), task_name="charge")
    with pytest.raises(DedupUnavailableError):
        await task.kicker().with_labels(idempotency_key="k").kiq(1)
    assert await redis.llen(f"{prefix}:closed") == 0  # nothing sent
    assert closing.stats == DedupStats(redis_errors=1)

    opening = DedupMiddleware(
        redis=dead_redis, prefix=prefix, on_redis_error="execute", redis_deadline=DOWN_DEADLINE
    )
    open_ = brokers.queue(opening, name="open")
    handle = await AsyncKicker("charge", open_, {"idempotency_key": "k"}).kiq(1)
    assert await redis.llen(f"{prefix}:open") == 1  # sent unchanged, with its own id
    assert not skip.is_skip(open_.formatter.loads(await redis.lindex(f"{prefix}:open", 0)))
    assert len(handle.task_id) == 32
    assert opening.stats == DedupStats(redis_errors=2)  # the bind and the confirm


# ------------------------------------------------------------ the parts


def test_stats_are_an_immutable_snapshot(middleware: DedupMiddleware) -> None:
    snapshot = middleware.stats
    middleware._count("executed")
    assert snapshot.executed == 0
    assert middleware.stats.executed == 1
    assert middleware.stats.as_dict()["executed"] == 1
    with pytest.raises(AttributeError):
        snapshot.executed = 5  # type: ignore[misc]


def test_skip_round_trips_the_original_message() -> None:
    message = TaskiqMessage(
        task_id="t",
        task_name="job",
        labels={"ack_type": "manual", "x": "1"},
        args=[1],
        kwargs={"k": 2},
    )
    skipped = skip.skip(message, "unavailable")
    assert skip.is_skip(skipped)
    assert skipped.labels["ack_type"] == "manual"
    assert skip.restore(skipped) == message
    echo = skip.skip(message, "echo")
    assert echo.args == []
    assert echo.labels["ack_type"] == "when_received"
    assert message.task_name == "job"  # the original is untouched


def test_dedup_receiver_warns_without_the_middleware(caplog: pytest.LogCaptureFixture) -> None:
    DedupReceiver(InMemoryBroker(), max_async_tasks=1)
    assert any("without DedupMiddleware" in r.getMessage() for r in caplog.records)


async def test_worker_counters_are_exported_to_prometheus(
    brokers: Brokers, redis: Redis, prefix: str
) -> None:
    registry = CollectorRegistry()
    middleware = DedupMiddleware(redis=redis, prefix=prefix, metrics=registry)
    broker = brokers.queue(middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="report")
    for value in ("first", "second"):
        await task.kicker().with_labels(**firing()).kiq(value)
    await deliver(broker, Receiver(broker, max_async_tasks=10), 2)

    assert calls == ["first"]
    assert registry.get_sample_value("taskiq_dedup_worker_executed_total") == 1
    assert registry.get_sample_value("taskiq_dedup_worker_dropped_done_total") == 1
    assert registry.get_sample_value("taskiq_dedup_worker_redis_errors_total") == 0
