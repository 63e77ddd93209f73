"""Firing lateness: how long after its slot a firing is in the queue.

Real ``taskiq scheduler`` processes (the stock command) run
``benchmarks.apps.lateness_app``: 100 schedules of ``interval=1`` declared on a
task, so every loop tick sends 100 firings. A middleware last in the broker's
list notes the wall time each ``kick`` returned. taskiq's loop ticks on whole
seconds, so a firing's slot is the second of its tick: the ``dedup_slot``
label where the composite sets one, else the whole second before the enqueue
(exact while a firing is less than a second late; the firings-per-tick check
shows that held). Lateness = enqueue time - slot.

- ``bare``: taskiq as shipped, one scheduler, the ``LabelScheduleSource``;
- ``dedup``: one scheduler, that source in a ``CompositeScheduleSource``, and
  ``DedupMiddleware`` on the broker;
- ``dedup_x3``: three such schedulers (the lateness of the firing each won);
- ``split_x3`` (calibration): three stock schedulers whose sources cancel every
  firing outside a partition fixed in advance (``apps.split``): no claim, no
  Redis call; what three schedulers of the same schedules cost on this machine
  before any coordination.

The arms take turns (one at a time, so they do not compete for the CPU); each
run discards a warm-up and keeps a window of whole seconds.
"""

from __future__ import annotations

import functools
import math
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.harness import Config, Measurement, Result, interleave_sync, percentile, summary
from benchmarks.servers import private_redis
from tests.support.processes import ProcessGroup

NAME = "lateness"
APP = "benchmarks.apps.lateness_app:scheduler"
SCHEDULES = 100
WARMUP = 5.0
"""Seconds for a scheduler process to import, start and settle before the window."""
STOP_TIMEOUT = 15.0
QUANTILES = sorted({*range(101), 99.5, 99.9})
"""Percentiles of each arm's pooled lateness kept in the JSON: a bounded CDF for the plot."""
ARMS = {
    "bare": ("bare", 1),
    "dedup": ("dedup", 1),
    "split_x3": ("split", 3),
    "dedup_x3": ("dedup", 3),
}
LABELS = {
    "bare": "taskiq as shipped, 1 scheduler",
    "dedup": "CompositeScheduleSource, 1 scheduler",
    "split_x3": "3 stock schedulers, partitioned in advance (calibration)",
    "dedup_x3": "CompositeScheduleSource, 3 schedulers",
}


class Lateness:
    """Runs one arm's schedulers for one window and reads their records."""

    def __init__(self, url: str, window: int, log_dir: Path) -> None:
        self.url = url
        self.window = window
        self.log_dir = log_dir
        self.checks: list[dict[str, object]] = []
        self.samples: dict[str, list[float]] = {arm: [] for arm in ARMS}
        """Every firing's lateness (ms) per arm, over all repetitions."""

    def run(self, arm: str) -> Measurement:
        kind, processes = ARMS[arm]
        run_id = f"bench-{uuid.uuid4().hex[:8]}"
        records = self.log_dir / f"{run_id}.txt"
        env = {
            "REDIS_URL": self.url,
            "ARM": kind,
            "PREFIX": run_id,
            "SCHEDULES": str(SCHEDULES),
            "RECORD_FILE": str(records),
        }
        with ProcessGroup(self.log_dir / run_id, env) as group:
            started = time.time()
            schedulers = [
                group.scheduler(
                    APP,
                    name=f"scheduler-{index}",
                    env={"SPLIT_INDEX": str(index), "SPLIT_OF": str(processes)},
                )
                for index in range(processes)
            ]
            first = math.ceil(started + WARMUP)
            last = first + self.window  # the window is [first, last)
            time.sleep(max(0.0, last + 0.5 - time.time()))
            for scheduler in schedulers:
                scheduler.signal_group(signal.SIGINT)
            stop_timeouts = 0
            for scheduler in schedulers:
                try:
                    scheduler.popen.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    stop_timeouts += 1  # killed on leaving the group; its records are flushed
            if not records.exists():
                raise RuntimeError(f"{arm}: no records\n{group.logs()}")
        late: list[float] = []
        slot_differs = 0
        for line in records.read_text().splitlines():
            enqueued_text, slot_text = line.split()
            enqueued = float(enqueued_text)
            slot = int(slot_text) if slot_text != "-" else math.floor(enqueued)
            if not first <= slot < last:
                continue
            slot_differs += slot != math.floor(enqueued)
            late.append((enqueued - slot) * 1000)
        expected = SCHEDULES * self.window
        self.checks.append(
            {
                "arm": arm,
                "firings": len(late),
                "expected": expected,
                "enqueued_in_a_later_second": slot_differs,
                "schedulers_killed_after_sigint_timeout": stop_timeouts,
            },
        )
        if not late:
            raise RuntimeError(f"{arm}: no firing in the window")
        self.samples[arm].extend(late)
        return {
            "p50_ms": percentile(late, 50),
            "p99_ms": percentile(late, 99),
            "firings_per_expected": len(late) / expected,
        }


def run(config: Config) -> Result:
    """Run each arm's schedulers in turn and compare lateness to bare taskiq."""
    window = 3 if config.quick else 10
    reps = config.repetitions(full=5, quick=1)
    result = Result(
        name=NAME,
        title="Firing lateness",
        method=(__doc__ or "").strip(),
        params={
            "schedules": SCHEDULES,
            "interval_s": 1,
            "window_s": window,
            "warmup_s": WARMUP,
            "repetitions": reps,
        },
    )
    with private_redis() as server, tempfile.TemporaryDirectory(prefix="bench-late-") as logs:
        lateness = Lateness(server.url, window, Path(logs))
        results = interleave_sync({arm: functools.partial(lateness.run, arm) for arm in ARMS}, reps)
    for metric in ("p50_ms", "p99_ms"):
        for arm in ARMS:
            result.add(
                results, arm, metric, "ms", baseline="bare", label=f"{LABELS[arm]}: {metric[:3]}"
            )
        result.add(
            results,
            "dedup_x3",
            metric,
            "ms",
            baseline="split_x3",
            label=f"{LABELS['dedup_x3']} vs the calibration: {metric[:3]}",
        )
    result.checks["runs"] = lateness.checks
    result.distributions["lateness_ms"] = {
        arm: {
            "firings": len(samples),
            "percentiles": [[q, percentile(samples, q)] for q in QUANTILES],
        }
        for arm, samples in lateness.samples.items()
    }
    result.checks["firings_per_expected"] = {
        arm: summary([m["firings_per_expected"] for m in results[arm]]) for arm in ARMS
    }
    return result
