"""Settings of the example app, read from the environment.

=====================  =====================================================
``REDIS_URL``          broker, schedules, claims (default redis://localhost:6379/0)
``DEDUP_PREFIX``       the environment's key prefix (default ``taskiq-dedup:dev``);
                       give staging and production their own to share one Redis
``EMBEDDED_SCHEDULER`` ``1``: run taskiq's scheduler loop inside every web worker
``DEDUP_DISABLED``     ``1``: taskiq as shipped (no composite source, no middleware),
                       for comparison
=====================  =====================================================
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskiq_dedup.connection import redacted

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_PREFIX = "taskiq-dedup:dev"
LOG_FORMAT = "[%(asctime)s][%(levelname)-7s][%(process)d][%(name)s] %(message)s"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _flag(environ: Mapping[str, str], name: str) -> bool:
    value = environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be 0 or 1, got {environ[name]!r}")


@dataclass(frozen=True)
class Settings:
    """What the example app, its workers and schedulers are configured with."""

    redis_url: str = DEFAULT_REDIS_URL
    prefix: str = DEFAULT_PREFIX
    embedded_scheduler: bool = False
    dedup_disabled: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        return cls(
            redis_url=env.get("REDIS_URL") or DEFAULT_REDIS_URL,
            prefix=env.get("DEDUP_PREFIX") or DEFAULT_PREFIX,
            embedded_scheduler=_flag(env, "EMBEDDED_SCHEDULER"),
            dedup_disabled=_flag(env, "DEDUP_DISABLED"),
        )

    def describe(self) -> str:
        """One line for the start-up log; the Redis password is never shown."""
        mode = "off (taskiq as shipped)" if self.dedup_disabled else "on"
        embedded = "yes" if self.embedded_scheduler else "no"
        return (
            f"prefix={self.prefix} redis={redacted(self.redis_url)} dedup={mode} "
            f"embedded_scheduler={embedded}"
        )


def configure_logging() -> None:
    """Log INFO to stderr unless the process configured logging already.

    uvicorn configures only its own loggers, so without this the INFO lines of
    ``taskiq_dedup`` (a claim lost to another scheduler) would not be shown.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
        # taskiq-redis logs this INFO line at every fetch of the schedules.
        logging.getLogger("taskiq.redis_schedule_source").setLevel(logging.WARNING)
