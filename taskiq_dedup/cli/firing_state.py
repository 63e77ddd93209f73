"""Reading a schedule's firing state (``claims.py``'s hash) for an operator.

Read-only, one pipelined ``HGETALL`` per schedule: nothing here decides anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from redis.asyncio import Redis

    from taskiq_dedup.keys import KeySpace


def slot_text(slot: int | None) -> str:
    """Return a slot (epoch seconds) as an ISO UTC time, or ``-``."""
    if slot is None:
        return "-"
    return datetime.fromtimestamp(slot, tz=timezone.utc).isoformat()


@dataclass(frozen=True)
class FiringState:
    """What Redis knows of a schedule's firings."""

    sent_up_to: int | None
    """The cursor: every slot at or before it was sent (or reported missed)."""
    sent_by: str
    """The attempt (``host:pid#random``) that confirmed the last send."""
    pending_slot: int | None
    """The slot an attempt is sending now, if any."""
    holder: str
    """That attempt."""
    lease_left: float | None
    """Seconds its pending lease has left by Redis's clock (negative: lapsed)."""

    def as_json(self) -> dict[str, object]:
        """Return the state as JSON-ready values, slots as epoch seconds and ISO text."""
        return {
            "sent_up_to": self.sent_up_to,
            "sent_up_to_time": slot_text(self.sent_up_to) if self.sent_up_to else None,
            "sent_by": self.sent_by or None,
            "pending_slot": self.pending_slot,
            "pending_holder": self.holder or None,
            "lease_left_seconds": self.lease_left,
        }

    def pending_text(self) -> str:
        """``slot by holder (lease)`` or ``-``."""
        if self.pending_slot is None:
            return "-"
        lease = "" if self.lease_left is None else f", lease {self.lease_left:.1f}s"
        return f"{slot_text(self.pending_slot)} by {self.holder}{lease}"


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def _parse(raw: dict[bytes | str, bytes | str], now_ms: int) -> FiringState | None:
    fields = {_text(k): _text(v) for k, v in raw.items()}
    if not fields:
        return None
    holder = fields.get("holder", "")
    # While a claim is pending, 'sent' sits just before its slot; 'from' is the cursor it left.
    cursor = fields.get("from") if holder else fields.get("sent")
    lease_until = _int(fields.get("lease_until"))
    return FiringState(
        sent_up_to=_int(cursor),
        sent_by=fields.get("sent_by", ""),
        pending_slot=_int(fields.get("slot")) if holder else None,
        holder=holder,
        lease_left=(lease_until - now_ms) / 1000 if holder and lease_until else None,
    )


async def read_states(
    redis: Redis,
    keys: KeySpace,
    schedule_ids: Sequence[str],
) -> dict[str, FiringState | None]:
    """Each content id's firing state (``None``: never claimed, or expired)."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.time()
        for schedule_id in schedule_ids:
            pipe.hgetall(keys.firings(schedule_id))
        replies = await pipe.execute()
    seconds, micros = replies[0]
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    return {sid: _parse(raw, now_ms) for sid, raw in zip(schedule_ids, replies[1:], strict=True)}
