"""Real ``taskiq worker`` / ``taskiq scheduler`` processes, always reaped.

Each process runs in its own session so it and its children (taskiq's worker
pool, uvicorn's workers) are signalled as a group. ``ProcessGroup`` is a context
manager: leaving it - normally, on a failed assertion or a timeout - stops every
process it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping
    from types import TracebackType

STOP_TIMEOUT = 10.0
PROJECT_ROOT = Path(__file__).resolve().parents[2]

SCHEDULER_READY_LINE = "Startup completed."
"""What ``taskiq scheduler`` logs once its sources have started."""

FIRST_TICK = 1.5
"""Seconds from a scheduler's ready line to its first loop tick (it fetches the
schedules, then sleeps to the next whole second)."""


class ManagedProcess:
    """One spawned process with its combined output in a log file."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole process group and wait for the leader."""
        self.signal_group(signal.SIGKILL)
        self.popen.wait(timeout=STOP_TIMEOUT)
        self._log.close()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL what is left after ``STOP_TIMEOUT``."""
        if self.alive():
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=STOP_TIMEOUT)
        # Children (worker pool, uvicorn workers) may outlive the leader.
        self.signal_group(signal.SIGKILL)
        if self.alive():
            self.popen.wait(timeout=STOP_TIMEOUT)
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def scheduler_ready(self) -> bool:
        """Alive and past start-up (for a ``taskiq scheduler`` process)."""
        return self.alive() and SCHEDULER_READY_LINE in self.output()


class ProcessGroup:
    """Starts processes and stops all of them when the ``with`` block ends."""

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.processes: list[ManagedProcess] = []

    def spawn(
        self, name: str, argv: list[str], env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        process = ManagedProcess(name, argv, {**self.env, **(env or {})}, self.log_dir)
        self.processes.append(process)
        return process

    def taskiq(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> ManagedProcess:
        """Run the stock ``taskiq`` command line of this interpreter's environment."""
        return self.spawn(name, [sys.executable, "-m", "taskiq", *args], env)

    def worker(
        self,
        broker: str,
        *args: str,
        name: str = "worker",
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        return self.taskiq(name, "worker", broker, "--workers", "1", *args, env=env)

    def scheduler(
        self,
        scheduler: str,
        *args: str,
        name: str = "scheduler",
        env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        return self.taskiq(name, "scheduler", scheduler, *args, env=env)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def logs(self) -> str:
        """Every process's output, for a failing assertion's message."""
        return "\n".join(
            f"===== {p.name} (pid {p.pid}) =====\n{p.output()[-6000:]}" for p in self.processes
        )

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()


def wait_until(predicate: object, timeout: float, interval: float = 0.1, message: str = "") -> None:
    """Poll ``predicate()`` until it is truthy or ``timeout`` seconds pass."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(message or f"condition not met within {timeout}s")
        time.sleep(interval)
