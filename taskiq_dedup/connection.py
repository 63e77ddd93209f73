"""Turning ``redis_url=`` / ``redis=`` options into one asyncio client."""

import re
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskiq_dedup.errors import ConfigurationError

RECONNECT_RETRIES = 3
"""Retries of a command that met a dropped connection: enough to reconnect
across a restart's closed sockets, few enough that an outage fails fast."""

_PASSWORD_PARAM = re.compile(r"(?i)((?:^|&)password=)[^&]*")


def resolve_redis(
    redis_url: str | None,
    redis: "Redis | None",
    connection_kwargs: dict[str, Any],
) -> "tuple[Redis, bool]":
    """Return ``(client, owned)`` for exactly one of ``redis_url`` or ``redis``.

    ``owned`` is true when the client was made here and must be closed here;
    a client passed in by the caller stays the caller's to close. A client made
    here retries a command on a dropped connection (a Redis restart closes every
    pooled connection); every script of this package is safe to repeat.
    """
    if (redis_url is None) == (redis is None):
        raise ConfigurationError(detail="pass exactly one of redis_url= or redis=")
    if redis is not None:
        return redis, False
    assert redis_url is not None  # noqa: S101 -- narrowed by the check above
    options = {
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), RECONNECT_RETRIES),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        **connection_kwargs,
    }
    return Redis.from_url(redis_url, **options), True


def redacted(redis_url: str) -> str:
    """Return ``redis_url`` with credentials replaced by ``***`` (for logs).

    Both places redis-py reads a password from are masked: ``user:pass@`` and
    the ``password=`` query parameter.
    """
    scheme, sep, rest = redis_url.partition("://")
    if sep and "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    base, qsep, query = rest.partition("?")
    if qsep:
        query = _PASSWORD_PARAM.sub(r"\1***", query)
    return f"{scheme}{sep}{base}{qsep}{query}"
