"""Overlap and catch-up with real `taskiq worker` and `taskiq scheduler` processes."""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from typing import Any

import pytest
from redis import Redis as SyncRedis

from taskiq_dedup.identity import pinned_id
from taskiq_dedup.keys import KeySpace
from tests.support.processes import ManagedProcess, ProcessGroup, wait_until

pytestmark = pytest.mark.processes

APP = "tests.apps.policies_app"
READY_TIMEOUT = 60.0


def records(redis_url: str, key: str) -> list[dict[str, Any]]:
    with SyncRedis.from_url(redis_url) as client:
        return [json.loads(raw) for raw in client.lrange(key, 0, -1)]


def queue_drained(redis_url: str, prefix: str) -> bool:
    with SyncRedis.from_url(redis_url) as client:
        return client.llen(f"{prefix}:queue") == 0


def run_busy_schedule(
    processes: ProcessGroup, redis_url: str, prefix: str, policy: str, runs: int
) -> tuple[list[dict[str, Any]], list[ManagedProcess]]:
    """Two workers, one scheduler, a 4 s task every second, until ``runs`` runs ended."""
    env = {"REDIS_URL": redis_url, "DEDUP_PREFIX": prefix, "OVERLAP": policy}
    workers = [processes.worker(f"{APP}:broker", name=f"worker-{i}", env=env) for i in range(2)]
    scheduler = processes.scheduler(f"{APP}:scheduler", name="scheduler", env=env)
    wait_until(
        lambda: len(records(redis_url, f"{prefix}:runs")) >= runs,
        timeout=60,
        interval=0.2,
        message=processes.logs(),
    )
    scheduler.stop()
    wait_until(lambda: queue_drained(redis_url, prefix), timeout=30, message=processes.logs())
    for worker in workers:
        worker.stop()  # graceful: the runs it took end and are recorded
    return records(redis_url, f"{prefix}:runs"), workers


def assert_no_overlap(runs: list[dict[str, Any]]) -> None:
    ordered = sorted(runs, key=lambda run: run["start"])
    for earlier, later in itertools.pairwise(ordered):
        assert later["start"] >= earlier["end"], f"runs overlap: {earlier} and {later}"


def test_skip_never_runs_two_at_once_across_two_workers(
    processes: ProcessGroup, redis_url: str, prefix: str
) -> None:
    runs, workers = run_busy_schedule(processes, redis_url, prefix, "skip", runs=3)
    assert_no_overlap(runs)
    assert len({run["slot"] for run in runs}) == len(runs)
    skips = sum(w.output().count("not executed (dedup_overlap=skip)") for w in workers)
    assert skips >= 2 * (len(runs) - 1), processes.logs()  # ~3 per 4 s run
    assert {run["pid"] for run in runs}  # recorded by the workers themselves


def test_buffer_one_runs_back_to_back_with_at_most_one_waiting(
    processes: ProcessGroup, redis_url: str, prefix: str
) -> None:
    runs, workers = run_busy_schedule(processes, redis_url, prefix, "buffer_one", runs=3)
    assert_no_overlap(runs)
    waited = [run for run in runs if run["start"] - run["slot"] >= 1.5]
    assert waited, f"no run waited for the previous one: {runs}"  # buffered, not skipped
    skips = sum(w.output().count("not executed (dedup_overlap=buffer_one)") for w in workers)
    # With a firing per second and a run per 4 s, more than one waiting would run them all.
    assert skips >= len(runs) - 1, processes.logs()


def test_allow_runs_overlap_as_before(processes: ProcessGroup, redis_url: str, prefix: str) -> None:
    """The comparison: without a policy the same set-up runs firings at once."""
    runs, _ = run_busy_schedule(processes, redis_url, prefix, "allow", runs=3)
    with pytest.raises(AssertionError, match="runs overlap"):
        assert_no_overlap(runs)


CATCH_UP = 175
"""Seconds: with catch-up running between 0 s and 55 s into minute ``M``, the window
holds the slots ``M - 120``, ``M - 60`` and ``M``, never ``M - 180``."""


def test_three_restarted_schedulers_catch_up_missed_slots_once(
    processes: ProcessGroup, redis_url: str, prefix: str
) -> None:
    """Every scheduler was down since ``M - 300``; three start in minute ``M``.

    The outage is the firing state the last send left (its cursor), so the test does not
    wait out real minutes.
    """
    wait_until(lambda: 2 <= time.time() % 60 <= 30, timeout=65, interval=0.2)
    minute = int(time.time()) // 60 * 60
    keys = KeySpace(prefix)
    with SyncRedis.from_url(redis_url) as client:
        for kind in ("latest", "all"):
            state = keys.firings(pinned_id("report", kind))
            client.hset(state, mapping={"sent": minute - 300, "sent_by": "before-the-outage"})
            client.expire(state, 3600)
    env = {"REDIS_URL": redis_url, "DEDUP_PREFIX": prefix, "CATCH_UP": str(CATCH_UP)}
    worker = processes.worker(f"{APP}:broker", name="worker", env=env)
    schedulers = [
        processes.scheduler(f"{APP}:scheduler", "--skip-first-run", name=f"scheduler-{i}", env=env)
        for i in range(3)
    ]
    wait_until(
        lambda: all("Catch-up checked 2 schedules" in s.output() for s in schedulers),
        timeout=READY_TIMEOUT,
        interval=0.2,
        message=processes.logs(),
    )
    assert time.time() < minute + 55, "start-up took over 25 s: the window moved"
    wait_until(
        lambda: len(records(redis_url, f"{prefix}:reports")) >= 4,
        timeout=30,
        interval=0.2,
        message=processes.logs(),
    )
    for scheduler in schedulers:
        scheduler.stop()
    wait_until(lambda: queue_drained(redis_url, prefix), timeout=30, message=processes.logs())
    worker.stop()

    caught = [r for r in records(redis_url, f"{prefix}:reports") if r["slot"] <= minute]
    per_slot = Counter((r["kind"], r["slot"]) for r in caught)
    assert per_slot == {
        ("latest", minute): 1,
        ("all", minute - 120): 1,
        ("all", minute - 60): 1,
        ("all", minute): 1,
    }, processes.logs()
    sent = sum(
        int(line.rsplit("sent ", 1)[1].split()[0])
        for s in schedulers
        for line in s.output().splitlines()
        if "Catch-up checked" in line
    )
    assert sent == 4  # each slot sent by exactly one of the three
