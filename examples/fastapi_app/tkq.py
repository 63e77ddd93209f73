r"""Broker, schedule sources and scheduler, as in FastAPI-template's ``tkq.py``.

Run the worker and a scheduler (any number of each) with::

    taskiq worker examples.fastapi_app.tkq:broker examples.fastapi_app.tasks \
        --receiver taskiq_dedup:DedupReceiver
    taskiq scheduler examples.fastapi_app.tkq:scheduler examples.fastapi_app.tasks \
        --skip-first-run

Two changes from the template make every firing run once: the scheduler reads
one ``CompositeScheduleSource`` wrapping the usual label and Redis sources, and
the broker carries a ``DedupMiddleware``. Every key (queue, schedules, claims)
lives under ``settings.prefix``, so environments sharing one Redis stay apart.
With ``DEDUP_DISABLED=1`` both changes are left out: taskiq as shipped.
"""

from __future__ import annotations

from taskiq import ScheduleSource, TaskiqScheduler
from taskiq.schedule_sources import LabelScheduleSource
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListQueueBroker, ListRedisScheduleSource

from examples.fastapi_app.settings import Settings
from taskiq_dedup import CompositeScheduleSource, DedupMiddleware, KeySpace

settings = Settings.from_env()
keys = KeySpace(settings.prefix)

broker = ListQueueBroker(
    settings.redis_url,
    queue_name=keys.key("queue"),
    # The worker waits in BRPOP without a timeout; redis-py 8 defaults to a 5 s
    # socket timeout, which would end an idle worker's wait with TimeoutError.
    socket_timeout=None,
)

schedules_prefix = keys.key("schedules")
label_source = LabelScheduleSource(broker)
redis_source = ListRedisScheduleSource(
    settings.redis_url,
    prefix=schedules_prefix,
    serializer=JSONSerializer(),  # the composite refuses to add through pickle
)
composite = CompositeScheduleSource(
    [label_source, redis_source],
    redis_url=settings.redis_url,
    prefix=settings.prefix,
)
"""Merged view of both sources; the API lists, adds and deletes through it."""

schedule_source: ScheduleSource
"""Where start-up code registers dynamic schedules (``schedule_by_cron(...)``)."""

if settings.dedup_disabled:
    scheduler = TaskiqScheduler(broker, sources=[label_source, redis_source])
    schedule_source = redis_source
else:
    broker.add_middlewares(DedupMiddleware(redis_url=settings.redis_url, prefix=settings.prefix))
    scheduler = TaskiqScheduler(broker, sources=[composite])
    schedule_source = composite
