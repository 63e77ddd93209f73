"""The demo: its counting, and short end-to-end runs with real processes."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from taskiq import InMemoryBroker
from taskiq.exceptions import ScheduledTaskCancelledError
from taskiq.schedule_sources import LabelScheduleSource

from examples.fastapi_app.demo import report, table
from examples.fastapi_app.executions import Execution
from taskiq_dedup import CompositeScheduleSource, DedupMiddleware
from tests.support.processes import ManagedProcess, ProcessGroup, wait_until

MINUTE = 1_800_000_000 // 60 * 60  # a minute boundary, in epoch seconds
TICK = report.Schedule("tick-id", "example:tick", "interval", every=3, origins=("label",))
CRON = report.Schedule("cron-id", "example:report", "cron", cron="* * * * *", origins=("label",))
DEMO_TIMEOUT = 120.0


def run_of(
    schedule: report.Schedule, slot: int | None, at: float, sid: str | None = None
) -> Execution:
    schedule_id = schedule.schedule_id if sid is None else sid
    return Execution(schedule.task, schedule_id, slot, f"{schedule_id}-{slot}", 1, at)


# ------------------------------------------------------------------ counting


def test_due_slots_keep_to_the_window() -> None:
    window = (MINUTE + 1.5, MINUTE + 61.0)
    # Buckets starting at or after 1.5 s whose end + 5 s settle is before 61 s.
    assert TICK.due_slots(*window, settle=5) == list(range(MINUTE + 3, MINUTE + 52, 3))
    assert CRON.due_slots(*window, settle=5) == []  # minute + 60 + 5 > end
    assert CRON.due_slots(MINUTE + 1.5, MINUTE + 65.0, settle=5) == [MINUTE + 60]
    assert CRON.due_slots(MINUTE, MINUTE + 5, settle=5) == [MINUTE]


def test_slot_of_a_run_without_a_slot_label() -> None:
    assert TICK.slot_at(MINUTE + 5.9) == MINUTE + 3
    assert CRON.slot_at(MINUTE + 59.9) == MINUTE
    assert CRON.slot_at(MINUTE + 60.0) == MINUTE + 60


def test_exactly_once_needs_every_slot_once() -> None:
    window = (MINUTE + 0.0, MINUTE + 20.0)  # tick slots 0, 3, 6, 9, 12 are due
    due = TICK.due_slots(*window, settle=5)
    assert due == [MINUTE + s for s in (0, 3, 6, 9, 12)]
    once = [run_of(TICK, slot, slot + 0.2) for slot in due]
    ok = report.build_report([TICK], once, window=window, settle=5, as_shipped=False)
    assert ok.exactly_once
    assert "OK: each of the 5 slots due ran exactly once" in table.format_verdict(ok)

    missing = report.build_report([TICK], once[1:], window=window, settle=5, as_shipped=False)
    assert not missing.exactly_once
    assert missing.rows[0].missed == [MINUTE]

    # A duplicate fails the run even outside the window.
    early = run_of(TICK, MINUTE - 3, MINUTE - 2.8)
    twice = report.build_report(
        [TICK], [*once, early, early], window=window, settle=5, as_shipped=False
    )
    assert twice.rows[0].duplicates == 1
    assert "FAILED" in table.format_verdict(twice)

    empty = report.build_report([TICK], [], window=(0.0, 1.0), settle=5, as_shipped=False)
    assert not empty.exactly_once  # nothing due is not a pass


def test_as_shipped_runs_are_matched_by_task_and_time() -> None:
    window = (MINUTE + 0.0, MINUTE + 65.0)
    runs = [run_of(CRON, None, MINUTE + 60.3, sid=f"copy-{n}") for n in range(6)]
    result = report.build_report([CRON], runs, window=window, settle=5, as_shipped=True)
    row = result.rows[0]
    assert row.due == [MINUTE, MINUTE + 60]
    assert row.runs == Counter({MINUTE + 60: 6})
    assert row.per_slot == "3.0 (0-6)"
    assert row.duplicates == 5
    assert "AS SHIPPED" in table.format_verdict(result)


def test_log_lines_are_counted_per_firing() -> None:
    logs = [
        "x Firing 1800000000 of schedule cron-id was sent by h:1#a; not sending it again\n"
        "x Firing 1800000000 of schedule cron-id was sent by h:1#a; not sending it again\n",
        "y Duplicate task t-1 (example:report) not executed: env:demo:run:cron-id:1800000000 "
        "is done, held by task t-0 on h:2\n",
    ]
    assert report.count_lines(logs, report.CANCELLED_LINE, "claim") == {
        ("cron-id", 1_800_000_000): 2
    }
    assert report.count_lines(logs, report.DROPPED_LINE, "run") == {("cron-id", 1_800_000_000): 1}
    assert report.firing_of_key("env:run:x", "run") is None


async def test_counts_the_lines_the_package_really_logs(
    redis: AsyncRedis, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The log patterns match taskiq-dedup's own wording, not a copy of it."""
    caplog.set_level(logging.INFO, logger="taskiq_dedup")
    broker = InMemoryBroker().with_middlewares(DedupMiddleware(redis=redis, prefix=prefix))
    task = broker.register_task(lambda: None, task_name="example:noop")
    source = CompositeScheduleSource([LabelScheduleSource(broker)], redis=redis, prefix=prefix)
    broker.register_task(
        lambda: None, task_name="example:every-minute", schedule=[{"cron": "* * * * *"}]
    )
    await broker.startup()
    await source.startup()
    try:
        (scheduled,) = await source.get_schedules()
        sent = scheduled.model_copy()
        await source.pre_send(sent)
        await source.post_send(sent)  # the broker took it: confirmed
        with pytest.raises(ScheduledTaskCancelledError):
            await source.pre_send(scheduled.model_copy())
        firing: dict[str, str | int] = {"schedule_id": "sid", "dedup_slot": MINUTE}
        await task.kicker().with_labels(**firing).kiq()
        await broker.wait_all()
        await task.kicker().with_labels(**firing).kiq()
        await broker.wait_all()
    finally:
        await source.shutdown()
        await broker.shutdown()
    slot = int(sent.labels["dedup_slot"])
    cancelled = report.count_lines([caplog.text], report.CANCELLED_LINE, "claim")
    assert cancelled == {(scheduled.schedule_id, slot): 1}
    assert report.count_lines([caplog.text], report.DROPPED_LINE, "run") == {("sid", MINUTE): 1}


def test_table_has_a_row_per_schedule() -> None:
    result = report.build_report(
        [TICK, CRON], [], window=(MINUTE + 0.0, MINUTE + 20.0), settle=5, as_shipped=False
    )
    lines = table.format_table(result).splitlines()
    assert lines[0].split()[:3] == ["schedule", "trigger", "origins"]
    assert [line.split()[0] for line in lines[1:]] == ["example:tick", "example:report"]


# ------------------------------------------------------------ end to end


def start_demo(processes: ProcessGroup, tmp_path: Path, *args: str) -> ManagedProcess:
    return processes.spawn(
        "demo",
        [
            *(sys.executable, "-m", "examples.fastapi_app.demo"),
            *("--log-dir", str(tmp_path / "demo"), "--json", str(tmp_path / "demo.json")),
            *args,
        ],
    )


def finish(demo: ManagedProcess, processes: ProcessGroup) -> tuple[int, str]:
    try:
        code = demo.popen.wait(timeout=DEMO_TIMEOUT)
    except Exception:
        pytest.fail(f"demo did not finish:\n{processes.logs()}")
    return code, demo.output()


def prefix_of(output: str) -> str:
    match = re.search(r"Key prefix: (\S+)", output)
    assert match, output
    return match.group(1)


def processes_with(prefix: str) -> list[int]:
    """Pids of live processes whose environment carries the demo's prefix."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"DEDUP_PREFIX={prefix}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def figures(tmp_path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "demo.json").read_text())
    data["by_task"] = {s["task"]: s for s in data["schedules"]}
    return data


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")


@pytest.mark.processes
@needs_proc
def test_demo_runs_every_slot_exactly_once(
    processes: ProcessGroup,
    tmp_path: Path,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", redis_url)  # the external-Redis path: keys cleaned up
    demo = start_demo(processes, tmp_path, "--duration", "25", "--workers", "2")
    code, output = finish(demo, processes)
    assert code == 0, output
    prefix = prefix_of(output)

    assert "OK: each of the" in output
    header = next(line for line in output.splitlines() if line.startswith("schedule "))
    assert "cancelled at schedulers" in header
    assert "dropped at worker" in header
    data = figures(tmp_path)
    assert data["mode"] == "taskiq-dedup"
    assert data["exactly_once"] is True
    tick = data["by_task"]["example:tick"]
    assert tick["slots_due"] >= 4
    assert set(tick["executions_per_slot"].values()) == {1}
    assert tick["duplicates"] == 0
    # 2 web workers + 2 schedulers fire each tick (3 cancelled per slot when all
    # four fire in a bucket): many firings were stopped at the schedulers.
    assert tick["cancelled_at_schedulers"] >= 2 * tick["slots_due"]
    for schedule in data["schedules"]:
        assert schedule["missed"] == []
        assert schedule["duplicates"] == 0
    assert [o for s in data["schedules"] for o in s["origins"]].count("redis") == 1

    assert processes_with(prefix) == []
    with Redis.from_url(redis_url) as client:
        assert list(client.scan_iter(match=f"{prefix}:*")) == []


@pytest.mark.processes
@needs_proc
def test_as_shipped_runs_each_slot_once_per_scheduler(
    processes: ProcessGroup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)  # the embedded redis-server path
    demo = start_demo(processes, tmp_path, "--as-shipped", "--duration", "25", "--workers", "2")
    code, output = finish(demo, processes)
    assert code == 0, output
    assert "embedded" in output
    assert "AS SHIPPED" in output

    data = figures(tmp_path)
    assert data["mode"] == "as-shipped"
    assert data["exactly_once"] is False
    tick = data["by_task"]["example:tick"]
    assert tick["slots_due"] >= 4
    # Each of 2 web workers and 2 schedulers sends every tick: far more than once.
    assert min(tick["executions_per_slot"].values()) > 1
    assert tick["duplicates"] >= tick["slots_due"]
    # The start-up registration left one copy per web worker in Redis.
    assert data["by_task"]["example:digest"]["origins"] == ["redis", "redis"]
    assert processes_with(prefix_of(output)) == []


@pytest.mark.processes
@needs_proc
def test_interrupted_demo_stops_every_process(
    processes: ProcessGroup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    demo = start_demo(processes, tmp_path, "--duration", "60", "--workers", "2")
    wait_until(
        lambda: "Measuring" in demo.output() or not demo.alive(),
        timeout=DEMO_TIMEOUT,
        message="the demo never started measuring",
    )
    prefix = prefix_of(demo.output())
    assert len(processes_with(prefix)) >= 5  # worker, uvicorn + 2, 2 schedulers (+ children)
    os.kill(demo.pid, signal.SIGINT)
    code, output = finish(demo, processes)
    assert code == 130, output
    assert "Interrupted" in output
    assert processes_with(prefix) == []
