"""Names of the message labels this package reads and writes."""

SCHEDULE_ID_LABEL = "schedule_id"
"""Set by taskiq's scheduler on every message it sends: the schedule's id."""

SLOT_LABEL = "dedup_slot"
"""The firing's slot in whole epoch seconds, set by the sending side."""

CLAIM_TOKEN_LABEL = "dedup_claim_token"  # noqa: S105 -- a label name, not a secret
"""Set by ``DedupMiddleware`` on a message it pushes back because Redis failed its
claim: the token of that claim, which Redis may have applied, so the next delivery
goes on with the same attempt instead of meeting it as another holder."""

IDEMPOTENCY_KEY_LABEL = "idempotency_key"
"""Set by the caller of ``kiq``: kicks of one task with one value run once."""

PINNED_ID_LABEL = "dedup_id"
"""Set on a schedule to choose its id instead of deriving it from its content."""

OVERLAP_LABEL = "dedup_overlap"
"""Set on a schedule: ``allow``, ``skip`` or ``buffer_one`` (``overlap``)."""

CATCH_UP_LABEL = "dedup_catch_up"
"""Set on a schedule: seconds back a starting scheduler fires missed slots (``catch_up``)."""

CATCH_UP_ALL_LABEL = "dedup_catch_up_all"
"""Set on a schedule with ``dedup_catch_up``: fire every missed slot, not only the latest."""


def parse_slot(value: object) -> int | None:
    """Return the slot label as ``int`` (labels arrive as strings), or ``None``."""
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(str(value))
    except ValueError:
        return None
