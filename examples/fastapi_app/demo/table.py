"""The demo's closing output: the table per schedule and what it means."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from examples.fastapi_app.demo.report import Report


def utc_time(moment: float) -> str:
    """Format ``moment`` (epoch seconds) as ``HH:MM:SS`` in UTC."""
    return datetime.fromtimestamp(moment, tz=timezone.utc).strftime("%H:%M:%S")


COLUMNS = (
    ("schedule", "<"),
    ("trigger", "<"),
    ("origins", "<"),
    ("slots due", ">"),
    ("executions", ">"),
    ("per slot", ">"),
    ("missed", ">"),
    ("duplicates", ">"),
    ("cancelled at schedulers", ">"),
    ("dropped at worker", ">"),
)


def _origins(origins: tuple[str, ...]) -> str:
    counts = Counter(origins)
    return "+".join(name if n == 1 else f"{name}({n})" for name, n in counts.items()) or "-"


def format_table(report: Report) -> str:
    """Format the table, one line per schedule."""
    lines = [
        [
            row.schedule.task,
            row.schedule.trigger,
            _origins(row.schedule.origins),
            str(len(row.due)),
            str(row.executions_due),
            row.per_slot,
            str(len(row.missed)),
            str(row.duplicates),
            "-" if report.as_shipped else str(row.cancelled),
            "-" if report.as_shipped else str(row.dropped),
        ]
        for row in report.rows
    ]
    header = [name for name, _ in COLUMNS]
    widths = [max(len(cells[i]) for cells in [header, *lines]) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(
            f"{cell:{align}{width}}"
            for cell, (_, align), width in zip(cells, COLUMNS, widths, strict=True)
        ).rstrip()
        for cells in [header, *lines]
    )


def format_verdict(report: Report) -> str:
    """Format the closing lines: what the figures mean."""
    start, end = report.window
    window = (
        f"window {utc_time(start)}-{utc_time(end)} UTC: slots from warm-up end whose last "
        f"firing was at least {report.settle:g} s before the end"
    )
    lines = [window]
    if report.unmatched:
        lines.append(f"{report.unmatched} execution(s) belonged to no listed schedule")
    if report.claim_errors:
        lines.append(f"{report.claim_errors} claim(s) failed on Redis errors (see the logs)")
    if report.as_shipped:
        per_slot = ", ".join(f"{row.schedule.task} {row.per_slot}" for row in report.rows)
        lines.append(f"AS SHIPPED: executions per slot due: {per_slot} (1 is correct).")
        return "\n".join(lines)
    cancelled = sum(row.cancelled for row in report.rows)
    dropped = sum(row.dropped for row in report.rows)
    if report.exactly_once:
        lines.append(
            f"OK: each of the {report.slots_due} slots due ran exactly once; "
            f"{cancelled} duplicate firings were cancelled at the schedulers and "
            f"{dropped} dropped at the worker.",
        )
    elif report.slots_due == 0:
        lines.append("FAILED: no slot was due in the window; run longer (--duration).")
    else:
        problems = [
            f"{row.schedule.task}: {len(row.missed)} missed "
            f"{[utc_time(s) for s in row.missed[:5]]}, {row.duplicates} duplicates"
            for row in report.rows
            if row.missed or row.duplicates
        ]
        lines.append("FAILED: not exactly once. " + "; ".join(problems))
    return "\n".join(lines)
