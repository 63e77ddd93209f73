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

from benchmarks import plots, report
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


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _results_with_figures() -> dict[str, object]:
    """A tiny results file with what each figure needs (as the benchmarks write it)."""
    per_slot = {
        "as_shipped": {
            "example:digest (cron * * * * *)": [18, 24],
            "example:tick (every 3 s)": [6],
        },
        "dedup": {"example:digest (cron * * * * *)": [1, 1], "example:tick (every 3 s)": [1]},
    }
    rows = [
        {
            "arm": arm,
            "label": arm,
            "metric": "tasks_per_s",
            "unit": "tasks/s",
            "absolute": {"min": low, "median": low + 50, "max": low + 100, "n": 2},
            "ratio": None,
            "baseline": "bare",
            "values": [low, low + 100],
        }
        for arm, low in (("bare", 3000.0), ("dedup_scheduled", 1700.0))
    ]
    lateness = {
        arm: {"firings": 300, "percentiles": [[q, scale * (1 + q / 10)] for q in range(101)]}
        for arm, scale in (("bare", 20.0), ("dedup", 40.0), ("dedup_x3", 50.0))
    }
    bench = {"title": "t", "method": "m", "rows": [], "goals": [], "checks": {}, "notes": []}
    bench["seconds"] = 1.0
    return {
        "benchmarks": [
            {**bench, "name": "worker_throughput", "params": {}, "rows": rows},
            {
                **bench,
                "name": "lateness",
                "params": {},
                "distributions": {"lateness_ms": lateness},
            },
            {
                **bench,
                "name": "demo",
                "params": {"uvicorn_workers": 4, "scheduler_processes": 2},
                "distributions": {"executions_per_slot": per_slot},
            },
        ]
    }


def test_plots_are_drawn_as_png(tmp_path: Path) -> None:
    written = plots.write_plots(_results_with_figures(), tmp_path / "benchmarks")

    assert [plot.benchmark for plot in written] == ["worker_throughput", "lateness", "demo"]
    for plot in written:
        data = plot.path.read_bytes()
        assert plot.path.parent == tmp_path / "benchmarks"
        assert data.startswith(PNG_SIGNATURE), plot.path
        assert len(data) > 1000, plot.path


def test_docs_only_redraws_figures_and_links_them(tmp_path: Path) -> None:
    output = tmp_path / "latest.json"
    docs = tmp_path / "BENCHMARKS.md"
    data = json.loads((PROJECT_ROOT / "benchmarks" / "results" / "latest.json").read_text())
    extra = _results_with_figures()["benchmarks"]
    assert isinstance(extra, list)
    data["benchmarks"] = [
        *(b for b in data["benchmarks"] if b["name"] not in {"lateness", "demo"}),
        *extra[1:],
    ]
    output.write_text(json.dumps(data))
    argv = [sys.executable, "-m", "benchmarks", "--docs-only", "--output", str(output)]
    argv += ["--write-docs", str(docs)]
    completed = subprocess.run(
        argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    text = docs.read_text()
    for name in ("worker_throughput", "lateness", "demo"):
        png = tmp_path / report.PLOTS_DIR / f"{name}.png"
        assert png.read_bytes().startswith(PNG_SIGNATURE)
        assert f"]({report.PLOTS_DIR}/{name}.png)" in text
    assert "python -m benchmarks.profile" in text


def test_profile_names_the_packages_frames(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "benchmarks.profile", "--label", "smoke", "--messages", "200"]
    argv += ["--output-dir", str(tmp_path)]
    completed = subprocess.run(
        argv, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    text = (tmp_path / "worker-smoke.txt").read_text()
    assert text.startswith("# Worker hot path profile: smoke")
    for figure in ("CPU time per message:", "memory per message:", "taskiq_dedup", "redis-py"):
        assert figure in text
    assert "DedupMiddleware.pre_execute" in text or "taskiq_dedup/middleware.py" in text
