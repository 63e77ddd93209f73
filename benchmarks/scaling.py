"""``python -m benchmarks.scaling``: claims per second on one node and on a 3-primary Cluster.

Arms, each on private servers started here (never the shared Redis):

- ``single``: one ``redis-server``;
- ``single+min_replicas=1``: one primary with one replica, every claim followed
  by ``WAIT 1`` on its connection (``min_replicas=1``);
- ``cluster``: a local 6-node Cluster (3 primaries, 3 replicas).

Each run claims and confirms ``N`` firings of distinct schedules (the
scheduler side of one firing: ``FiringClaims.claim`` then ``confirm``) from
``CLIENTS`` clients in this process, ``IN_FLIGHT`` calls in flight per client;
claims/s is ``N`` over the wall time, the median of ``REPEATS`` runs. Then, on
the single node: memory per schedule's claim state and per worker done key
(``used_memory`` before and after, over the count), and on the Cluster how the
keys of one prefix spread over the primaries, with and without a hash-tagged
prefix.

``--quick`` runs small sizes (a smoke test); figures in docs/SCALING.md come
from a full run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis import Redis as SyncRedis

from taskiq_dedup.claims import FiringClaims
from taskiq_dedup.connection import resolve_redis
from taskiq_dedup.keys import KeySpace
from taskiq_dedup.leases import Leases
from taskiq_dedup.testing import RedisServer
from tests.support.topologies import SYNC_AT_ONCE, LocalCluster, wait_for_replicas

if TYPE_CHECKING:
    from redis.asyncio import Redis

CLIENTS = 4
IN_FLIGHT = 64
SLOT = 1_700_000_000
TTL_MS = 600_000


async def claims_per_second(
    url: str,
    count: int,
    *,
    min_replicas: int = 0,
    prefix: str | None = None,
    losing: bool = False,
) -> float:
    """Claim and confirm ``count`` firings of distinct schedules; return claims/s.

    ``losing``: the firings under ``prefix`` were sent by an earlier run, so
    each claim loses (one call, verdict ``sent``), as the other schedulers' do.
    """
    space = KeySpace(prefix or f"bench-{uuid.uuid4().hex[:8]}")
    clients: list[Redis] = [resolve_redis(url, None, {})[0] for _ in range(CLIENTS)]
    try:
        claims = [
            FiringClaims(client, f"s{i}", min_replicas=min_replicas)
            for i, client in enumerate(clients)
        ]
        await asyncio.gather(*(client.ping() for client in clients))  # connect first

        async def one_client(index: int) -> None:
            claimer = claims[index]
            numbers = iter(range(index, count, CLIENTS))

            async def lane() -> None:
                for n in numbers:
                    key = space.firings(f"s{n}")
                    attempt = claimer.new_attempt()
                    claim = await claimer.claim(key, attempt, [SLOT], TTL_MS)
                    assert claim.won != losing  # noqa: S101 -- distinct schedules: all win
                    if not losing:
                        await claimer.confirm(key, attempt, SLOT, TTL_MS)

            await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))

        started = time.perf_counter()
        await asyncio.gather(*(one_client(i) for i in range(CLIENTS)))
        return count / (time.perf_counter() - started)
    finally:
        for client in clients:
            await client.aclose()


def used_memory(port: int) -> int:
    with SyncRedis(port=port) as client:
        return int(client.info("memory")["used_memory"])


async def memory_per_key(server: RedisServer, count: int) -> dict[str, float]:
    """Bytes per schedule's claim state and per worker done key, on ``server``."""
    client, _ = resolve_redis(server.url, None, {})
    try:
        space = KeySpace("taskiq-dedup:prod")
        claims = FiringClaims(client, "host-01:12345")
        leases = Leases(client)
        before = used_memory(server.port)
        for n in range(count):
            key = space.firings(f"{uuid.uuid4().hex}")
            attempt = claims.new_attempt()
            await claims.claim(key, attempt, [SLOT], TTL_MS)
            await claims.confirm(key, attempt, SLOT, TTL_MS)
            if n % 1000 == 0:
                await asyncio.sleep(0)
        middle = used_memory(server.port)
        for n in range(count):
            key = space.firing(uuid.uuid4().hex, SLOT)
            token = uuid.uuid4().hex
            await leases.claim(
                key,
                token=token,
                task_id=f"{n:032x}-{SLOT}",
                generation=0,
                worker="host-01:12345",
                lease_ms=60_000,
                retention_ms=86_400_000,
            )
            await leases.finish(key, token, retention_ms=86_400_000)
        after = used_memory(server.port)
        return {"claim_state": (middle - before) / count, "done_key": (after - middle) / count}
    finally:
        await client.aclose()


def spread(cluster: LocalCluster, prefix: str, count: int) -> list[int]:
    """Keys of ``count`` schedules under ``prefix``, per primary (sorted)."""
    space = KeySpace(prefix)
    with SyncRedis(port=cluster.nodes[0].port) as client:
        slots = [int(client.cluster("KEYSLOT", space.firings(f"s{n}"))) for n in range(count)]
        ranges = [(int(r[0]), int(r[1])) for r in client.cluster("SLOTS")]
    return sorted(sum(1 for slot in slots if low <= slot <= high) for low, high in ranges)


def median_rate(url: str, count: int, repeats: int, *, min_replicas: int = 0) -> float:
    return statistics.median(
        asyncio.run(claims_per_second(url, count, min_replicas=min_replicas))
        for _ in range(repeats)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    args = parser.parse_args(argv)
    count, repeats, memory_count = (500, 1, 500) if args.quick else (20_000, 3, 20_000)
    results: dict[str, Any] = {"count": count, "repeats": repeats, "clients": CLIENTS}

    single = RedisServer().start()
    try:
        results["single"] = median_rate(single.url, count, repeats)
        sent = "bench-sent"
        asyncio.run(claims_per_second(single.url, count, prefix=sent))
        results["single, losing claims"] = statistics.median(
            asyncio.run(claims_per_second(single.url, count, prefix=sent, losing=True))
            for _ in range(repeats)
        )
        results["memory"] = asyncio.run(memory_per_key(single, memory_count))
    finally:
        single.close()

    primary = RedisServer(extra_args=SYNC_AT_ONCE).start()
    replica = RedisServer(extra_args=[*SYNC_AT_ONCE, "--replicaof", "127.0.0.1", str(primary.port)])
    try:
        replica.start()
        wait_for_replicas(primary.port, 1)
        results["single+min_replicas=1"] = median_rate(primary.url, count, repeats, min_replicas=1)
    finally:
        replica.close()
        primary.close()

    cluster = LocalCluster().start()
    try:
        results["cluster"] = median_rate(cluster.url, count, repeats)
        results["spread"] = spread(cluster, "taskiq-dedup:prod", count)
        results["spread_hash_tag"] = spread(cluster, "{taskiq-dedup}:prod", count)
    finally:
        cluster.close()

    print(f"load average at the end: {Path('/proc/loadavg').read_text().split()[:3]}")
    print(f"{count} firings (claim + confirm) per run, {CLIENTS} clients x {IN_FLIGHT} in flight")
    print(f"median of {repeats} run(s), claims/s:")
    for arm in ("single", "single+min_replicas=1", "cluster", "single, losing claims"):
        print(f"  {arm:24} {results[arm]:10.0f}")
    memory = results["memory"]
    print(f"memory per schedule's claim state: {memory['claim_state']:.0f} B")
    print(f"memory per worker done key:        {memory['done_key']:.0f} B")
    print(f"keys per primary, prefix taskiq-dedup:prod:   {results['spread']}")
    print(f"keys per primary, prefix {{taskiq-dedup}}:prod: {results['spread_hash_tag']}")


if __name__ == "__main__":
    main()
