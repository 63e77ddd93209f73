"""The structured fields every decision log line carries, for JSON log handlers.

Each line that records a decision (claimed, cancelled as a duplicate, taken over,
sent late, missed, dropped, a Redis error) passes ``extra=decision(...)``: the
record gains the attributes ``schedule_id``, ``slot``, ``key`` and ``holder``
(``None`` where a line has no such thing), so a JSON formatter indexes them
without parsing the message.
"""

from __future__ import annotations

FIELDS = ("schedule_id", "slot", "key", "holder")
"""The ``LogRecord`` attributes ``decision`` sets."""


def decision(
    *,
    schedule_id: str | None = None,
    slot: int | None = None,
    key: str | None = None,
    holder: str | None = None,
) -> dict[str, object]:
    """Return the ``extra=`` mapping of one decision line."""
    return {"schedule_id": schedule_id, "slot": slot, "key": key, "holder": holder}
