"""``python -m benchmarks --quick`` runs and writes the JSON the docs are made from.

A smoke test of the command, not of the figures: no timing is asserted, but the
burst's duplicates and misses must be 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.support.processes import PROJECT_ROOT

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.processes  # the burst benchmark starts scheduler processes

BENCHMARKS = ["claim_cost", "burst"]
VERSIONS = {"python", "taskiq", "taskiq-redis", "redis-py", "redis-server", "taskiq-deduplication"}


def test_quick_run_writes_results_and_docs(tmp_path: Path) -> None:
    output = tmp_path / "latest.json"
    docs = tmp_path / "BENCHMARKS.md"
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--reps", "1"]
    argv += ["--only", ",".join(BENCHMARKS), "--output", str(output), "--write-docs", str(docs)]
    completed = subprocess.run(
        argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    data = json.loads(output.read_text())
    assert data["schema_version"] == 1
    assert data["quick"] is True
    assert data["failed"] == []
    environment = data["environment"]
    assert "-m benchmarks" in environment["command"]
    assert "--quick" in environment["command"]
    assert {"cores", "cpu_model", "memory_gib"} <= environment["machine"].keys()
    assert environment["versions"].keys() >= VERSIONS
    assert [bench["name"] for bench in data["benchmarks"]] == BENCHMARKS

    for bench in data["benchmarks"]:
        assert bench["title"]
        assert bench["method"]
        assert bench["rows"], bench["name"]
        for row in bench["rows"]:
            assert {"min", "median", "max", "n"} <= row["absolute"].keys()
            if row["arm"] == row["baseline"]:
                assert row["ratio"] is None
            else:
                assert {"min", "median", "max", "n"} <= row["ratio"].keys()
                assert row["ratio"]["n"] == row["absolute"]["n"] == 1
        assert bench["goals"], bench["name"]
        for goal in bench["goals"]:
            assert isinstance(goal["met"], bool)
            assert isinstance(goal["value"], (int, float))

    burst = data["benchmarks"][1]
    # The one outcome the smoke run does assert: 3 schedulers, no duplicate, no miss.
    assert burst["checks"]["duplicates_dedup_x3"]["max"] == 0, burst["checks"]
    assert burst["checks"]["missed_dedup_x3"]["max"] == 0, burst["checks"]

    text = docs.read_text()
    assert text.startswith("# Benchmarks")
    for bench in data["benchmarks"]:
        assert f"## {bench['title']} (`{bench['name']}`)" in text
