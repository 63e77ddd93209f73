"""The fault runs' checker on made-up evidence: it refuses what a fault does not explain.

No processes: ``tally`` reads a run's execution records, process logs and measured
faults, so each excuse is checked at its edges - a miss just inside and just
outside an outage, an instant restart, a second extra run after one restart, a
kill outside the firing's window - and every scenario's own expectation is shown
failing on a run that lacks its evidence.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.reliability import app
from tests.reliability.scenarios import (
    CLAIM_RETRY_WINDOW,
    LAST_RETRY_AFTER,
    SCENARIOS,
    Firing,
    Result,
    Scenario,
    due_firings,
    tally,
)

T0 = 1_800_000_000.0  # a whole minute: cron slots fall on it
WINDOW = (T0, T0 + 30.0)
SCHEDULE_IDS = {"interval": "sid-i", "dyn": "sid-d", "cron": "sid-c", "cron-tz": "sid-z"}


@dataclass
class Log:
    name: str
    text: str = ""

    def output(self) -> str:
        return self.text


@dataclass
class Group:
    processes: list[Log] = field(default_factory=list)


@dataclass
class FakeRun:
    """What ``tally`` reads of a ``Run``."""

    scenario: Scenario = SCENARIOS["baseline"]
    runs: Counter[Firing] = field(default_factory=Counter)
    group: Group = field(default_factory=Group)
    outages: list[tuple[float, float]] = field(default_factory=list)
    lossy_restarts: list[float] = field(default_factory=list)
    killed_schedulers: dict[int, float] = field(default_factory=dict)
    faults: Counter[str] = field(default_factory=Counter)

    def records(self) -> list[dict[str, Any]]:
        return [
            {
                "phase": phase,
                "kind": firing.kind,
                "schedule_id": SCHEDULE_IDS[firing.kind],
                "slot": firing.slot,
                "task_id": f"{firing.kind}-{firing.slot}-{index}",
                "pid": 1,
                "at": firing.slot + 0.5,
            }
            for firing, count in self.runs.items()
            for index in range(count)
            for phase in ("start", "done")
        ]

    def log(self, name: str, text: str) -> None:
        self.group.processes.append(Log(name, text))


def clean_run(**options: Any) -> FakeRun:
    """Every due firing ran exactly once."""
    run = FakeRun(**options)
    run.runs.update(due_firings(WINDOW, cron_from=T0))
    return run


def check(run: FakeRun) -> Result:
    return tally(run, window=WINDOW, cron_from=T0)  # type: ignore[arg-type]


def interval_firing(at: float) -> Firing:
    slot = int(at) // app.INTERVAL * app.INTERVAL
    return Firing("interval", slot)


def test_a_clean_run_has_no_violations() -> None:
    result = check(clean_run())
    assert result.due > 0
    assert result.executed == result.due
    assert result.violations() == []


def test_a_duplicate_without_a_fault_is_a_violation() -> None:
    run = clean_run()
    run.runs[interval_firing(T0 + 10)] += 1
    result = check(run)
    assert result.duplicates == 1
    assert result.unexplained_duplicates == [(interval_firing(T0 + 10), 2)]


def test_a_miss_without_a_fault_is_a_violation() -> None:
    run = clean_run()
    del run.runs[interval_firing(T0 + 10)]
    result = check(run)
    assert result.unexplained_missed == [interval_firing(T0 + 10)]


@pytest.mark.parametrize("down_for", [0.1, LAST_RETRY_AFTER])
def test_an_outage_the_retries_bridge_excuses_no_miss(down_for: float) -> None:
    """The claim retries outlast a restart that takes a moment."""
    down = T0 + 10.2
    run = clean_run(outages=[(down, down + down_for)])
    missing = interval_firing(down)
    del run.runs[missing]
    assert check(run).unexplained_missed == [missing]


@pytest.mark.parametrize(
    ("slot_at", "explained"),
    [
        (12, True),  # well inside
        (8, True),  # [8, 10]: a claim in flight 0.1 s before the kill
        (6, False),  # [6, 8]: answered before the server went down
        (22, True),  # [22, 24]: a scheduler loop may still wait on a retrying claim
        (24, False),  # [24, 26]: later than the last retry could end
    ],
)
def test_a_long_outage_excuses_only_the_misses_its_retries_cannot_outlast(
    slot_at: int, explained: bool
) -> None:
    down, up = T0 + 10.1, T0 + 18.1
    assert up - down > CLAIM_RETRY_WINDOW
    run = clean_run(outages=[(down, up)])
    missing = Firing("interval", int(T0) + slot_at)
    del run.runs[missing]
    result = check(run)
    assert result.missed == 1
    assert result.missed_explained == int(explained)
    assert result.unexplained_missed == ([] if explained else [missing])


def test_a_lossy_restart_excuses_one_extra_run_per_schedule() -> None:
    down = T0 + 10.5
    run = clean_run(lossy_restarts=[down])
    run.runs[interval_firing(down)] += 1  # the firing in flight: one extra run
    run.runs[Firing("dyn", int(down) // 3 * 3)] += 1  # another schedule: its own extra run
    result = check(run)
    assert result.duplicates == result.duplicates_explained == 2
    assert result.violations() == []


def test_a_lossy_restart_excuses_no_second_extra_run() -> None:
    down = T0 + 10.5
    run = clean_run(lossy_restarts=[down])
    run.runs[interval_firing(down)] += 2  # three runs: one more than the bound
    result = check(run)
    assert result.duplicates == 2
    assert result.duplicates_explained == 1
    assert result.unexplained_duplicates == [(interval_firing(down), 3)]


def test_a_lossy_restart_excuses_nothing_far_from_it() -> None:
    run = clean_run(lossy_restarts=[T0 + 10.5])
    run.runs[interval_firing(T0 + 25)] += 1
    assert check(run).unexplained_duplicates == [(interval_firing(T0 + 25), 2)]


def test_a_restart_with_persistence_excuses_no_duplicate() -> None:
    down = T0 + 10.5
    run = clean_run(outages=[(down, down + 0.1)])  # no lossy restart: the AOF kept the keys
    run.runs[interval_firing(down)] += 1
    assert check(run).unexplained_duplicates == [(interval_firing(down), 2)]


@pytest.mark.parametrize("killed_at", [0.3, 15.0])
def test_a_killed_scheduler_excuses_no_miss(killed_at: float) -> None:
    """A sender killed between claim and send leaves a pending claim that lapses and
    is taken over (docs/DESIGN.md): a firing it held is no excuse for a miss."""
    missing = interval_firing(T0 + 10)
    run = clean_run(killed_schedulers={4242: missing.slot + killed_at})
    del run.runs[missing]
    result = check(run)
    assert result.missed_explained == 0
    assert result.unexplained_missed == [missing]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_every_scenario_check_can_fail(name: str) -> None:
    """A run showing none of the scenario's fault (no kill, no skipped firing, no
    cron due, no dropped duplicate...) fails the scenario's own expectation."""
    scenario = SCENARIOS[name]
    if name == "baseline":  # it expects nothing beyond "nothing unexplained"
        run = clean_run(scenario=scenario)
        run.runs[interval_firing(T0 + 4)] += 1
        assert check(run).violations()
        return
    lacking = check(clean_run(scenario=scenario))
    lacking.due_cron = 0
    assert scenario.expect(lacking), f"{name}: its expectation passed a run without its fault"


def test_without_skip_first_run_the_start_up_firing_of_each_cron_is_due() -> None:
    run = FakeRun(scenario=SCENARIOS["no-skip-first-run"])
    due = due_firings(WINDOW, cron_from=T0, startup_minute=T0)
    assert {Firing(kind, int(T0)) for kind in app.CRONS} <= due
    run.runs.update(due - {Firing("cron", int(T0))})  # the start-up firing never ran
    result = tally(run, window=WINDOW, cron_from=T0, startup_minute=T0)  # type: ignore[arg-type]
    assert result.unexplained_missed == [Firing("cron", int(T0))]
