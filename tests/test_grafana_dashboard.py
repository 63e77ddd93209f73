"""docs/grafana-dashboard.json: valid JSON whose every query names a documented series."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1] / "docs"
SERIES = re.compile(r"\btaskiq_dedup_[a-z_]+")


def exprs(panels: list[dict[str, Any]]) -> list[str]:
    found: list[str] = []
    for panel in panels:
        found += [target["expr"] for target in panel.get("targets", [])]
        found += exprs(panel.get("panels", []))
    return found


def test_every_query_names_a_series_of_metrics_md() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    documented = set(re.findall(r"`(taskiq_dedup_[a-z_]+)`", (DOCS / "METRICS.md").read_text()))
    queries = exprs(dashboard["panels"])
    assert len(queries) >= 10
    named = [name for query in queries for name in SERIES.findall(query)]
    assert named
    assert sorted(set(named) - documented) == []
    # The alert-worthy series are on it:
    assert {
        "taskiq_dedup_scheduler_missed_total",
        "taskiq_dedup_scheduler_claim_errors_total",
    } <= set(named)
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
