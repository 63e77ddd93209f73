"""Run the example with many schedulers for about a minute and count every firing.

Started, each in its own process group and all stopped at the end (also on
Ctrl-C or an error): a ``taskiq worker``; ``uvicorn ... --workers N`` with
``EMBEDDED_SCHEDULER=1`` (a scheduler inside every web worker); ``--schedulers``
more ``taskiq scheduler`` processes. Redis is ``REDIS_URL`` or, without it, an
embedded ``redis-server``; every key lives under a fresh prefix, and with
``REDIS_URL`` exactly those keys are deleted afterwards (never ``FLUSHALL``).

Exit status: 0 if every slot due in the measured window ran exactly once (with
``--as-shipped``: if the run completed - that mode reports the duplication, it
does not check); 1 otherwise or if a process failed; 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import httpx
from redis import Redis

from examples.fastapi_app.demo import report, table
from examples.fastapi_app.demo.processes import Process, Processes
from examples.fastapi_app.executions import Execution, executions_key
from taskiq_dedup import KeySpace
from taskiq_dedup.connection import redacted
from taskiq_dedup.testing import RedisServer, free_port

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

WARMUP_MARGIN = 2.0
"""Seconds after every process reported ready before the window opens: a
scheduler's loop first fetches its schedules and waits for a whole second."""

SETTLE = 5.0
"""Seconds a firing gets to be sent and executed before the run ends."""

MIN_LEAD = 20.0
"""The default run lasts until the first minute boundary at least this long
after warm-up, plus ``SETTLE``: every run measures one cron firing."""

PROGRESS_EVERY = 5.0
READY_TIMEOUT = 120.0
"""Seconds the processes get to start (4 web workers on 2 cores take ~15)."""

SCHEDULER_UPDATE_INTERVAL = 10
"""``taskiq scheduler --update-interval``: schedules added at start-up are
picked up within this long. Schedulers also get ``--skip-first-run`` (as the
web workers' loops do), so cron firings happen at the minute, not at the second
of the minute each scheduler happened to start (``embedded_scheduler``'s
``skip_first_run``)."""

APP = "examples.fastapi_app.app:app"
BROKER = "examples.fastapi_app.tkq:broker"
SCHEDULER = "examples.fastapi_app.tkq:scheduler"
TASKS = "examples.fastapi_app.tasks"


CHILD_DIED = re.compile(r"Child process \[\d+\] died|is dead\. Scheduling reload")
"""uvicorn's / taskiq worker's line when it replaces a child process that died."""


class DemoError(Exception):
    """The run could not be completed (a process failed to start or died)."""


def say(text: str = "") -> None:
    """Write one line of the demo's output."""
    print(text, flush=True)  # noqa: T201 -- the demo's output


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.fastapi_app.demo",
        description="FastAPI + Taskiq under uvicorn --workers with many schedulers: "
        "every firing counted.",
    )
    parser.add_argument(
        "--duration",
        type=float,
        help="seconds to measure after warm-up (default: until the first minute "
        f"boundary at least {MIN_LEAD:g} s after warm-up, plus {SETTLE:g} s)",
    )
    parser.add_argument("--workers", type=int, default=4, help="uvicorn workers (default 4)")
    parser.add_argument(
        "--schedulers",
        type=int,
        default=2,
        help="taskiq scheduler processes besides the web workers' (default 2)",
    )
    parser.add_argument(
        "--as-shipped",
        action="store_true",
        help="taskiq as shipped (DEDUP_DISABLED=1): show the duplicates this package removes",
    )
    parser.add_argument("--log-dir", type=Path, help="where the processes' logs go")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.schedulers < 0:
        parser.error("--workers must be >= 1 and --schedulers >= 0")
    if args.duration is not None and args.duration <= SETTLE:
        parser.error(f"--duration must be more than {SETTLE:g} s")
    return args


def _tail(process: Process, lines: int = 30) -> str:
    return "\n".join(process.output().splitlines()[-lines:])


def wait_for_lines(processes: list[Process], text: str, count: int, what: str) -> None:
    """Poll the processes' logs until ``text`` appeared ``count`` times in all."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        seen = sum(process.output().count(text) for process in processes)
        if seen >= count:
            return
        check_alive(processes)
        if time.monotonic() > deadline:
            raise DemoError(f"{what}: {seen} of {count} ready after {READY_TIMEOUT:g} s")
        time.sleep(0.2)


def check_alive(processes: list[Process]) -> None:
    """Raise ``DemoError`` with the log tail of a process that exited."""
    for process in processes:
        if not process.alive:
            raise DemoError(
                f"{process.name} exited ({process.popen.returncode}):\n{_tail(process)}",
            )
        if CHILD_DIED.search(process.output()):
            raise DemoError(f"a child process of {process.name} died:\n{_tail(process)}")


def start_all(procs: Processes, args: argparse.Namespace, port: int) -> list[Process]:
    """Start worker, web workers and schedulers; return once all are ready."""
    python = sys.executable
    receiver = [] if args.as_shipped else ["--receiver", "taskiq_dedup:DedupReceiver"]
    say("Starting 1 taskiq worker ...")
    worker = procs.start(
        "worker",
        [python, "-m", "taskiq", "worker", BROKER, TASKS, "--workers", "1", *receiver],
    )
    wait_for_lines([worker], "Listening started.", 1, "taskiq worker")
    say(f"Starting uvicorn --workers {args.workers}, a scheduler in every worker ...")
    web = procs.start(
        "uvicorn",
        [
            *(python, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", str(args.workers), "--no-access-log"),
        ],
        env={"EMBEDDED_SCHEDULER": "1"},
    )
    wait_for_lines([web], "Application startup complete.", args.workers, "web workers")
    wait_for_lines([web], "Embedded scheduler started", args.workers, "embedded schedulers")
    say(f"Starting {args.schedulers} taskiq scheduler processes ...")
    schedulers = [
        procs.start(
            f"scheduler-{index}",
            [
                *(python, "-m", "taskiq", "scheduler", SCHEDULER, TASKS),
                *("--update-interval", str(SCHEDULER_UPDATE_INTERVAL), "--skip-first-run"),
            ],
        )
        for index in range(1, args.schedulers + 1)
    ]
    wait_for_lines(schedulers, "Startup completed.", args.schedulers, "taskiq schedulers")
    return [worker, web, *schedulers]


def fetch_schedules(port: int) -> list[report.Schedule]:
    """List the schedules through the app's own API."""
    response = httpx.get(f"http://127.0.0.1:{port}/schedules", timeout=10)
    response.raise_for_status()
    return [report.Schedule.from_api(item) for item in response.json()]


def read_executions(client: Redis, key: str) -> list[Execution]:
    """Every execution the tasks recorded so far."""
    raw: list[bytes] = client.lrange(key, 0, -1)  # type: ignore[assignment]
    return [Execution.from_json(item) for item in raw]


def window_end(warm_end: float, duration: float | None) -> float:
    """End of the measured window: ``duration`` later, or past a minute boundary."""
    if duration is not None:
        return warm_end + duration
    boundary = math.ceil((warm_end + MIN_LEAD) / 60) * 60
    return boundary + SETTLE + 1


def measure(processes: list[Process], client: Redis, key: str, start: float, end: float) -> None:
    """Wait for the window to end, printing progress; fail early if a process dies."""
    next_line = start + PROGRESS_EVERY
    while (now := time.time()) < end:
        check_alive(processes)
        if now >= next_line:
            counts = Counter(e.task for e in read_executions(client, key))
            detail = ", ".join(f"{task} {n}" for task, n in sorted(counts.items()))
            say(
                f"  [{now - start:5.0f} s of {end - start:.0f}] executions so far: "
                f"{sum(counts.values())}" + (f" ({detail})" if detail else ""),
            )
            next_line += PROGRESS_EVERY
        time.sleep(min(0.5, max(0.0, end - now)))


def delete_keys(url: str, prefix: str) -> None:
    """Delete this run's keys (and only those) from a Redis the demo did not start."""
    with Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=KeySpace(prefix).pattern(), count=1000))
        for first in range(0, len(keys), 500):
            client.delete(*keys[first : first + 500])
    say(f"Deleted this run's {len(keys)} keys under {prefix}.")


def describe_schedules(schedules: list[report.Schedule]) -> None:
    """Print the schedules as the API listed them."""
    say("Schedules (GET /schedules: one entry per deterministic id, with its copies):")
    for schedule in schedules:
        origins = ", ".join(schedule.origins) or "-"
        say(f"  {schedule.task:<16} {schedule.trigger:<16} {schedule.schedule_id}  [{origins}]")


def run(args: argparse.Namespace) -> int:
    """Start everything, measure, stop everything, report; return the exit status."""
    mode = "taskiq as shipped (DEDUP_DISABLED=1)" if args.as_shipped else "taskiq-dedup"
    say(
        f"taskiq-dedup demo, {mode}: uvicorn --workers {args.workers} with a scheduler in "
        f"each, {args.schedulers} taskiq scheduler processes, 1 taskiq worker.",
    )
    with contextlib.ExitStack() as stack:
        url = os.environ.get("REDIS_URL")
        prefix = f"taskiq-dedup:demo-{uuid.uuid4().hex[:8]}"
        if url:
            say(f"Redis: REDIS_URL={redacted(url)}; only keys under the fresh prefix are used.")
            stack.callback(delete_keys, url, prefix)
        else:
            server = RedisServer()
            stack.callback(server.close)
            url = server.start().url
            say(f"Redis: no REDIS_URL, so started an embedded {server.binary} at {url}.")
        log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="taskiq-dedup-demo-"))
        say(f"Key prefix: {prefix}   Logs: {log_dir}")
        env = {
            "REDIS_URL": url,
            "DEDUP_PREFIX": prefix,
            "DEDUP_DISABLED": "1" if args.as_shipped else "0",
            "EMBEDDED_SCHEDULER": "0",
            "PYTHONUNBUFFERED": "1",
        }
        procs = stack.enter_context(Processes(log_dir, env))
        client = stack.enter_context(Redis.from_url(url))
        key = executions_key(KeySpace(prefix))
        port = free_port()
        processes = start_all(procs, args, port)
        start = time.time() + WARMUP_MARGIN
        schedules = fetch_schedules(port)
        describe_schedules(schedules)
        end = window_end(start, args.duration)
        say(f"Measuring {table.utc_time(start)}-{table.utc_time(end)} UTC ({end - start:.0f} s):")
        measure(processes, client, key, start, end)
        procs.stop_all()
        say("Stopped every process.")
        logs = [process.output() for process in processes]
        result = report.build_report(
            schedules,
            read_executions(client, key),
            window=(start, end),
            settle=SETTLE,
            as_shipped=args.as_shipped,
            cancelled=report.count_lines(logs, report.CANCELLED_LINE, "claim"),
            dropped=report.count_lines(logs, report.DROPPED_LINE, "run"),
            claim_errors=sum(len(report.CLAIM_ERROR_LINE.findall(text)) for text in logs),
        )
        say()
        say(table.format_table(result))
        say()
        say(table.format_verdict(result))
        code = 0 if (result.slots_due > 0 if args.as_shipped else result.exactly_once) else 1
        if args.json:
            args.json.write_text(json.dumps({**result.as_dict(), "exit_code": code}, indent=2))
        return code


def _interrupt(_signum: int, _frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; SIGTERM is handled like Ctrl-C, so the processes are stopped."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        say("Interrupted: every process the demo started was stopped.")
        return 130
    except (DemoError, httpx.HTTPError) as exc:
        say(f"FAILED: {exc}")
        return 1
