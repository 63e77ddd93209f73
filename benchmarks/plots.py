"""The PNG figures of docs/BENCHMARKS.md (and the README's headline), from a results file.

Drawn with matplotlib's Agg backend (no display needed) from the JSON alone, so
``--docs-only`` redraws them. A benchmark missing from the results, or a results
file from before the figures kept their samples, draws what it can and skips the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import matplotlib as mpl

mpl.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import FuncFormatter

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from matplotlib.figure import Figure

DPI = 110
SHIPPED_COLOR = "#c0392b"
DEDUP_COLOR = "#2874a6"
OTHER_COLOR = "#7f8c8d"


@dataclass(frozen=True)
class Plot:
    """One written figure: the benchmark it belongs to, its file and its caption."""

    benchmark: str
    path: Path
    caption: str


def _save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    # No date or software version in the file: a redraw of the same JSON is the same file.
    figure.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    plt.close(figure)


def _bench(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((b for b in data["benchmarks"] if b["name"] == name), None)


def _color(arm: str) -> str:
    if arm in ("bare", "as_shipped"):
        return SHIPPED_COLOR
    if arm.startswith("dedup"):
        return DEDUP_COLOR
    return OTHER_COLOR


def worker_throughput(bench: dict[str, Any], path: Path) -> Plot:
    """Tasks per second per arm: every repetition's figure, the median, min-max whiskers."""
    rows = [r for r in bench["rows"] if r["metric"] == "tasks_per_s" and r["baseline"] == "bare"]
    figure, axes = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.6))
    for position, row in enumerate(reversed(rows)):
        low, mid, high = (row["absolute"][k] for k in ("min", "median", "max"))
        axes.errorbar(
            mid,
            position,
            xerr=[[mid - low], [high - mid]],
            fmt="D",
            color=_color(row["arm"]),
            capsize=5,
            markersize=7,
            zorder=3,
        )
        values = row.get("values") or []
        axes.scatter(values, [position] * len(values), s=14, color="black", alpha=0.45, zorder=4)
    axes.set_yticks(range(len(rows)), [r["arm"] for r in reversed(rows)])
    axes.set_xlabel("tasks/s (no-op tasks; diamond: median, whiskers: min-max, dots: repetitions)")
    axes.set_xlim(left=0)
    axes.grid(axis="x", alpha=0.3)
    axes.set_title("Worker throughput per arm")
    _save(figure, path)
    return Plot(bench["name"], path, "Worker throughput per arm (tasks/s per repetition)")


def lateness(bench: dict[str, Any], path: Path) -> Plot | None:
    """Each arm's firing lateness as a CDF (from the kept percentiles)."""
    distributions = bench.get("distributions", {}).get("lateness_ms")
    if not distributions:
        return None
    figure, axes = plt.subplots(figsize=(8, 4.2))
    styles = {"bare": "-", "dedup": "--", "dedup_x3": ":"}
    for arm, dist in distributions.items():
        points = dist["percentiles"]
        axes.plot(
            [ms for _, ms in points],
            [q / 100 for q, _ in points],
            styles.get(arm, "-."),
            color=_color(arm),
            linewidth=2,
            label=f"{arm} ({dist['firings']:,} firings)",
        )
    axes.set_xscale("log")
    plain = FuncFormatter(lambda value, _position: f"{value:g}")
    axes.xaxis.set_major_formatter(plain)
    axes.xaxis.set_minor_formatter(plain)
    axes.tick_params(axis="x", which="minor", labelsize=7)
    axes.set_xlabel("lateness: enqueue time - slot (ms, log scale)")
    axes.set_ylabel("fraction of firings")
    axes.set_ylim(0, 1.01)
    axes.grid(alpha=0.3, which="both")
    axes.legend(loc="lower right")
    axes.set_title("Firing lateness per arm (CDF)")
    _save(figure, path)
    return Plot(bench["name"], path, "Firing lateness per arm, cumulative distribution")


def demo(bench: dict[str, Any], path: Path) -> Plot | None:
    """Executions per slot per schedule, as shipped and with taskiq-dedup: the headline."""
    slots = bench.get("distributions", {}).get("executions_per_slot")
    if not slots or not all(slots.get(arm) for arm in ("as_shipped", "dedup")):
        return None
    schedules = sorted(slots["as_shipped"], key=lambda name: ("cron" not in name, name))
    width = 0.38
    figure, axes = plt.subplots(figsize=(8, 4.4))
    arms = (("as_shipped", "taskiq as shipped", -1), ("dedup", "with taskiq-dedup", 1))
    for arm, label, side in arms:
        counts = [slots[arm].get(name, []) for name in schedules]
        means = [sum(c) / len(c) if c else 0.0 for c in counts]
        low = [m - min(c) if c else 0.0 for m, c in zip(means, counts, strict=True)]
        high = [max(c) - m if c else 0.0 for m, c in zip(means, counts, strict=True)]
        positions = [index + side * width / 2 for index in range(len(schedules))]
        bars = axes.bar(
            positions,
            means,
            width,
            yerr=[low, high],
            capsize=4,
            color=_color(arm),
            label=label,
        )
        axes.bar_label(bars, [f"{m:.1f}" for m in means], padding=3, fontsize=9)
    axes.axhline(1, color="black", linewidth=1, linestyle="--")
    axes.text(-0.55, 1.05, "1 = correct", ha="left", va="bottom", fontsize=9)
    axes.set_xticks(range(len(schedules)), schedules, fontsize=9)
    axes.set_ylabel("executions per slot (mean; whiskers: min-max)")
    axes.set_ylim(bottom=0)
    axes.set_xlim(-0.6, len(schedules) - 0.4)
    setup = bench["params"]
    axes.set_title(
        f"uvicorn --workers {setup['uvicorn_workers']} (a scheduler in each) "
        f"+ {setup['scheduler_processes']} taskiq schedulers: executions per slot",
        fontsize=10,
    )
    axes.legend(loc="upper right")
    _save(figure, path)
    return Plot(bench["name"], path, "Executions per slot in the demo: as shipped vs taskiq-dedup")


DRAWERS: dict[str, Callable[[dict[str, Any], Path], Plot | None]] = {
    "worker_throughput": worker_throughput,
    "lateness": lateness,
    "demo": demo,
}


def write_plots(data: dict[str, Any], directory: Path) -> list[Plot]:
    """Draw every figure the results allow into ``directory`` as ``<benchmark>.png``."""
    plots: list[Plot] = []
    for name, draw in DRAWERS.items():
        bench = _bench(data, name)
        if bench is None:
            continue
        plot = draw(bench, directory / f"{name}.png")
        if plot is not None:
            plots.append(plot)
    return plots
