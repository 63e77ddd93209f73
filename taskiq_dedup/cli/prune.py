"""``taskiq dedup prune``: delete the surplus copies of each schedule from the stores.

Which copy stays, per merged schedule:

- decorator copies (a child that cannot delete, e.g. ``LabelScheduleSource``) are
  never touched; when one exists, every stored copy is surplus;
- otherwise the first copy (the one the composite sends) stays;
- either way, a copy carrying the schedule's user-set public id stays, so that id
  keeps naming the schedule.

A store that lists one child id twice (``ListRedisScheduleSource`` after the same
id was added twice) cannot delete one of the two: its ``delete_schedule`` removes
both, so such repeats of the kept copy are reported, not deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskiq_dedup.cli.output import Result, Table
from taskiq_dedup.cli.session import describe_source, opened
from taskiq_dedup.merge import MergedSchedule, Origin, can_delete

if TYPE_CHECKING:
    import argparse

    from taskiq import ScheduleSource

    from taskiq_dedup.cli.loader import App

HELP = "delete duplicate copies of schedules from the stores (dry run unless --apply)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--apply`` deletes; without it nothing changes."""
    parser.add_argument("--apply", action="store_true", help="delete (default: dry run)")


@dataclass(frozen=True)
class Deletion:
    """One stored copy to delete."""

    schedule: MergedSchedule
    source: ScheduleSource
    child_id: str


def _kept(merged: MergedSchedule) -> list[Origin]:
    origins = merged.origins
    kept = [o for o in origins if not can_delete(o.source)]
    named = [o for o in origins if o.task.schedule_id == merged.public_id != merged.schedule_id]
    kept.extend(o for o in named[:1] if o not in kept)
    if not kept:
        kept.append(origins[0])
    return kept


def plan(merged: MergedSchedule) -> tuple[list[Deletion], list[Origin]]:
    """Return the deletions leaving one copy of ``merged``, and the repeats it cannot delete."""
    kept = _kept(merged)
    kept_ids = {(id(o.source), o.task.schedule_id) for o in kept}
    deletions: dict[tuple[int, str], Deletion] = {}
    stuck: list[Origin] = []
    for origin in merged.origins:
        if any(origin is k for k in kept):
            continue
        key = (id(origin.source), origin.task.schedule_id)
        if key in kept_ids:
            stuck.append(origin)
        elif key not in deletions:
            deletions[key] = Deletion(merged, origin.source, origin.task.schedule_id)
    return list(deletions.values()), stuck


async def run(app: App, args: argparse.Namespace) -> Result:
    """List (or, with ``--apply``, delete) every surplus stored copy."""
    verb = "deleted" if args.apply else "would delete"
    table = Table(f"copies {verb}", ["schedule", "task", "source", "copy id"])
    rows: list[dict[str, object]] = []
    lines: list[str] = []
    async with opened(app) as views:
        for view in views:
            for merged in view.schedules.values():
                if len(merged.origins) < 2:  # noqa: PLR2004 -- one copy is nothing to prune
                    continue
                deletions, stuck = plan(merged)
                for deletion in deletions:
                    if args.apply:
                        await deletion.source.delete_schedule(deletion.child_id)
                    where = describe_source(deletion.source)
                    rows.append(
                        {
                            "schedule": merged.public_id,
                            "task": merged.task.task_name,
                            "source": where,
                            "id": deletion.child_id,
                            "deleted": bool(args.apply),
                        },
                    )
                    table.rows.append(
                        [merged.public_id, merged.task.task_name, where, deletion.child_id]
                    )
                lines.extend(
                    f"not pruned: {describe_source(o.source)} lists id {o.task.schedule_id} of "
                    f"schedule {merged.public_id} more than once (deleting it removes every "
                    "entry); delete it and register the schedule once"
                    for o in stuck
                )
    lines.append(
        f"{len(rows)} cop{'y' if len(rows) == 1 else 'ies'} {verb}"
        + ("" if args.apply or not rows else "; run again with --apply to delete"),
    )
    return Result(
        {"apply": bool(args.apply), "copies": rows},
        [table] if rows else [],
        lines,
    )
