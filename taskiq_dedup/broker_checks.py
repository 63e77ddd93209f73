"""Start-up checks of the broker a middleware joins, for faults that are not ours.

taskiq-redis's ``ListQueueBroker`` waits for messages in ``BRPOP`` with no
timeout of its own, so the connection's socket timeout ends every idle wait.
redis-py 8 gives connections a 5 s socket timeout by default: an idle worker
then fails with ``TimeoutError`` every 5 s and taskiq restarts it, losing what
it held. The broker is recognised by what it has (a redis-py connection pool and
a list queue), so this package never imports taskiq-redis.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

logger = logging.getLogger(__name__)

BLOCKING_POP_BROKERS = ("ListQueueBroker", "ListQueueClusterBroker")
"""taskiq-redis brokers whose workers wait in ``BRPOP`` without a timeout."""

NO_REDELIVERY_BROKERS = (
    "ListQueueBroker",
    "ListQueueClusterBroker",
    "ListQueueSentinelBroker",
    "PubSubBroker",
    "InMemoryBroker",
)
"""Brokers that hand a message over once and never deliver it again."""

STREAM_BROKERS = ("RedisStreamBroker", "RedisStreamClusterBroker", "RedisStreamSentinelBroker")
"""taskiq-redis brokers that hand an unacknowledged entry out again (``XAUTOCLAIM``)."""


def is_kind(broker: object, names: tuple[str, ...]) -> bool:
    """Whether ``broker``'s class, or a base of it, has one of ``names``.

    By name, so the package never imports taskiq-redis (an optional extra).
    """
    return any(cls.__name__ in names for cls in type(broker).__mro__)


def _default_socket_timeout(connection_class: type) -> float | None:
    for cls in connection_class.__mro__:
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        parameter = inspect.signature(init).parameters.get("socket_timeout")
        if parameter is not None and parameter.default is not inspect.Parameter.empty:
            default: float | None = parameter.default
            return default
    return None


def blocking_pop_timeout(broker: Any) -> float | None:  # noqa: ANN401 -- any broker
    """Return the socket timeout that ends an idle worker's ``BRPOP``, if there is one."""
    if not is_kind(broker, BLOCKING_POP_BROKERS):
        return None
    pool = getattr(broker, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return None
    if "socket_timeout" in kwargs:
        timeout = kwargs["socket_timeout"]
    else:
        timeout = _default_socket_timeout(getattr(pool, "connection_class", object))
    return float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else None


def warn_if_idle_workers_die(broker: Any) -> bool:  # noqa: ANN401 -- any broker
    """Log one WARNING if ``broker``'s idle workers will time out; return whether it did."""
    timeout = blocking_pop_timeout(broker)
    if timeout is None:
        return False
    logger.warning(
        "%s has a %g s socket timeout: an idle worker's BRPOP fails with TimeoutError "
        "every %g s and taskiq restarts it. Create the broker with socket_timeout=None, "
        "e.g. ListQueueBroker(url, socket_timeout=None)",
        type(broker).__name__,
        timeout,
        timeout,
    )
    return True
