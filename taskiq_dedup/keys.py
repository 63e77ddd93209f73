"""The one place where Redis keys are made.

Every key is ``<prefix>:<kind>:<part>[:<part>]``. Parts that are not plain
``[A-Za-z0-9_.-]`` words of at most 64 characters are replaced by ``#`` and a
SHA-256 digest, so no task name, schedule id or idempotency key can reach outside
the prefix, add a separator, or carry glob characters into a ``SCAN`` pattern.
"""

import hashlib
import re

from taskiq_dedup.errors import ConfigurationError

_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9_.{}-]+(:[A-Za-z0-9_.{}-]+)*")
_SAFE_PART = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_PREFIX_LENGTH = 128
DEFAULT_PREFIX = "taskiq-dedup"
"""The prefix when none is given; set one per environment."""


def validate_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can namespace keys, else raise ``ConfigurationError``.

    Allowed: letters, digits, ``_ . - { }`` in colon-separated words
    (``{…}`` lets a Redis Cluster user pick a hash tag). Rejected: empty,
    whitespace, glob characters, leading/trailing or doubled colons.
    """
    if not isinstance(prefix, str) or not prefix:
        raise ConfigurationError(detail=f"prefix must be a non-empty string, got {prefix!r}")
    if len(prefix) > MAX_PREFIX_LENGTH:
        raise ConfigurationError(
            detail=f"prefix is {len(prefix)} characters; at most {MAX_PREFIX_LENGTH}",
        )
    if not _PREFIX_PATTERN.fullmatch(prefix):
        raise ConfigurationError(
            detail=(
                f"prefix {prefix!r} may hold only letters, digits and _ . - {{ }} "
                "in colon-separated words (no spaces, wildcards or empty words)"
            ),
        )
    return prefix


def key_part(value: str) -> str:
    """Return ``value`` if it is a safe key word, else ``#`` + its SHA-256 digest."""
    if _SAFE_PART.fullmatch(value):
        return value
    return "#" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class KeySpace:
    """Builds every Redis key of one environment, all under ``prefix``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = validate_prefix(prefix)

    def key(self, kind: str, *parts: str) -> str:
        """Return ``<prefix>:<kind>:<part>…`` with each part made safe."""
        return ":".join((self.prefix, kind, *(key_part(part) for part in parts)))

    def firings(self, schedule_id: str) -> str:
        """Key holding which of a schedule's firings are sent or being sent (``claims``)."""
        return self.key("fire", schedule_id)

    def firing(self, schedule_id: str, slot: int) -> str:
        """Key a worker takes to execute the firing (schedule, slot) once."""
        return self.key("run", schedule_id, str(slot))

    def job_lease(self, schedule_id: str) -> str:
        """Key held while one process runs a job of another scheduler (``instances``)."""
        return self.key("job", schedule_id)

    def running(self, schedule_id: str) -> str:
        """Key held while a firing of the schedule runs, under an overlap policy (``overlap``)."""
        return self.key("busy", schedule_id)

    def idempotency(self, task_name: str, idempotency_key: str) -> str:
        """Key a worker takes to execute one ad-hoc kick once per (task, key)."""
        digest = hashlib.sha256(
            f"{task_name}\x00{idempotency_key}".encode("utf-8", "surrogatepass"),
        ).hexdigest()
        return self.key("idem", "#" + digest)

    def add_lock(self, schedule_id: str) -> str:
        """Key that serialises concurrent ``add_schedule`` calls for one schedule."""
        return self.key("add", schedule_id)

    def pattern(self) -> str:
        """``SCAN`` pattern matching every key of this key space."""
        return self.prefix + ":*"
