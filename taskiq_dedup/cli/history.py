"""``taskiq dedup history``: each schedule's firing ledger, newest first.

One table per schedule: its last firings as the ledger (``ledger.history``)
records them - who sent each slot and how late, which worker ran it, how it ended,
the slots nobody sent - and, above them, a claim being sent now (the claim hash).
Read-only: nothing here decides anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskiq_dedup.cli.firing_state import FiringState, read_states, slot_text
from taskiq_dedup.cli.output import Result, Table
from taskiq_dedup.cli.session import opened
from taskiq_dedup.ledger import LedgerEntry, history

if TYPE_CHECKING:
    import argparse
    from datetime import datetime

    from taskiq_dedup.cli.loader import App
    from taskiq_dedup.merge import MergedSchedule

HELP = (
    "show each schedule's firing ledger, newest first: every slot of its last firings, "
    "who sent it and how late, which worker ran it and how it ended (ran, failed, "
    "missed, unconfirmed, ...), and a claim being sent now"
)

COLUMNS = ["slot", "outcome", "late", "scheduler", "worker", "run for", "dupes dropped"]

NO_GUARD = (
    "the broker has no DedupMiddleware: workers record nothing, so a firing sent reads "
    "'sent' whether it ran or not"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--id`` picks one schedule by its public, content or a copy's id."""
    parser.add_argument(
        "--id", dest="schedule_id", default=None, help="only this schedule (any of its ids)"
    )


def lateness(entry: LedgerEntry) -> float | None:
    """Seconds from the slot to the broker taking it (``sent_at - slot``); None if not sent."""
    if entry.sent_at is None:
        return None
    return round(entry.sent_at.timestamp() - entry.slot, 3)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def entry_json(entry: LedgerEntry) -> dict[str, object]:
    """Return one ledger entry as JSON-ready values (times as ISO UTC text)."""
    return {
        "slot": entry.slot,
        "slot_time": slot_text(entry.slot),
        "outcome": entry.outcome,
        "lateness_seconds": lateness(entry),
        "claimed_by": entry.claimed_by or None,
        "taken_over": entry.taken_over,
        "sent_at": _iso(entry.sent_at),
        "detected_at": _iso(entry.detected_at),
        "worker": entry.worker,
        "started_at": _iso(entry.started_at),
        "finished_at": _iso(entry.finished_at),
        "duplicates_dropped": entry.duplicates_dropped,
    }


def _row(entry: LedgerEntry) -> list[str]:
    late = lateness(entry)
    scheduler = entry.claimed_by or "-"
    if entry.taken_over:
        scheduler += " (took over)"
    ran_for = "-"
    if entry.started_at is not None and entry.finished_at is not None:
        ran_for = f"{(entry.finished_at - entry.started_at).total_seconds():.3f}s"
    return [
        slot_text(entry.slot),
        entry.outcome,
        "-" if late is None else f"{late:+.3f}s",
        scheduler,
        entry.worker or "-",
        ran_for,
        str(entry.duplicates_dropped),
    ]


def _pending_row(state: FiringState) -> list[str]:
    lease = "" if state.lease_left is None else f" (lease {state.lease_left:.1f}s)"
    return [slot_text(state.pending_slot), f"pending{lease}", "-", state.holder, "-", "-", "-"]


def _table(merged: MergedSchedule, state: FiringState | None, entries: list[LedgerEntry]) -> Table:
    table = Table(f"{merged.public_id} ({merged.task.task_name})", COLUMNS)
    if state is not None and state.pending_slot is not None:
        table.rows.append(_pending_row(state))
    table.rows.extend(_row(entry) for entry in entries)
    if not table.rows:
        table.rows.append(["-", "never fired (or its state expired)", "-", "-", "-", "-", "-"])
    return table


async def run(app: App, args: argparse.Namespace) -> Result:
    """Read each (or one) schedule's ledger and claim state."""
    tables: list[Table] = []
    rows: list[dict[str, object]] = []
    async with opened(app) as views:
        for view in views:
            if view.composite is None:
                continue
            redis, keys = view.composite.redis, view.composite.keys
            chosen = [
                m
                for m in view.schedules.values()
                if args.schedule_id is None or m.answers_to(args.schedule_id)
            ]
            states = await read_states(redis, keys, [m.schedule_id for m in chosen])
            for merged in chosen:
                state = states[merged.schedule_id]
                # The log is under the content id; the worker keys its run records
                # on the id the messages carry, the public one.
                entries = await history(redis, keys, merged.schedule_id, run_id=merged.public_id)
                entries.reverse()  # newest first
                rows.append(
                    {
                        "id": merged.public_id,
                        "content_id": merged.schedule_id,
                        "task": merged.task.task_name,
                        "state": state.as_json() if state else None,
                        "ledger": [entry_json(entry) for entry in entries],
                    },
                )
                tables.append(_table(merged, state, entries))
    if args.schedule_id is not None and not rows:
        lines = [f"no schedule answers to id {args.schedule_id!r}"]
    else:
        lines = [] if rows else ["no schedules"]
    if rows and not app.middlewares:
        lines.append(NO_GUARD)
    data = {"schedules": rows, "worker_guard": bool(app.middlewares)}
    return Result(data, tables, lines)
