"""One ``doctor`` finding: what is wrong, how bad, and the fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Level = Literal["error", "warning", "info"]
"""``error``: can cause a duplicate or a miss (exit 1); ``warning``: worth fixing;
``info``: a check that could not run."""


@dataclass(frozen=True)
class Finding:
    """One problem ``doctor`` found."""

    level: Level
    check: str
    """A stable name for scripts (``unwrapped-source``, ``eviction``, …)."""
    problem: str
    fix: str

    def as_json(self) -> dict[str, str]:
        """Return the finding as a JSON object."""
        return asdict(self)

    def line(self) -> str:
        """Return the finding as one line of text."""
        return f"{self.level.upper()} [{self.check}] {self.problem}. Fix: {self.fix}"
