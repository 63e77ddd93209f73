"""Executions per slot: the demo's set-up as shipped and with taskiq-dedup.

The README's headline figure, measured in this run: ``python -m
examples.fastapi_app.demo`` (``./dev demo``, see its README) started as a
subprocess with ``--json``, once per arm and repetition, each on the embedded
``redis-server`` the demo starts for itself. The set-up is the demo's own:
``uvicorn --workers 4`` with a scheduler inside every web worker, two more
``taskiq scheduler`` processes and one ``taskiq worker``, measured until past a
cron minute boundary (about 70 s a run). The demo counts, per schedule and slot
due in its window, how often the firing ran (from the executions the tasks
recorded).

- ``as_shipped``: ``--as-shipped`` (``DEDUP_DISABLED=1``): taskiq as shipped;
- ``dedup``: the same processes with ``CompositeScheduleSource`` and ``DedupMiddleware``.

The figure per arm is executions per slot due (1 is correct), for the cron
schedules and the interval schedule; the ratio is ``dedup / as_shipped``.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.environment import PROJECT_ROOT
from benchmarks.harness import Config, Goal, Measurement, Result, interleave_sync

NAME = "demo"
DEMO = "examples.fastapi_app.demo"
ARMS = {"as_shipped": ["--as-shipped"], "dedup": []}
LABELS = {"as_shipped": "taskiq as shipped", "dedup": "with taskiq-dedup"}
RUN_TIMEOUT = 400.0
"""Seconds one demo run may take: start-up (~15 s on 2 cores), up to 80 s of window, stop."""


def per_slot(schedules: list[dict[str, Any]], kind: str) -> list[int]:
    """Executions of every slot due, over the schedules whose trigger starts with ``kind``."""
    return [
        count
        for schedule in schedules
        if schedule["trigger"].startswith(kind)
        for count in schedule["executions_per_slot"].values()
    ]


class Demo:
    """Runs the demo once per call and keeps each slot's executions for the plot."""

    def __init__(self, log_dir: Path, workers: int, schedulers: int) -> None:
        self.log_dir = log_dir
        self.workers = workers
        self.schedulers = schedulers
        self.runs = 0
        self.checks: list[dict[str, Any]] = []
        self.slots: dict[str, dict[str, list[int]]] = {arm: {} for arm in ARMS}
        """Per arm, per schedule (``task (trigger)``): executions of each slot due."""

    def run(self, arm: str) -> Measurement:
        self.runs += 1
        output = self.log_dir / f"{self.runs}-{arm}.json"
        log = self.log_dir / f"{self.runs}-{arm}.log"
        argv = [sys.executable, "-m", DEMO, *ARMS[arm], "--json", str(output)]
        argv += ["--workers", str(self.workers), "--schedulers", str(self.schedulers)]
        argv += ["--log-dir", str(self.log_dir / f"{self.runs}-{arm}")]
        # Without REDIS_URL the demo starts its own redis-server: never the shared one.
        env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
        with log.open("wb") as out:
            completed = subprocess.run(
                argv,
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=RUN_TIMEOUT,
                check=False,
            )
        if not output.exists():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"{arm}: the demo exited {completed.returncode}:\n{tail}")
        figures = json.loads(output.read_text())
        schedules = figures["schedules"]
        for schedule in schedules:
            name = f"{schedule['task']} ({schedule['trigger']})"
            self.slots[arm].setdefault(name, []).extend(schedule["executions_per_slot"].values())
        cron, interval = per_slot(schedules, "cron"), per_slot(schedules, "every")
        if not cron or not interval:
            raise RuntimeError(f"{arm}: no cron or interval slot was due: {schedules}")
        duplicates = sum(s["duplicates"] for s in schedules)
        missed = sum(len(s["missed"]) for s in schedules)
        self.checks.append(
            {
                "arm": arm,
                "exit_code": figures["exit_code"],
                "slots_due": sum(s["slots_due"] for s in schedules),
                "duplicates": duplicates,
                "missed": missed,
                "unmatched_executions": figures["unmatched_executions"],
                "claim_errors": figures["claim_errors"],
            }
        )
        return {
            "cron_per_slot": statistics.mean(cron),
            "interval_per_slot": statistics.mean(interval),
            "duplicates": duplicates,
            "missed": missed,
        }


def run(config: Config) -> Result:
    """Run the demo as shipped and with taskiq-dedup, in turns; compare executions per slot."""
    reps = config.repetitions(full=2, quick=1)
    workers, schedulers = 4, 2  # the demo's defaults: its README's set-up
    result = Result(
        name=NAME,
        title="Executions per slot in the demo",
        method=(__doc__ or "").strip(),
        params={"uvicorn_workers": workers, "scheduler_processes": schedulers, "repetitions": reps},
    )
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as logs:
        demo = Demo(Path(logs), workers, schedulers)
        results = interleave_sync({arm: functools.partial(demo.run, arm) for arm in ARMS}, reps)
    for metric, what in (("cron_per_slot", "cron"), ("interval_per_slot", "every 3 s")):
        for arm in ARMS:
            result.add(
                results,
                arm,
                metric,
                "executions/slot",
                baseline="as_shipped",
                label=f"{LABELS[arm]}: {what} slots",
            )
    result.checks["runs"] = demo.checks
    result.distributions["executions_per_slot"] = demo.slots
    worst = max(m["duplicates"] + m["missed"] for m in results["dedup"])
    result.goals.append(
        Goal(
            text="with taskiq-dedup every slot due runs exactly once (0 duplicates, 0 missed)",
            value=worst,
            met=worst == 0,
            detail=f"max duplicates + missed per run over {reps} run(s)",
        )
    )
    return result
