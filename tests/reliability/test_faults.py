"""Short fault runs: real processes, a fixed seed, every firing counted.

Each scenario is the soak's (``python -m tests.reliability.soak``), cut to tens
of seconds. Assertions are on counts only: no firing executed twice and none
missed, except what the scenario's fault explains (a Redis outage longer than
the claim retry window; a restart without persistence forgetting claims), and
those show up in the logs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.scenarios import SCENARIOS, run_scenario

pytestmark = pytest.mark.processes

SEED = 20260310

SHORT_RUNS = {
    "scheduler-kill": 20.0,
    "worker-kill": 20.0,
    "redis-restart": 15.0,
    "redis-outage": 22.0,
    "clock-skew": 8.0,  # runs on until a cron firing was due
    "latency": 15.0,
}
"""Seconds of faults per scenario: about 3 minutes in all with start-up and drain."""


@pytest.mark.parametrize("name", list(SHORT_RUNS))
def test_fault_scenario(name: str, tmp_path: Path) -> None:
    result = run_scenario(SCENARIOS[name], duration=SHORT_RUNS[name], seed=SEED, log_dir=tmp_path)
    summary = (
        f"{result.row()}\ndue={result.due} executed={result.executed} "
        f"duplicates={result.duplicates} missed={result.missed}"
    )
    assert not result.violations(), f"{result.violations()}\n{summary}\n{result.logs}"
    assert result.executed + result.missed == result.due
    assert result.duplicates == result.duplicates_explained
