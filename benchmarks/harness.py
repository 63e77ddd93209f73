"""Repetitions, statistics and result rows shared by every benchmark.

The arms of a benchmark take turns: repetition ``i`` runs every arm once, in an
order rotated by ``i`` (A B C, B C A, C A B, ...), so no arm always runs first
or last, and a slow spell on the (shared) machine hits every arm. A ratio is
computed per repetition from the two arms' figures of that repetition, then
summarised as min / median / max over the repetitions.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence

Measurement = dict[str, float]
"""The figures of one arm in one repetition, by metric name."""


@dataclass(frozen=True)
class Config:
    """What the command line chose for this run."""

    quick: bool = False
    reps: int | None = None
    """Repetitions, overriding each benchmark's default."""

    def repetitions(self, full: int, quick: int) -> int:
        """The number of repetitions: ``--reps`` if given, else by mode."""
        if self.reps is not None:
            return self.reps
        return quick if self.quick else full


def rotations(arms: Sequence[str], reps: int) -> Iterator[tuple[int, str]]:
    """Yield ``(repetition, arm)``: every arm once per repetition, order rotated."""
    for rep in range(reps):
        shift = rep % len(arms)
        for arm in (*arms[shift:], *arms[:shift]):
            yield rep, arm


async def interleave(
    arms: Mapping[str, Callable[[], Awaitable[Measurement]]],
    reps: int,
    *,
    warmup: int = 1,
) -> dict[str, list[Measurement]]:
    """Run every arm ``warmup`` times (discarded), then ``reps`` interleaved times."""
    for _ in range(warmup):
        for run in arms.values():
            await run()
    results: dict[str, list[Measurement]] = {name: [] for name in arms}
    for _, name in rotations(list(arms), reps):
        results[name].append(await arms[name]())
    return results


def interleave_sync(
    arms: Mapping[str, Callable[[], Measurement]],
    reps: int,
    *,
    warmup: int = 0,
) -> dict[str, list[Measurement]]:
    """``interleave`` for arms that are plain functions (e.g. starting processes)."""
    for _ in range(warmup):
        for run in arms.values():
            run()
    results: dict[str, list[Measurement]] = {name: [] for name in arms}
    for _, name in rotations(list(arms), reps):
        results[name].append(arms[name]())
    return results


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linearly interpolated between ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """Min, median and max of ``values`` (and how many)."""
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": len(values),
    }


def ratios(
    results: Mapping[str, Sequence[Measurement]],
    arm: str,
    baseline: str,
    metric: str,
) -> list[float]:
    """``arm / baseline`` of ``metric``, one ratio per repetition."""
    return [
        mine[metric] / theirs[metric]
        for mine, theirs in zip(results[arm], results[baseline], strict=True)
    ]


@dataclass
class Row:
    """One line of a benchmark's table: an arm's metric and its ratio to the baseline."""

    arm: str
    metric: str
    unit: str
    absolute: dict[str, float]
    ratio: dict[str, float] | None
    baseline: str | None
    label: str = ""
    values: list[float] = field(default_factory=list)
    """The absolute figure of every repetition, in order (what the plots draw)."""

    def as_dict(self) -> dict[str, Any]:
        """The row as JSON."""
        return {
            "arm": self.arm,
            "label": self.label or self.arm,
            "metric": self.metric,
            "unit": self.unit,
            "absolute": self.absolute,
            "ratio": self.ratio,
            "baseline": self.baseline,
            "values": self.values,
        }


@dataclass
class Goal:
    """A target from the brief, checked against the median of a ratio or a figure."""

    text: str
    value: float
    met: bool
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The goal as JSON."""
        return {"text": self.text, "value": self.value, "met": self.met, "detail": self.detail}


@dataclass
class Result:
    """What one benchmark reports: its method, parameters, rows and goals."""

    name: str
    title: str
    method: str
    params: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    distributions: dict[str, Any] = field(default_factory=dict)
    """Bounded samples for the plots (e.g. percentiles per arm), not shown in the tables."""
    seconds: float = 0.0

    def add(
        self,
        results: Mapping[str, Sequence[Measurement]],
        arm: str,
        metric: str,
        unit: str,
        *,
        baseline: str | None,
        label: str = "",
        scale: float = 1.0,
    ) -> Row:
        """Add the row of ``arm``'s ``metric`` (absolute times ``scale``) and its ratio."""
        values = [m[metric] * scale for m in results[arm]]
        row = Row(
            arm=arm,
            metric=metric,
            unit=unit,
            absolute=summary(values),
            ratio=(
                summary(ratios(results, arm, baseline, metric))
                if baseline is not None and baseline != arm
                else None
            ),
            baseline=baseline,
            label=label,
            values=values,
        )
        self.rows.append(row)
        return row

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON."""
        return {
            "name": self.name,
            "title": self.title,
            "method": self.method,
            "params": self.params,
            "rows": [row.as_dict() for row in self.rows],
            "goals": [goal.as_dict() for goal in self.goals],
            "checks": self.checks,
            "notes": self.notes,
            "distributions": self.distributions,
            "seconds": round(self.seconds, 1),
        }
