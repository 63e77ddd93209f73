"""The firing ledger after real `taskiq scheduler` processes and a guarded `taskiq worker`."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from taskiq_dedup.keys import KeySpace
from taskiq_dedup.ledger import LedgerEntry, history
from tests.support.processes import FIRST_TICK, ProcessGroup, wait_until

pytestmark = pytest.mark.processes

APP = "tests.apps.sched_app"
RUN_FOR = 12.0
"""Seconds the schedulers fire after the first tick: six slots of the 2 s schedule."""


async def ledgers(redis_url: str, prefix: str, ids: set[str]) -> dict[str, list[LedgerEntry]]:
    async with Redis.from_url(redis_url) as redis:
        return {sid: await history(redis, KeySpace(prefix), sid) for sid in ids}


def test_every_executed_firing_names_one_claimer_and_one_execution(
    processes: ProcessGroup, redis_url: str, prefix: str
) -> None:
    env = {"REDIS_URL": redis_url, "DEDUP_PREFIX": prefix, "WORKER_GUARD": "1"}
    worker = processes.worker(f"{APP}:broker", name="worker", env=env)
    schedulers = [
        processes.scheduler(f"{APP}:scheduler", name=f"scheduler-{i}", env=env) for i in range(3)
    ]
    wait_until(
        lambda: all(s.scheduler_ready() for s in schedulers),
        timeout=60,
        message=f"schedulers not ready\n{processes.logs()}",
    )
    stop_at = time.time() + FIRST_TICK + RUN_FOR
    while time.time() < stop_at:
        assert all(s.alive() for s in schedulers), processes.logs()
        time.sleep(0.5)
    for scheduler in schedulers:
        scheduler.stop()
    with SyncRedis.from_url(redis_url) as client:
        wait_until(lambda: client.llen(f"{prefix}:queue") == 0, timeout=30)
    worker.stop()  # a graceful stop finishes the messages it took
    with SyncRedis.from_url(redis_url) as client:
        runs = [json.loads(raw) for raw in client.lrange(f"{prefix}:executions", 0, -1)]

    executed = Counter((r["schedule_id"], int(r["slot"])) for r in runs)
    assert len(executed) >= 5, processes.logs()
    assert set(executed.values()) == {1}, executed
    ran_in = {(r["schedule_id"], int(r["slot"])): r["pid"] for r in runs}
    scheduler_pids = {str(s.pid) for s in schedulers}
    host = socket.gethostname()
    found = asyncio.run(ledgers(redis_url, prefix, {sid for sid, _ in executed}))
    for (schedule_id, slot), pid in ran_in.items():
        [entry] = [e for e in found[schedule_id] if e.slot == slot]  # one entry per firing
        # a list queue cannot redeliver: the worker claims once and records no end
        assert entry.outcome == "started", entry
        assert entry.finished_at is None, entry
        claimer = entry.claimed_by.split("#")[0].split(":")[1]  # host:pid#random
        assert claimer in scheduler_pids, entry
        assert entry.worker == f"{host}:{pid}", entry  # the one process that ran it
        assert entry.sent_at is not None
        assert entry.started_at is not None
    for schedule_id, entries in found.items():
        assert len({e.slot for e in entries}) == len(entries), entries  # each slot once
        sent = {e.slot for e in entries if e.outcome != "missed"}
        assert sent <= {slot for sid, slot in executed if sid == schedule_id}, (
            f"sent but never run: {sorted(sent)}\n{processes.logs()}"
        )
