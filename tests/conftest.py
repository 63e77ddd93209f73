"""Fixtures: private redis-server processes, a client, a unique prefix per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.reliability.proxy import LatencyProxy
from tests.support.processes import ProcessGroup
from tests.support.redis_server import RedisServer, external_redis_url
from tests.support.topologies import LocalCluster, SentinelSet, redis_cli_binary


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the suite's Redis: a private server, or TASKIQ_DEDUP_TEST_REDIS_URL."""
    external = external_redis_url()
    if external:
        yield external
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """A private 6-node Redis Cluster (3 primaries, 3 replicas) for the session."""
    if redis_cli_binary() is None:
        pytest.skip("no redis-cli to create a cluster with")
    cluster = LocalCluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def sentinel_set() -> Iterator[SentinelSet]:
    """A private Sentinel set (1 primary, 2 replicas, 3 sentinels) for the session.

    Tests must leave its primary in place; a failover test makes its own set.
    """
    sentinels = SentinelSet().start()
    try:
        yield sentinels
    finally:
        sentinels.close()


@pytest.fixture
def own_sentinel_set() -> Iterator[SentinelSet]:
    """A Sentinel set this test may fail over, pause and kill."""
    sentinels = SentinelSet().start()
    try:
        yield sentinels
    finally:
        sentinels.close()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix no other test uses; its keys are deleted afterwards.

    Never FLUSHALL: the server may be shared (TASKIQ_DEDUP_TEST_REDIS_URL).
    """
    value = f"test-{uuid.uuid4().hex[:12]}"
    yield value
    from redis import Redis as SyncRedis  # noqa: PLC0415

    with SyncRedis.from_url(redis_url) as client:
        keys = list(client.scan_iter(match=f"{value}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def redis_servers() -> Iterator[list[RedisServer]]:
    """Start extra servers in a test (``redis_servers.append(RedisServer().start())``);
    all are killed and removed afterwards."""
    servers: list[RedisServer] = []
    try:
        yield servers
    finally:
        for server in servers:
            server.close()


@pytest.fixture
def own_redis(redis_servers: list[RedisServer]) -> RedisServer:
    """A private server this test may stop, kill and restart."""
    server = RedisServer().start()
    redis_servers.append(server)
    return server


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    """Real processes for this test, all reaped when it ends, pass or fail."""
    with ProcessGroup(tmp_path / "logs") as group:
        yield group


@pytest.fixture
def proxy(own_redis: RedisServer) -> Iterator[LatencyProxy]:
    """A TCP proxy in front of ``own_redis`` that can delay or drop replies."""
    server = LatencyProxy(own_redis.port).start()
    try:
        yield server
    finally:
        server.close()
