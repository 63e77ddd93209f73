"""`uvicorn --workers 4` with an AsyncIOScheduler in the lifespan: every run once, or not."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from redis import Redis as SyncRedis

from taskiq_dedup.keys import KeySpace
from tests.support.processes import ProcessGroup, wait_until
from tests.support.redis_server import free_port

pytestmark = pytest.mark.processes

APP = "examples.fastapi_apscheduler.app:app"
WORKERS = 4
RUN_FOR = 5.0  # seconds of runs measured once every worker's scheduler has started
ANNOUNCE_IN = 4.0  # the date job's time, counted from the moment every worker has started


def runs(redis_url: str, prefix: str) -> list[dict[str, Any]]:
    with SyncRedis.from_url(redis_url) as client:
        raw = client.lrange(KeySpace(prefix).key("example", "runs"), 0, -1)
    return [json.loads(item) for item in raw]


def started(redis_url: str, prefix: str) -> int:
    with SyncRedis.from_url(redis_url) as client:
        return int(client.llen(KeySpace(prefix).key("example", "started")))


def run_workers(
    processes: ProcessGroup, redis_url: str, prefix: str, *, dedup: bool
) -> list[dict[str, Any]]:
    """Start the example under uvicorn, wait for every worker, measure, stop; return its runs."""
    env = {
        "REDIS_URL": redis_url,
        "DEDUP_PREFIX": prefix,
        "DEDUP": "on" if dedup else "off",
        "REPORT_EVERY": "1",
        "DIGEST_SECOND": "*",
    }
    # the date job must be in the future for the last worker to start: pick it from a
    # generous start-up bound, then measure until it is past
    announce_at = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=12)
    env["ANNOUNCE_AT"] = announce_at.isoformat()
    web = processes.spawn(
        "uvicorn",
        [
            sys.executable,
            "-m",
            "uvicorn",
            APP,
            "--workers",
            str(WORKERS),
            "--port",
            str(free_port()),
        ],
        env,
    )
    wait_until(
        lambda: started(redis_url, prefix) == WORKERS or not web.alive(),
        timeout=30,
        message="uvicorn workers did not start",
    )
    assert web.alive(), processes.logs()
    begin = time.time()
    wait_until(
        lambda: time.time() > max(begin + RUN_FOR, announce_at.timestamp() + 1),
        timeout=30,
        interval=0.2,
    )
    web.stop()
    # cron and interval runs from the moment every worker runs a scheduler; the date job's one
    return [
        run for run in runs(redis_url, prefix) if run["at"] >= begin or run["job"] == "announce"
    ]


def by_slot(recorded: list[dict[str, Any]]) -> dict[str, Counter[int]]:
    """Runs per job and slot (a 1 s interval's bucket is its run time's second)."""
    jobs: dict[str, Counter[int]] = {
        "report": Counter(),
        "digest": Counter(),
        "announce": Counter(),
    }
    for run in recorded:
        jobs[run["job"]][int(run["at"])] += 1
    return jobs


def test_four_uvicorn_workers_run_every_run_once(
    processes: ProcessGroup, redis_url: str, prefix: str
) -> None:
    recorded = run_workers(processes, redis_url, f"{prefix}:on", dedup=True)
    slots = by_slot(recorded)
    assert len(slots["digest"]) >= RUN_FOR - 1, processes.logs()
    assert len(slots["report"]) >= RUN_FOR - 1, processes.logs()
    for job, counted in slots.items():
        assert counted, job
        assert max(counted.values()) == 1, (job, counted)
    assert sum(slots["announce"].values()) == 1
    assert not any(run["failed"] for run in recorded)


def test_without_the_executor_every_worker_runs_every_run(
    processes: ProcessGroup, redis_url: str, prefix: str
) -> None:
    """The same set-up as shipped: the checker above sees duplicates (it can fail)."""
    recorded = run_workers(processes, redis_url, f"{prefix}:off", dedup=False)
    slots = by_slot(recorded)
    assert max(slots["digest"].values()) == WORKERS, slots["digest"]
    assert sum(slots["announce"].values()) > 1, slots["announce"]
