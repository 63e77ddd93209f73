"""The firing ledger: a bounded history of each schedule's firings, for operators.

Written only inside the scripts the claims already run (no extra round trip):

- scheduler side, in the firing state hash (``KeySpace.firings``), field ``log``:
  a JSON array of the last ``LEDGER_LENGTH`` entries ``{slot, by, at, outcome}``,
  appended by ``claims.CONFIRM_SCRIPT`` (outcome ``sent`` or ``taken_over``, ``at``
  = Redis time of the confirm) and, for the slots a claim skipped, by the confirm
  or release that ends that claim (outcome ``missed``, or ``unconfirmed`` for the
  slot of a lapsed claim it passed, which may have been sent; ``at`` = detection
  time);
- worker side, in each firing's run key (``KeySpace.firing``): ``started_at``,
  ``last_worker``, ``finished_at``, ``outcome`` (``ran`` / ``skipped_overlap`` /
  ``failed``) and ``dupes`` (deliveries refused as duplicates), written by ``leases``'
  scripts; a once claim's run key has ``state`` ``started`` and no end.

The ledger is history, never a decision input: no script reads it to decide, and
a lost reply or a crash may leave an entry out (docs/DESIGN.md, fault table).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal, cast

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis

    from taskiq_dedup.keys import KeySpace

LEDGER_LENGTH = 32
"""Entries kept per schedule: a day of an hourly schedule, half an hour of a
per-minute one - enough to see the last outage and who fired around it - while the
whole ``log`` field stays under ~3 KB (docs/METRICS.md, "Firing ledger")."""

MISSED_RECORDED = 8
"""Missed slots one claim writes to the ledger (the latest ones): a long outage of
a per-second schedule must not push every sent firing out of the log. The ERROR
log line and the ``missed`` counter still count every missed slot."""

Outcome = Literal[
    "missed", "unconfirmed", "sent", "running", "started", "ran", "skipped_overlap", "failed"
]

LEDGER_LUA = """
local function ledger_append(key, by, unconfirmed, missed_from, slot, outcome)
  if not slot and unconfirmed == '' and missed_from > #ARGV then
    return
  end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local log = {}
  local raw = redis.call('HGET', key, 'log')
  if raw then
    local ok, decoded = pcall(cjson.decode, raw)
    if ok and type(decoded) == 'table' then
      log = decoded
    end
  end
  if unconfirmed ~= '' then
    log[#log + 1] = {slot = tonumber(unconfirmed), by = by, at = now, outcome = 'unconfirmed'}
  end
  for i = missed_from, #ARGV do
    log[#log + 1] = {slot = tonumber(ARGV[i]), by = by, at = now, outcome = 'missed'}
  end
  if slot then
    log[#log + 1] = {slot = tonumber(slot), by = by, at = now, outcome = outcome}
  end
  local excess = #log - LEDGER_LENGTH
  if excess > 0 then
    local kept = {}
    for i = excess + 1, #log do
      kept[#kept + 1] = log[i]
    end
    log = kept
  end
  redis.call('HSET', key, 'log', cjson.encode(log))
end
""".replace("LEDGER_LENGTH", str(LEDGER_LENGTH))
"""``ledger_append(key, by, unconfirmed, missed_from, slot, outcome)``, prepended to
the claim scripts that write the log: appends ``unconfirmed`` (a slot, or ``''``
for none) as unconfirmed, ``ARGV[missed_from..]`` as missed slots, then ``slot``
(if given) with ``outcome``, and keeps the last ``LEDGER_LENGTH``."""

_RUN_FIELDS = ("state", "last_worker", "started_at", "finished_at", "outcome", "dupes")


@dataclass(frozen=True)
class LedgerEntry:
    """One firing of a schedule as both sides recorded it."""

    slot: int
    """The firing's slot (epoch seconds)."""
    outcome: Outcome
    """``missed`` (nobody sent it), ``unconfirmed`` (its sender died after claiming
    it, perhaps after sending it: ``worker`` and ``started_at`` show whether a
    worker took it),
    ``sent`` (in the broker, no worker has taken it, or its run record expired),
    ``running``, ``ran``, ``skipped_overlap`` or ``failed``; ``started``: a worker
    took it with a once claim (a broker that cannot redeliver; ``DedupMiddleware``'s
    ``record_finish``), which records a failure but not a success."""
    claimed_by: str
    """The scheduler attempt (``host:pid#random``) that sent the slot; for a missed
    or unconfirmed slot, the one whose claim found it so."""
    sent_at: datetime | None
    """When the broker took it (Redis time of the confirm); None if missed or
    unconfirmed."""
    detected_at: datetime | None
    """When a claim found the slot missed or unconfirmed; None otherwise."""
    taken_over: bool
    """The sender took the slot over from a sender whose lease lapsed."""
    worker: str | None
    """The worker (``host:pid``) that took the firing last."""
    started_at: datetime | None
    finished_at: datetime | None
    duplicates_dropped: int
    """Deliveries of this firing the worker guard refused."""


def missed_for_ledger(missed: Sequence[int]) -> list[int]:
    """Return the missed slots one claim writes to the ledger: the last ``MISSED_RECORDED``."""
    return list(missed[-MISSED_RECORDED:])


async def history(
    redis: Redis, keys: KeySpace, schedule_id: str, *, run_id: str | None = None
) -> list[LedgerEntry]:
    """Return ``schedule_id``'s ledger, oldest first (at most ``LEDGER_LENGTH``).

    ``schedule_id`` is the content id the claims use; ``run_id`` the id the sent
    messages carry, which the worker guard keys its run records on: the public id
    (``MergedSchedule.public_id``, a user-set id if there is one; default
    ``schedule_id``). Two round trips: the schedule's log, then every listed slot's
    run record in one pipeline (on a cluster the client splits it by slot).
    """
    raw = await redis.hget(keys.firings(schedule_id), "log")
    log = _decode_log(raw)
    if not log:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for item in log:
            pipe.hmget(keys.firing(run_id or schedule_id, int(str(item["slot"]))), _RUN_FIELDS)
        runs = await pipe.execute()
    return [_entry(item, [_text(v) for v in run]) for item, run in zip(log, runs, strict=True)]


def _decode_log(raw: object) -> list[dict[str, object]]:
    if raw is None:
        return []
    try:
        value = json.loads(raw if isinstance(raw, (str, bytes)) else str(raw))
    except ValueError:
        return []
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, dict) and "slot" in item]


def _entry(item: dict[str, object], run: list[str | None]) -> LedgerEntry:
    state, worker, started, finished, outcome, dupes = run
    recorded = str(item.get("outcome", "sent"))
    at = _when(item.get("at"))
    found = recorded in ("missed", "unconfirmed")  # by a claim, not by a confirm
    result: Outcome = "sent"
    if recorded == "missed":
        result = "missed"
    elif recorded == "unconfirmed":
        result = "unconfirmed"  # the run record, if any, shows whether it ran
    elif state == "done":
        result = "skipped_overlap" if outcome == "skipped_overlap" else "ran"
    elif state in ("running", "started"):
        result = cast("Outcome", state)
    elif outcome == "failed":
        result = "failed"
    return LedgerEntry(
        slot=int(str(item["slot"])),
        outcome=result,
        claimed_by=str(item.get("by", "")),
        sent_at=None if found else at,
        detected_at=at if found else None,
        taken_over=recorded == "taken_over",
        worker=worker,
        started_at=_when(started),
        finished_at=_when(finished) if result in ("ran", "failed") else None,
        duplicates_dropped=int(dupes or 0),
    )


def _when(ms: object) -> datetime | None:
    if ms is None or ms == "":
        return None
    return datetime.fromtimestamp(int(float(str(ms))) / 1000, tz=timezone.utc)


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
