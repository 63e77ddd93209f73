"""What a user with live claims sees when schedule ids change between two versions.

Runs one scenario twice against one private redis-server: first with the old
package (extracted from a git ref), which registers and fires every schedule of
one slot, then with the working tree's package, which fires the same slot again.
For each schedule it prints the id each version lists and whether the new version
sends the slot the old one already sent (a duplicate at the upgrade).

    python -m tests.reliability.id_upgrade --old-ref <commit before the id change>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 9, 9, 0, 30, tzinfo=timezone.utc)
"""A Monday 09:00:30 UTC: every schedule of the scenario is due."""
PREFIX = "upgrade"


def _broker() -> Any:
    from taskiq import InMemoryBroker  # noqa: PLC0415 -- the version under test is on sys.path

    broker = InMemoryBroker()
    pinned = {"cron": "0 9 * * *", "labels": {"dedup_id": "nightly"}}

    @broker.task(
        task_name="app:report",
        schedule=[
            {"cron": "0 9 * * mon", "args": [1]},
            {"cron": "*/5 * * * *", "args": [2], "schedule_id": "every-5-min"},
        ],
    )
    async def report(n: int) -> None: ...

    @broker.task(task_name="app:cleanup", schedule=[dict(pinned)])
    async def cleanup() -> None: ...

    @broker.task(task_name="app:backup", schedule=[dict(pinned)])
    async def backup() -> None: ...

    @broker.task(task_name="app:digest")
    async def digest(since: str) -> None: ...

    @broker.task(task_name="app:plain")
    async def plain(n: int) -> None: ...

    return broker


async def _phase(phase: str, redis_url: str) -> list[dict[str, Any]]:
    from taskiq.schedule_sources import LabelScheduleSource  # noqa: PLC0415
    from taskiq.serializers import JSONSerializer  # noqa: PLC0415
    from taskiq_redis import ListRedisScheduleSource  # noqa: PLC0415

    from taskiq_dedup import CompositeScheduleSource  # noqa: PLC0415
    from tests.support.firing import fire  # noqa: PLC0415

    broker = _broker()
    redis_child = ListRedisScheduleSource(
        redis_url, prefix=f"{PREFIX}-schedules", serializer=JSONSerializer()
    )
    source = CompositeScheduleSource(
        [LabelScheduleSource(broker), redis_child],
        redis_url=redis_url,
        prefix=PREFIX,
        clock=lambda: NOW,
        holder=phase,
    )
    await source.startup()
    try:
        if phase == "old":  # start-ups writing straight into Redis, as FastAPI-template does
            kick = {name: broker.find_task(name).kicker() for name in broker.get_all_tasks()}
            await kick["app:report"].schedule_by_cron(redis_child, "0 9 * * 1", 1)
            await kick["app:digest"].schedule_by_interval(
                redis_child, 60, datetime(2026, 1, 1, tzinfo=timezone.utc)
            )
            await kick["app:digest"].schedule_by_interval(redis_child, 60, "2026-01-01T00:00:00Z")
            await kick["app:digest"].schedule_by_interval(
                redis_child, 60, "2026-01-01T01:00:00+01:00"
            )
            await kick["app:plain"].schedule_by_interval(source, 60, 7)
            pinned = kick["app:plain"].with_labels(dedup_id="hourly")
            await pinned.schedule_by_interval(source, 60, 8)
        rows = []
        for task in await source.get_schedules():
            entry = source.schedules[task.schedule_id]
            rows.append(
                {
                    "task": task.task_name,
                    "trigger": task.cron or f"every {task.interval}s",
                    "args": json.dumps(task.args),
                    "id": task.schedule_id,
                    "claim_id": entry.schedule_id,
                    "copies": len(entry.origins),
                    "sent": await fire(source, task),
                }
            )
        return rows
    finally:
        await source.shutdown()


def _run_phase(phase: str, redis_url: str, code: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": f"{code}{os.pathsep}{ROOT}"}
    output = subprocess.run(
        [sys.executable, "-m", "tests.reliability.id_upgrade", "--phase", phase, redis_url],
        env=env,
        cwd=tempfile.gettempdir(),  # so the working tree's package is not picked first
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows: list[dict[str, Any]] = json.loads(output.splitlines()[-1])
    return rows


def main() -> None:
    """Run both phases against a private redis-server and print what changed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old-ref", help="git ref of the old version")
    parser.add_argument("--phase", choices=["old", "new"], help=argparse.SUPPRESS)
    parser.add_argument("redis_url", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(asyncio.run(_phase(args.phase, args.redis_url))))
        return
    if not args.old_ref:
        parser.error("--old-ref is required")
    from tests.support.redis_server import RedisServer  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as old_tree:
        archive = subprocess.run(
            ["git", "archive", args.old_ref, "taskiq_dedup"],
            cwd=ROOT,
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", old_tree], input=archive, check=True)
        server = RedisServer().start()
        try:
            old = _run_phase("old", server.url, Path(old_tree))
            new = _run_phase("new", server.url, ROOT)
        finally:
            server.close()
    print(f"old ({args.old_ref}):")
    for row in old:
        print("  ", json.dumps(row))
    print("new (working tree), same slot, same Redis:")
    for row in new:
        print("  ", json.dumps(row))


if __name__ == "__main__":
    main()
