"""``taskiq dedup history``: what Redis knows of each schedule's firings.

There is no firing ledger yet: Redis keeps only each schedule's claim state
(the last slot sent, the attempt that sent it, a claim pending now) and, with
``DedupMiddleware``, the worker guard's key of that slot (running or done, the
worker, how many attempts). Earlier firings are not recorded anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskiq_dedup.cli.firing_state import FiringState, read_states, slot_text
from taskiq_dedup.cli.output import Result, Table
from taskiq_dedup.cli.session import opened, reach

if TYPE_CHECKING:
    import argparse

    from taskiq_dedup.cli.loader import App
    from taskiq_dedup.middleware import DedupMiddleware

HELP = (
    "show what Redis knows of a schedule's firings: the last slot sent and by whom, a "
    "pending claim, and the worker guard's record of that slot (running or done, which "
    "worker). There is no firing ledger yet: earlier firings are not recorded"
)

COLUMNS = ["id", "task", "sent up to", "sent by", "pending", "worker guard"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--id`` picks one schedule by its public, content or a copy's id."""
    parser.add_argument(
        "--id", dest="schedule_id", default=None, help="only this schedule (any of its ids)"
    )


async def _guard_record(
    guard: DedupMiddleware | None, schedule_id: str, slot: int
) -> dict[str, str]:
    """Return the worker guard's key of (schedule, slot), by the id the message carries.

    taskiq's scheduler (and the composite's late sender) label a firing with the
    schedule's public id, so the worker keys on that one.
    """
    if guard is None:
        return {}
    raw = await guard.redis.hgetall(guard.keys.firing(schedule_id, slot))
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return {k: fields[k] for k in ("state", "worker", "attempts", "task_id") if k in fields}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _guard_text(guard: DedupMiddleware | None, record: dict[str, str]) -> str:
    if guard is None:
        return "no DedupMiddleware"
    if not record:
        return "no record"
    state, worker = record.get("state", "?"), record.get("worker", "?")
    return f"{state} on {worker} ({record.get('attempts', '?')} attempt(s))"


async def run(app: App, args: argparse.Namespace) -> Result:
    """Read the claim state of each (or one) schedule and the guard's record of its last slot."""
    guard = app.middlewares[-1] if app.middlewares else None
    if guard is not None:
        await reach(guard.redis)
    table = Table("history (last firing only: there is no firing ledger yet)", COLUMNS)
    rows: list[dict[str, object]] = []
    async with opened(app) as views:
        for view in views:
            if view.composite is None:
                continue
            chosen = [
                m
                for m in view.schedules.values()
                if args.schedule_id is None or m.answers_to(args.schedule_id)
            ]
            states = await read_states(
                view.composite.redis, view.composite.keys, [m.schedule_id for m in chosen]
            )
            for merged in chosen:
                state: FiringState | None = states[merged.schedule_id]
                slot = state.sent_up_to if state else None
                record = await _guard_record(guard, merged.public_id, slot) if slot else {}
                rows.append(
                    {
                        "id": merged.public_id,
                        "content_id": merged.schedule_id,
                        "task": merged.task.task_name,
                        "state": state.as_json() if state else None,
                        "worker_guard": record or None,
                    },
                )
                table.rows.append(
                    [
                        merged.public_id,
                        merged.task.task_name,
                        slot_text(slot),
                        (state.sent_by or "-") if state else "-",
                        state.pending_text() if state else "-",
                        _guard_text(guard, record) if slot else "-",
                    ],
                )
    if args.schedule_id is not None and not rows:
        lines = [f"no schedule answers to id {args.schedule_id!r}"]
    else:
        lines = [] if rows else ["no schedules"]
    return Result({"ledger": False, "schedules": rows}, [table] if rows else [], lines)
