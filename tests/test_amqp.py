"""The worker guard on a real AMQP broker: taskiq-aio-pika against RabbitMQ.

The broker runs with a prefetch of one, so a delivery left unacknowledged would
stop every later one: each test's last step receiving a message proves that the
deliveries before it were settled. RabbitMQ is the machine's (``amqp://`` on
127.0.0.1:5672, or ``TASKIQ_DEDUP_TEST_AMQP_URL``); each test declares its own
exchange and queue and deletes them afterwards. Redis is the suite's own server.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from redis.asyncio import Redis
from taskiq import AckableMessage
from taskiq.message import TaskiqMessage
from taskiq_aio_pika import AioPikaBroker, Exchange, Queue, QueueType

from taskiq_dedup import DedupMiddleware, DedupReceiver, skip
from tests.support.redis_server import RedisServer
from tests.test_middleware import firing, recorder

AMQP_URL = os.environ.get("TASKIQ_DEDUP_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DELIVERY_TIMEOUT = 10.0
"""Seconds to wait for a delivery that must come: a settled queue hands it out at once."""


@pytest.fixture
async def amqp_names(prefix: str) -> AsyncIterator[tuple[str, str]]:
    try:
        connection = await asyncio.wait_for(aio_pika.connect(AMQP_URL), 5)
    except (OSError, asyncio.TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        pytest.skip(f"no RabbitMQ at {AMQP_URL} ({exc!r}); set TASKIQ_DEDUP_TEST_AMQP_URL")
    names = (f"{prefix}-exchange", f"{prefix}-queue")
    try:
        yield names
    finally:
        channel = await connection.channel()
        await channel.queue_delete(names[1])
        await channel.exchange_delete(names[0])
        await connection.close()


def amqp_broker(names: tuple[str, str], middleware: DedupMiddleware) -> AioPikaBroker:
    exchange, queue = names
    broker = AioPikaBroker(
        AMQP_URL,
        qos=1,
        exchange=Exchange(name=exchange, durable=False),
        task_queues=[Queue(name=queue, type=QueueType.CLASSIC, durable=False)],
    )
    broker.is_worker_process = True  # it consumes: opens its reading channel at start-up
    return broker.with_middlewares(middleware)


async def next_delivery(messages: AsyncIterator[AckableMessage]) -> AckableMessage:
    return await asyncio.wait_for(anext(messages), DELIVERY_TIMEOUT)


async def test_a_delivery_deferred_while_redis_is_down_runs_once_it_is_back(
    amqp_names: tuple[str, str],
    own_redis: RedisServer,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(skip, "REQUEUE_DELAY", 0.05)
    client = Redis.from_url(own_redis.url, socket_connect_timeout=0.5)
    middleware = DedupMiddleware(redis=client, prefix=prefix, redis_deadline=0.5)
    broker = amqp_broker(amqp_names, middleware)
    calls: list[Any] = []
    task = broker.register_task(recorder(calls), task_name="report")
    await broker.startup()
    messages = broker.listen()
    try:
        receiver = DedupReceiver(broker, max_async_tasks=10)
        await task.kicker().with_labels(**firing()).kiq("x")
        own_redis.kill()
        await receiver.callback(await next_delivery(messages))  # unavailable: pushed back
        assert calls == []
        assert middleware.stats.redis_errors >= 1
        own_redis.start()
        # Prefetch 1: this delivery comes only if the first one was acknowledged.
        await receiver.callback(await next_delivery(messages))
        assert calls == ["x"]
        assert middleware.stats.executed == 1
    finally:
        await messages.aclose()
        await broker.shutdown()
        await client.aclose()


async def test_duplicates_are_acknowledged_and_never_run(
    amqp_names: tuple[str, str], redis: Redis, prefix: str
) -> None:
    middleware = DedupMiddleware(redis=redis, prefix=prefix)
    broker = amqp_broker(amqp_names, middleware)
    calls: list[Any] = []
    broker.register_task(recorder(calls), task_name="report")
    await broker.startup()
    messages = broker.listen()
    try:
        receiver = DedupReceiver(broker, max_async_tasks=10)
        for task_id in ("first", "takeover-copy", "restart-copy"):  # one firing, three sends
            message = TaskiqMessage(
                task_id=task_id, task_name="report", labels=firing(), args=["x"], kwargs={}
            )
            await broker.kick(broker.formatter.dumps(message))
        for _ in range(3):  # each comes only once the one before it was acknowledged
            await receiver.callback(await next_delivery(messages))
        assert calls == ["x"]
        assert middleware.stats.dropped_done == 2
    finally:
        await messages.aclose()
        await broker.shutdown()
