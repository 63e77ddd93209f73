"""``redis_url`` forms: one node, Sentinel, Cluster; bad URLs; redaction."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from taskiq_dedup import DedupMiddleware
from taskiq_dedup.connection import SentinelMaster, redacted, resolve_redis
from taskiq_dedup.errors import ConfigurationError
from taskiq_dedup.topology import parse_redis_url

SECRET = "s3cr3t-pw"  # noqa: S105 -- a made-up password to find in output


def test_one_node_urls_are_left_to_redis_py() -> None:
    for url in ("redis://h:1/2", "rediss://h/0", "unix:///run/redis.sock?db=1"):
        assert parse_redis_url(url).kind == "single"


def test_a_sentinel_url_names_sentinels_master_db_and_credentials() -> None:
    topology = parse_redis_url(
        f"redis+sentinel://app:{SECRET}@s1:26380,s2,[::1]:26381/my%2Dmaster"
        "?db=3&sentinel_username=watch&sentinel_password=pw2",
    )
    assert topology.kind == "sentinel"
    assert topology.nodes == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert topology.master == "my-master"
    assert topology.db == 3
    assert (topology.username, topology.password) == ("app", SECRET)
    assert (topology.sentinel_username, topology.sentinel_password) == ("watch", "pw2")


def test_a_cluster_url_names_seed_nodes_and_credentials() -> None:
    topology = parse_redis_url(f"redis+cluster://:{SECRET}@n1:7000,n2/")
    assert topology.kind == "cluster"
    assert topology.nodes == (("n1", 7000), ("n2", 6379))
    assert (topology.username, topology.password) == (None, SECRET)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("localhost:6379", "must be a Redis URL"),
        ("http://h:1/0", "unknown scheme 'http'"),
        ("redis+sentinel://s1:26379", "name the master"),
        ("redis+sentinel://s1:26379/a/b", "name the master"),
        ("redis+sentinel://s1:x/m", "is not a number"),
        ("redis+sentinel://s1:70000/m", "out of range"),
        ("redis+sentinel://s1,,s2/m", "empty host"),
        ("redis+sentinel://s1/m?db=one", "db must be a number"),
        ("redis+sentinel://s1/m?ssl=1", "unknown option(s) ssl"),
        ("redis+cluster://n1:7000/0", "seed nodes only"),
        ("redis+cluster://n1:7000?db=1", "seed nodes only"),
    ],
)
def test_bad_urls_are_refused_naming_the_url(url: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_redis_url(url)
    assert reason in str(info.value)
    assert redacted(url) in str(info.value) or "://" not in url


def test_components_refuse_a_bad_url_with_its_password_redacted() -> None:
    from taskiq_dedup.apscheduler import DedupExecutor  # noqa: PLC0415

    url = f"redis+sentinel://u:{SECRET}@s1:26379/m?sentinel_password={SECRET}&bogus=1"
    for make in (lambda: DedupMiddleware(redis_url=url), lambda: DedupExecutor(redis_url=url)):
        with pytest.raises(ConfigurationError) as info:
            make()
        assert "unknown option(s) bogus" in str(info.value)
        assert SECRET not in str(info.value)
        assert "u:" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        f"redis+sentinel://u:{SECRET}@s1:26379,s2:26379/m?db=1&sentinel_password={SECRET}",
        f"redis+cluster://:{SECRET}@n1:7000,n2:7001",
        f"redis+cluster://n1:7000?password={SECRET}",
        f"redis://h:1/0?password={SECRET}&x=@",
    ],
)
def test_redacted_masks_every_password_of_every_form(url: str) -> None:
    masked = redacted(url)
    assert SECRET not in masked
    assert masked.partition("://")[0] == url.partition("://")[0]  # still says which topology


def test_redacted_keeps_hosts_readable() -> None:
    assert redacted(f"redis+sentinel://u:{SECRET}@s1:26379,s2:26379/m?db=1") == (
        "redis+sentinel://***@s1:26379,s2:26379/m?db=1"
    )


async def test_each_url_form_makes_its_client_with_the_retry_options() -> None:
    single, owned = resolve_redis("redis://127.0.0.1:1/0", None, {"socket_timeout": 2})
    assert owned
    assert type(single) is Redis
    sentinel, _ = resolve_redis(
        f"redis+sentinel://:{SECRET}@127.0.0.1:1,127.0.0.1:2/primary?db=2", None, {}
    )
    assert isinstance(sentinel, SentinelMaster)
    pool = sentinel.connection_pool
    assert pool.service_name == "primary"  # type: ignore[attr-defined]
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == SECRET
    assert pool.connection_kwargs["retry"] is not None
    sentinels = pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [1, 2]
    cluster, _ = resolve_redis("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", None, {})
    assert isinstance(cluster, RedisCluster)
    seeds = sorted(node.port for node in cluster.nodes_manager.startup_nodes.values())
    assert seeds == [7000, 7001]
    for client in (single, sentinel):
        await client.aclose()
    await cluster.aclose()


def test_redis_accepts_any_asyncio_client_and_refuses_others() -> None:
    cluster = RedisCluster(host="127.0.0.1", port=7000)
    client, owned = resolve_redis(None, cluster, {})
    assert client is cluster
    assert not owned
    from redis import Redis as SyncRedis  # noqa: PLC0415

    with pytest.raises(ConfigurationError, match=r"got redis\.client\.Redis"):
        resolve_redis(None, SyncRedis(), {})  # type: ignore[arg-type]
