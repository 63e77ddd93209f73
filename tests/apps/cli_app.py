"""Schedulers for ``taskiq dedup`` tests: the README's set-up and one per misconfiguration.

Each function builds its own broker and sources (``taskiq dedup`` calls a function
given as ``APP:scheduler``, as ``taskiq scheduler`` does). ``REDIS_URL`` picks the
server, ``DEDUP_PREFIX`` the environment (and the stores' prefixes).
"""

from __future__ import annotations

import os

from taskiq import AsyncBroker, ScheduleSource, TaskiqScheduler
from taskiq.middlewares import SimpleRetryMiddleware
from taskiq.schedule_sources import LabelScheduleSource
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListQueueBroker, ListRedisScheduleSource, RedisStreamBroker

from taskiq_dedup import CompositeScheduleSource, DedupMiddleware

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:1/0")
PREFIX = os.environ.get("DEDUP_PREFIX", "cli-app")
STORE = PREFIX.replace(":", "-") + "-schedules"
"""The JSON store's prefix."""
PICKLE_STORE = STORE + "-pickled"
"""A store with taskiq-redis's default serializer (pickle)."""
REPORT_CRON = "*/5 * * * *"


def _register(broker: AsyncBroker) -> None:
    @broker.task(task_name="cli:report", schedule=[{"cron": REPORT_CRON}])
    async def report() -> None: ...

    @broker.task(task_name="cli:plain")
    async def plain(n: int) -> None: ...


def _broker() -> ListQueueBroker:
    broker = ListQueueBroker(REDIS_URL, queue_name=f"{PREFIX}:queue", socket_timeout=None)
    _register(broker)
    return broker


def json_store() -> ListRedisScheduleSource:
    return ListRedisScheduleSource(REDIS_URL, prefix=STORE, serializer=JSONSerializer())


def pickle_store() -> ListRedisScheduleSource:
    return ListRedisScheduleSource(REDIS_URL, prefix=PICKLE_STORE)


def _composite(children: list[ScheduleSource]) -> CompositeScheduleSource:
    return CompositeScheduleSource(children, redis_url=REDIS_URL, prefix=PREFIX)


def _guarded(broker: AsyncBroker) -> AsyncBroker:
    return broker.with_middlewares(DedupMiddleware(redis_url=REDIS_URL, prefix=PREFIX))


def good() -> TaskiqScheduler:
    """The README's quick start."""
    broker = _guarded(_broker())
    return TaskiqScheduler(broker, [_composite([LabelScheduleSource(broker), json_store()])])


def good_broker() -> AsyncBroker:
    """The README's broker, for ``taskiq worker``."""
    return good().broker


def unwrapped() -> TaskiqScheduler:
    """taskiq as shipped: the label and the store are the scheduler's own sources."""
    broker = _guarded(_broker())
    return TaskiqScheduler(broker, [LabelScheduleSource(broker), json_store()])


def half_wrapped() -> TaskiqScheduler:
    """A composite over the label source, and the store beside it, unwrapped."""
    broker = _guarded(_broker())
    return TaskiqScheduler(broker, [_composite([LabelScheduleSource(broker)]), json_store()])


def pickling() -> TaskiqScheduler:
    """A composite over a store that pickles."""
    broker = _guarded(_broker())
    return TaskiqScheduler(broker, [_composite([LabelScheduleSource(broker), pickle_store()])])


def no_middleware() -> TaskiqScheduler:
    broker = _broker()
    return TaskiqScheduler(broker, [_composite([LabelScheduleSource(broker), json_store()])])


def middleware_not_last() -> TaskiqScheduler:
    broker = _broker().with_middlewares(
        DedupMiddleware(redis_url=REDIS_URL, prefix=PREFIX), SimpleRetryMiddleware()
    )
    return TaskiqScheduler(broker, [_composite([LabelScheduleSource(broker), json_store()])])


def idle_workers_die() -> TaskiqScheduler:
    """A ListQueueBroker with a socket timeout that ends every idle BRPOP."""
    broker = ListQueueBroker(REDIS_URL, queue_name=f"{PREFIX}:queue", socket_timeout=5)
    _register(broker)
    _guarded(broker)
    return TaskiqScheduler(broker, [_composite([LabelScheduleSource(broker), json_store()])])


def short_idle_timeout() -> TaskiqScheduler:
    """A stream broker redelivering after 30 s, under twice the worker lease (60 s)."""
    broker = RedisStreamBroker(REDIS_URL, queue_name=f"{PREFIX}:stream", idle_timeout=30_000)
    _register(broker)
    return TaskiqScheduler(broker, [_composite([LabelScheduleSource(broker), json_store()])])


def not_a_scheduler() -> object:
    return "a string"
