"""Short fault runs: real processes, a fixed seed, every firing counted.

Each scenario is the soak's (``python -m tests.reliability.soak``), cut to seconds.
Assertions are on counts only: no firing executed twice and none missed, except
what the measured fault explains (see ``scenarios``: a miss only inside an outage
the claim retries cannot outlast, at most one extra run per schedule per restart
without persistence). ``test_checker_catches_an_unguarded_run`` shows the same
checks failing when the guard is off; ``test_checker.py`` shows each excuse
refusing what its fault does not explain.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.scenarios import SCENARIOS, run_scenario

pytestmark = pytest.mark.processes

SEED = 20260310

SHORT_RUNS = {
    "baseline": 8.0,
    "no-skip-first-run": 6.0,  # the crons' start-up firings are the point
    "scheduler-kill": 20.0,
    "worker-kill": 20.0,
    "redis-restart": 15.0,
    "redis-restart-aof": 12.0,
    "redis-outage": 22.0,
    "clock-skew": 8.0,  # runs on until a cron firing was due
    "clock-skew-beyond": 18.0,  # the late clock re-sends slots from 15 s in
    "latency": 15.0,
    "sick-replica": 8.0,
}
"""Seconds of faults per scenario: about 4 minutes in all with start-up and drain."""


@pytest.mark.parametrize("name", list(SHORT_RUNS))
def test_fault_scenario(name: str, tmp_path: Path) -> None:
    result = run_scenario(SCENARIOS[name], duration=SHORT_RUNS[name], seed=SEED, log_dir=tmp_path)
    summary = (
        f"{result.row()}\ndue={result.due} executed={result.executed} "
        f"duplicates={result.duplicates} missed={result.missed}"
    )
    assert not result.violations(), f"{result.violations()}\n{summary}\n{result.logs}"
    if not SCENARIOS[name].persistent and name.startswith("redis-restart"):
        return  # the one fault allowed its bounded duplicates
    assert result.duplicates == 0, summary


def test_checker_catches_an_unguarded_run(tmp_path: Path) -> None:
    """The baseline without the guard: three schedulers all send, workers run all."""
    result = run_scenario(
        SCENARIOS["baseline"], duration=6.0, seed=SEED, log_dir=tmp_path, guard=False
    )
    summary = f"{result.row()}\n{result.violations()}"
    assert result.due > 0, summary
    assert result.duplicates >= result.due, summary  # about two extra runs per firing
    assert result.duplicates_explained == 0, summary
    assert any(v.startswith("duplicates:") for v in result.violations()), summary
