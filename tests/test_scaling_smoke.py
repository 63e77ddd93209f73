"""``python -m benchmarks.scaling --quick`` runs and reports every figure docs/SCALING.md uses."""

from __future__ import annotations

import pytest

from benchmarks import scaling


def test_quick_scaling_run_reports_every_arm(capsys: pytest.CaptureFixture[str]) -> None:
    scaling.main(["--quick"])
    out = capsys.readouterr().out
    for line in (
        "single ",
        "single+min_replicas=1",
        "cluster",
        "single, losing claims",
        "memory per schedule's claim state",
        "memory per worker done key",
        "keys per primary, prefix taskiq-dedup:prod:",
    ):
        assert line in out
    # a hash-tagged prefix puts every key on one primary
    tagged = out.split("{taskiq-dedup}:prod: ")[1].splitlines()[0]
    assert tagged == "[0, 0, 500]"
