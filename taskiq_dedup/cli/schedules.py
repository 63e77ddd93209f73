"""``taskiq dedup schedules``: one row per merged schedule, with its copies and last send."""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskiq_dedup.cli.firing_state import FiringState, read_states, slot_text
from taskiq_dedup.cli.output import Result, Table
from taskiq_dedup.cli.session import describe_source, opened

if TYPE_CHECKING:
    import argparse

    from taskiq_dedup.cli.loader import App
    from taskiq_dedup.merge import MergedSchedule

HELP = "list the merged schedules: task, trigger, next fire, copies, last sent slot"

COLUMNS = ["id", "task", "trigger", "next fire", "copies", "where", "sent up to", "pending"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``schedules`` takes no options of its own."""


def _row(merged: MergedSchedule, next_fire: str, state: FiringState | None) -> dict[str, object]:
    return {
        "id": merged.public_id,
        "content_id": merged.schedule_id,
        "task": merged.task.task_name,
        "trigger": merged.trigger.canonical(),
        "next_fire": next_fire,
        "copies": [
            {"source": describe_source(o.source), "id": o.task.schedule_id} for o in merged.origins
        ],
        "state": state.as_json() if state else None,
    }


async def run(app: App, args: argparse.Namespace) -> Result:
    """Fetch and merge every composite's children; read each schedule's firing state."""
    rows: list[dict[str, object]] = []
    table = Table("schedules", COLUMNS)
    async with opened(app) as views:
        for view in views:
            if view.composite is None:
                continue
            composite = view.composite
            merged = sorted(view.schedules.values(), key=lambda m: (m.task.task_name, m.public_id))
            states = await read_states(
                composite.redis, composite.keys, [m.schedule_id for m in merged]
            )
            now = composite.clock()
            for entry in merged:
                upcoming = entry.trigger.next_fire(now)
                next_fire = upcoming.isoformat() if upcoming else "-"
                state = states[entry.schedule_id]
                row = _row(entry, next_fire, state)
                row["prefix"] = composite.keys.prefix
                rows.append(row)
                table.rows.append(
                    [
                        entry.public_id,
                        entry.task.task_name,
                        entry.trigger.canonical(),
                        next_fire,
                        str(len(entry.origins)),
                        "; ".join(
                            f"{describe_source(o.source)}:{o.task.schedule_id}"
                            for o in entry.origins
                        ),
                        slot_text(state.sent_up_to) if state else "-",
                        state.pending_text() if state else "-",
                    ],
                )
    lines = [] if rows else ["no schedules"]
    if app.unwrapped:
        lines.append(
            "not shown: sources outside the CompositeScheduleSource ("
            + ", ".join(describe_source(s) for s in app.unwrapped)
            + "); see `taskiq dedup doctor`",
        )
    return Result({"schedules": rows}, [table] if rows else [], lines)
