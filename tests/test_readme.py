"""The README's quick start, run as written: real taskiq processes on a private Redis.

The code blocks are taken from README.md, so the README cannot drift from code
that works: the broker survives an idle worker, the scheduler command names the
task modules, registering after ``source.startup()`` writes one copy, and the
pickle-to-JSON migration moves old schedules.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
from redis import Redis as SyncRedis
from taskiq import ScheduledTask
from taskiq.serializers import JSONSerializer
from taskiq_redis import ListQueueBroker, ListRedisScheduleSource

from taskiq_dedup import CompositeScheduleSource
from taskiq_dedup.broker_checks import blocking_pop_timeout
from tests.support.processes import PROJECT_ROOT, ProcessGroup, wait_until
from tests.support.redis_server import RedisServer

README = PROJECT_ROOT / "README.md"
IDLE_SECONDS = 7.0
"""How long the worker sits idle before a firing arrives: longer than redis-py 8's
default 5 s socket timeout, which kills a ``ListQueueBroker`` worker's BRPOP."""
WORKER_DIED = "is dead. Scheduling reload"
"""taskiq's process manager, restarting a worker process that raised."""
BRPOP_TIMED_OUT = "Timeout reading from"
"""redis-py's TimeoutError message when a socket timeout ends a read."""
FIRING_TIMEOUT = 60.0
"""Scheduler start-up, its first fetch, the send and the run, on a loaded machine."""

REGISTER_DUE_ONE_OFF = """
import asyncio
from datetime import datetime, timezone

from tkq import report, source


async def main() -> None:
    await source.startup()
    await report.kicker().schedule_by_time(source, datetime.now(timezone.utc))
    await source.shutdown()


asyncio.run(main())
"""
"""Test-only: a one-off due now, so the scheduler sends a firing at once."""


def block(first_line: str, language: str = "python") -> str:
    """The README code block of ``language`` whose first line is ``first_line``."""
    for match in re.finditer(rf"```{language}\n(.*?)```", README.read_text(), re.DOTALL):
        if match.group(1).startswith(first_line):
            return match.group(1)
    raise AssertionError(f"README.md has no {language} block starting {first_line!r}")


def command(program: str) -> list[str]:
    """The README's ``taskiq <program> …`` command line, without its comment."""
    for line in block("taskiq worker tkq:broker", "bash").splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == ["taskiq", program]:
            return words[1:]
    raise AssertionError(f"README.md has no `taskiq {program}` line")


@pytest.mark.processes
def test_quick_start_runs_as_written(
    tmp_path: Path, own_redis: RedisServer, processes: ProcessGroup
) -> None:
    (tmp_path / "tkq.py").write_text(block("# tkq.py\n"))
    (tmp_path / "register.py").write_text(block("# register.py"))
    (tmp_path / "due.py").write_text(REGISTER_DUE_ONE_OFF)
    env = {"REDIS_URL": own_redis.url, "PYTHONPATH": str(tmp_path)}
    processes.env.update(env)
    run_env = {**os.environ, **env}
    for _ in range(2):  # two start-ups register the same schedule
        subprocess.run([sys.executable, "register.py"], cwd=tmp_path, env=run_env, check=True)
    redis = SyncRedis.from_url(own_redis.url)
    try:
        assert redis.llen("schedules-prod:cron") == 1

        worker = processes.taskiq("worker", *command("worker"), "--workers", "1")
        wait_until(lambda: "Listening started" in worker.output(), timeout=30)
        time.sleep(IDLE_SECONDS)  # the condition under test is idleness itself
        subprocess.run([sys.executable, "due.py"], cwd=tmp_path, env=run_env, check=True)
        processes.taskiq("scheduler", *command("scheduler"))
        wait_until(
            lambda: any(redis.scan_iter(match="taskiq-dedup:prod:run:*")),
            timeout=FIRING_TIMEOUT,
            message=processes.logs(),
        )
        wait_until(lambda: "Executing task tkq:report" in worker.output(), timeout=10)
    finally:
        redis.close()
    assert worker.alive()
    assert WORKER_DIED not in worker.output(), worker.output()
    assert BRPOP_TIMED_OUT not in worker.output(), worker.output()
    assert "socket timeout" not in worker.output()  # the start-up check stayed quiet


@pytest.mark.processes
def test_without_the_timeout_fix_an_idle_worker_fails(
    tmp_path: Path, own_redis: RedisServer, processes: ProcessGroup
) -> None:
    """The control for the quick start: the README's fix is what keeps the worker alive."""
    default = blocking_pop_timeout(ListQueueBroker(own_redis.url))
    if default is None:
        pytest.skip("this redis-py gives connections no socket timeout by default")
    quick_start = block("# tkq.py\n")
    assert quick_start.count(", socket_timeout=None)") == 1
    (tmp_path / "tkq.py").write_text(quick_start.replace(", socket_timeout=None", ""))
    processes.env.update({"REDIS_URL": own_redis.url, "PYTHONPATH": str(tmp_path)})
    worker = processes.taskiq("worker", *command("worker"), "--workers", "1")
    wait_until(
        lambda: BRPOP_TIMED_OUT in worker.output() and WORKER_DIED in worker.output(),
        timeout=default + 30,
        message=worker.output(),
    )
    assert "Create the broker with socket_timeout=None" in worker.output()  # the warning


async def test_pickle_to_json_migration_snippet(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    old = ListRedisScheduleSource(own_redis.url, prefix="schedules-prod")  # pickle
    await old.add_schedule(
        ScheduledTask(task_name="tkq:report", labels={}, args=[], kwargs={}, cron="0 * * * *")
    )
    # The problem the snippet solves: a JSON source on the pickled keys fetches nothing.
    as_json = ListRedisScheduleSource(
        own_redis.url, prefix="schedules-prod", serializer=JSONSerializer()
    )
    broken = CompositeScheduleSource([as_json], redis_url=own_redis.url, prefix="taskiq-dedup:prod")
    await broken.startup()
    try:
        assert await broken.get_schedules() == []
        assert broken.stats.child_fetch_errors == 1
        assert any("keeping its 0 schedules" in r.getMessage() for r in caplog.records)
    finally:
        await broken.shutdown()

    namespace: dict[str, object] = {"REDIS_URL": own_redis.url}
    exec(block("# tkq.py, while old pickled"), namespace)  # noqa: S102 -- the README's code
    redis_source = namespace["redis_source"]
    assert isinstance(redis_source, ListRedisScheduleSource)
    source = CompositeScheduleSource(
        [redis_source], redis_url=own_redis.url, prefix="taskiq-dedup:prod"
    )
    await source.startup()
    try:
        schedules = await source.get_schedules()
    finally:
        await source.shutdown()
    assert [(s.task_name, s.cron) for s in schedules] == [("tkq:report", "0 * * * *")]
    assert source.stats.child_fetch_errors == 0
    assert await old.get_schedules() == []  # moved, not copied
    await old.shutdown()
