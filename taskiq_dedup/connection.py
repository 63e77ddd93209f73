"""Turning ``redis_url=`` / ``redis=`` options into one asyncio client.

The URL names the topology (``taskiq_dedup.topology``): one node, a Sentinel set
(a client of its current master, following failovers) or a Cluster (a client
that routes each command by its key). Every component takes either form, so one
environment variable configures every environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from taskiq_dedup.errors import ConfigurationError
from taskiq_dedup.topology import Topology, parse_redis_url, redacted

if TYPE_CHECKING:
    from redis.asyncio.sentinel import SentinelConnectionPool

__all__ = [
    "RECONNECT_RETRIES",
    "SentinelMaster",
    "check_min_replicas",
    "is_cluster",
    "redacted",
    "resolve_redis",
]

RECONNECT_RETRIES = 3
"""Retries of a command that met a dropped connection: enough to reconnect
across a restart's closed sockets, few enough that an outage fails fast."""


class SentinelMaster(Redis):
    """A client of a Sentinel set's master that also closes its sentinel clients."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the master's connections and the connections to the sentinels."""
        await super().aclose(close_connection_pool)
        pool = cast("SentinelConnectionPool", self.connection_pool)
        for sentinel in pool.sentinel_manager.sentinels:
            await sentinel.aclose()


def is_cluster(redis: object) -> bool:
    """Whether ``redis`` is a Cluster client (its pipelines run no scripts)."""
    return isinstance(redis, RedisCluster)


def check_min_replicas(min_replicas: object) -> int:
    """Return ``min_replicas`` if it is an integer >= 0, else raise ``ConfigurationError``."""
    if isinstance(min_replicas, bool) or not isinstance(min_replicas, int) or min_replicas < 0:
        raise ConfigurationError(
            detail=f"min_replicas must be an integer >= 0, got {min_replicas!r}",
        )
    return min_replicas


def resolve_redis(
    redis_url: str | None,
    redis: Redis | RedisCluster | None,
    connection_kwargs: dict[str, Any],
) -> tuple[Redis, bool]:
    """Return ``(client, owned)`` for exactly one of ``redis_url`` or ``redis``.

    ``owned`` is true when the client was made here and must be closed here;
    a client passed in by the caller stays the caller's to close. A client made
    here retries a command on a dropped connection (a Redis restart closes every
    pooled connection); every script of this package is safe to repeat.

    A Cluster client is returned typed as ``Redis``: it offers every command
    method this package calls, and code that pipelines checks ``is_cluster``.
    """
    if (redis_url is None) == (redis is None):
        raise ConfigurationError(detail="pass exactly one of redis_url= or redis=")
    if redis is not None:
        given: object = redis  # typed, but callers pass what they have
        if not isinstance(given, (Redis, RedisCluster)):
            kind = f"{type(given).__module__}.{type(given).__qualname__}"
            raise ConfigurationError(
                detail=(
                    "redis= must be a redis.asyncio client (Redis, a Sentinel's "
                    f"master_for(...) or RedisCluster), got {kind}"
                ),
            )
        return cast("Redis", redis), False
    assert redis_url is not None  # noqa: S101 -- narrowed by the check above
    topology = parse_redis_url(redis_url)
    options = {
        "retry": Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), RECONNECT_RETRIES),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        **connection_kwargs,
    }
    try:
        return _client(topology, options), True
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(
            detail=f"redis_url {redacted(redis_url)}: {exc}",
        ) from exc


def _client(topology: Topology, options: dict[str, Any]) -> Redis:
    if topology.kind == "single":
        return Redis.from_url(topology.url, **options)
    credentials: dict[str, Any] = {"username": topology.username, "password": topology.password}
    if topology.kind == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in topology.nodes],
            **credentials,
            **options,
        )
        return cast("Redis", cluster)
    sentinel_kwargs = {key: value for key, value in options.items() if key.startswith("socket_")}
    sentinel_kwargs["username"] = topology.sentinel_username
    sentinel_kwargs["password"] = topology.sentinel_password
    sentinel = Sentinel(list(topology.nodes), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    master: Redis = sentinel.master_for(
        topology.master,
        redis_class=SentinelMaster,
        db=topology.db,
        **credentials,
        **options,
    )
    return master
