"""Real `taskiq scheduler` processes: every slot executed once per environment, none missed."""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from typing import Any

import pytest
from redis import Redis as SyncRedis

from tests.apps.sched_app import one_off_time
from tests.support.processes import FIRST_TICK, ProcessGroup, wait_until

pytestmark = pytest.mark.processes

APP = "tests.apps.sched_app"
READY_TIMEOUT = 60.0
STOP_MARGIN = 1.0
"""A slot counts as due only if its bucket closed this long before the stop."""


def executions(redis_url: str, prefix: str) -> list[dict[str, Any]]:
    with SyncRedis.from_url(redis_url) as client:
        return [json.loads(raw) for raw in client.lrange(f"{prefix}:executions", 0, -1)]


def register(processes: ProcessGroup, env: dict[str, str], name: str, count: int) -> None:
    startups = [
        processes.spawn(f"{name}-startup-{i}", [sys.executable, "-m", APP, "register"], env)
        for i in range(count)
    ]
    wait_until(lambda: not any(p.alive() for p in startups), timeout=60)
    for startup in startups:
        assert startup.popen.returncode == 0, startup.output()


def queue_drained(redis_url: str, prefix: str) -> bool:
    with SyncRedis.from_url(redis_url) as client:
        return client.llen(f"{prefix}:queue") == 0


def test_three_schedulers_two_environments_every_slot_once(
    processes: ProcessGroup, redis_url: str, prefix: str
) -> None:
    envs = {
        "prod": {
            "REDIS_URL": redis_url,
            "DEDUP_PREFIX": f"{prefix}:prod",
            "ONE_OFF_AT": one_off_time(20),
        },
        "staging": {
            "REDIS_URL": redis_url,
            "DEDUP_PREFIX": f"{prefix}:staging",
            "ONE_OFF_AT": one_off_time(20),
        },
    }
    for name, env in envs.items():
        register(processes, env, name, count=4)
    workers = [
        processes.worker(f"{APP}:broker", name=f"{name}-worker", env=env)
        for name, env in envs.items()
    ]
    started = time.time()
    schedulers = [
        # --skip-first-run keeps taskiq's loop firing crons on the minute (without it
        # the loop fires at start and then every 60 s from that second).
        processes.scheduler(
            f"{APP}:scheduler",
            "--update-interval=5",
            "--skip-first-run",
            name=f"{name}-scheduler-{i}",
            env=env,
        )
        for name, env in envs.items()
        for i in range(3 if name == "prod" else 2)
    ]
    wait_until(
        lambda: all(s.scheduler_ready() for s in schedulers),
        timeout=READY_TIMEOUT,
        message=f"schedulers not ready\n{processes.logs()}",
    )
    firing_from = time.time() + FIRST_TICK  # every scheduler ticks from here on
    # Run across a minute boundary that falls after start-up, plus a few slots.
    boundary = math.ceil(firing_from / 60) * 60
    stop_at = max(boundary + 8, started + 30)
    while time.time() < stop_at:
        assert all(s.alive() for s in schedulers), processes.logs()
        time.sleep(0.5)
    for scheduler in schedulers:
        scheduler.stop()
    stopped = time.time()
    for env in envs.values():
        wait_until(lambda env=env: queue_drained(redis_url, env["DEDUP_PREFIX"]), timeout=30)
    for worker in workers:
        worker.stop()  # a graceful stop lets the worker finish the messages it took

    window = (firing_from, stopped - STOP_MARGIN)
    for name, env in envs.items():
        runs = executions(redis_url, env["DEDUP_PREFIX"])
        per_firing = Counter((r["schedule_id"], r["slot"]) for r in runs)
        duplicates = {firing: n for firing, n in per_firing.items() if n > 1}
        assert not duplicates, f"{name}: duplicate executions {duplicates}\n{processes.logs()}"
        by_kind: dict[str, set[int]] = {}
        for run in runs:
            by_kind.setdefault(run["kind"], set()).add(int(run["slot"]))
        assert set(by_kind) == {"interval", "dyn", "cron", "one-off"}, (name, by_kind)
        for kind, period in (("interval", 2), ("dyn", 3)):
            due = set(
                range(math.ceil(window[0] / period) * period, int(window[1]) - period, period)
            )
            missed = due - by_kind[kind]
            assert not missed, f"{name}/{kind}: missed slots {sorted(missed)} of {sorted(due)}"
        assert boundary in by_kind["cron"], f"{name}: cron slot {boundary} not executed"
        assert len(by_kind["one-off"]) == 1
        assert sum(1 for r in runs if r["kind"] == "one-off") == 1
        assert (
            len({r["schedule_id"] for r in runs if r["kind"] == "interval"}) == 1
        )  # copies merged


def test_as_shipped_the_same_set_up_duplicates(
    processes: ProcessGroup, redis_url: str, prefix: str
) -> None:
    """The comparison that shows what the composite removes (and that the check can fail)."""
    env = {"REDIS_URL": redis_url, "DEDUP_PREFIX": f"{prefix}:shipped", "DEDUP_OFF": "1"}
    register(processes, env, "shipped", count=2)
    processes.worker(f"{APP}:broker", name="shipped-worker", env=env)
    for i in range(2):
        processes.scheduler(f"{APP}:scheduler", name=f"shipped-scheduler-{i}", env=env)
    wait_until(
        lambda: (
            sum(1 for r in executions(redis_url, env["DEDUP_PREFIX"]) if r["kind"] == "dyn") >= 12
        ),
        timeout=60,
    )
    runs = executions(redis_url, env["DEDUP_PREFIX"])
    dyn = sorted(r["at"] for r in runs if r["kind"] == "dyn")
    span = dyn[-1] - dyn[0]
    # A 3 s schedule registered by 2 start-ups and fired by 2 schedulers: about 4 runs per 3 s.
    assert len(dyn) > 2 * (span / 3 + 1), (len(dyn), span)
