"""Three real ``taskiq scheduler`` processes claiming on Sentinel while its primary is SIGKILLed."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from typing import Any

import pytest
from redis import Redis as SyncRedis

from tests.support.processes import FIRST_TICK, ProcessGroup, wait_until
from tests.support.topologies import SentinelSet

pytestmark = pytest.mark.processes

APP = "tests.apps.sched_app"
READY_TIMEOUT = 60.0
PERIOD = 2
"""The app's interval schedule: a slot every 2 s."""
BEFORE = 6.0
"""Seconds of firings before the primary is killed."""
AFTER = 10.0
"""Seconds of firings after the sentinels named a new primary."""
STOP_MARGIN = 1.0


def executions(redis_url: str, prefix: str) -> list[dict[str, Any]]:
    with SyncRedis.from_url(redis_url) as client:
        return [json.loads(raw) for raw in client.lrange(f"{prefix}:executions", 0, -1)]


def queue_drained(redis_url: str, prefix: str) -> bool:
    with SyncRedis.from_url(redis_url) as client:
        return client.llen(f"{prefix}:queue") == 0


def test_schedulers_ride_through_a_failover_with_min_replicas(
    processes: ProcessGroup, redis_url: str, prefix: str, own_sentinel_set: SentinelSet
) -> None:
    """Broker and records on a plain server; claims on Sentinel, ``min_replicas=1``.

    Every interval slot from the first tick to the stop runs exactly once, the
    ones due during the failover late; the lateness is in the failure message.
    """
    env = {
        "REDIS_URL": redis_url,
        "DEDUP_PREFIX": prefix,
        "DEDUP_REDIS_URL": own_sentinel_set.url(),
        "DEDUP_MIN_REPLICAS": "1",
    }
    worker = processes.worker(f"{APP}:broker", name="worker", env=env)
    schedulers = [
        processes.scheduler(f"{APP}:scheduler", "--skip-first-run", name=f"scheduler-{i}", env=env)
        for i in range(3)
    ]
    wait_until(
        lambda: all(s.scheduler_ready() for s in schedulers),
        timeout=READY_TIMEOUT,
        message=f"schedulers not ready\n{processes.logs()}",
    )
    firing_from = time.time() + FIRST_TICK
    wait_until(lambda: time.time() > firing_from + BEFORE, timeout=BEFORE + 5)
    old_port = own_sentinel_set.master_port()
    own_sentinel_set.server_on(old_port).kill()
    killed_at = time.time()
    own_sentinel_set.wait_for_failover(old_port)
    promoted_at = time.time()
    wait_until(lambda: time.time() > promoted_at + AFTER, timeout=AFTER + 5)
    assert all(s.alive() for s in schedulers), processes.logs()
    for scheduler in schedulers:
        scheduler.stop()
    stopped = time.time()
    wait_until(lambda: queue_drained(redis_url, prefix), timeout=30)
    worker.stop()

    runs = [r for r in executions(redis_url, prefix) if r["kind"] == "interval"]
    per_slot = Counter(int(r["slot"]) for r in runs)
    duplicates = {slot: n for slot, n in per_slot.items() if n > 1}
    due = range(
        math.ceil(firing_from / PERIOD) * PERIOD, int(stopped - STOP_MARGIN) - PERIOD, PERIOD
    )
    missed = sorted(set(due) - set(per_slot))
    late = {int(r["slot"]): round(r["at"] - int(r["slot"]), 1) for r in runs}
    report = (
        f"killed at {killed_at:.1f}, promoted at {promoted_at:.1f} "
        f"({promoted_at - killed_at:.1f} s); lateness by slot {late}\n{processes.logs()}"
    )
    print(  # the figures docs/RELIABILITY.md quotes, shown with -s
        f"failover {promoted_at - killed_at:.1f} s; {len(due)} slots due, {len(per_slot)} run; "
        f"lateness max {max(late.values())} s, by slot {late}",
    )
    assert not duplicates, f"duplicates {duplicates}; {report}"
    assert not missed, f"missed {missed} of {list(due)}; {report}"
