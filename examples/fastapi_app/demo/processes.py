"""The demo's child processes: each in its own process group, all stopped at the end.

uvicorn and ``taskiq worker`` fork children of their own; signalling the group
reaches them too. ``Processes`` is a context manager: leaving it - normally, on
an exception or on Ctrl-C - stops everything it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

PROJECT_ROOT = Path(__file__).resolve().parents[3]
STOP_TIMEOUT = 10.0
"""Seconds every group gets to exit after SIGTERM before it is killed."""


@dataclass
class Process:
    """One started command, its output in ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] = field(repr=False)

    @property
    def alive(self) -> bool:
        """Whether the group leader still runs."""
        return self.popen.poll() is None

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the whole group; a vanished group is fine."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)


class Processes:
    """Starts processes with logs under ``log_dir``; stops all of them on exit."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **env}
        self.started: list[Process] = []
        self._stopped = False

    def start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> Process:
        """Start ``argv`` in a new session, stdout and stderr to ``<log_dir>/<name>.log``."""
        log_path = self.log_dir / f"{name}.log"
        log_file = log_path.open("ab")
        popen = subprocess.Popen(  # noqa: S603 -- our own interpreter and modules
            argv,
            env={**self.env, **(env or {})},
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process = Process(name, popen, log_path, log_file)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        """SIGTERM every group at once, wait, then SIGKILL what is left (once)."""
        if self._stopped:
            return
        self._stopped = True
        for process in self.started:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for process in self.started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in self.started:
            process.signal(signal.SIGKILL)  # children may outlive their leader
            if process.alive:
                process.popen.wait(timeout=STOP_TIMEOUT)
            process.log_file.close()

    def __enter__(self) -> Processes:
        """Return ``self``; everything started is stopped on leaving."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop every process, however the block ends."""
        self.stop_all()
