"""Turning ``redis_url=`` / ``redis=`` options into one asyncio client."""

from typing import Any

from redis.asyncio import Redis

from taskiq_dedup.errors import ConfigurationError


def resolve_redis(
    redis_url: str | None,
    redis: "Redis | None",
    connection_kwargs: dict[str, Any],
) -> "tuple[Redis, bool]":
    """Return ``(client, owned)`` for exactly one of ``redis_url`` or ``redis``.

    ``owned`` is true when the client was made here and must be closed here;
    a client passed in by the caller stays the caller's to close.
    """
    if (redis_url is None) == (redis is None):
        raise ConfigurationError(detail="pass exactly one of redis_url= or redis=")
    if redis is not None:
        return redis, False
    assert redis_url is not None  # noqa: S101 -- narrowed by the check above
    return Redis.from_url(redis_url, **connection_kwargs), True


def redacted(redis_url: str) -> str:
    """Return ``redis_url`` with its credentials replaced by ``***`` (for logs)."""
    scheme, sep, rest = redis_url.partition("://")
    if not sep or "@" not in rest:
        return redis_url
    _, _, host = rest.rpartition("@")
    return f"{scheme}://***@{host}"
