"""The machine, the versions and the command line a run was made with."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from taskiq_dedup.testing import redis_server_binary

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DISTRIBUTIONS = {
    "taskiq": "taskiq",
    "taskiq-redis": "taskiq-redis",
    "redis-py": "redis",
    "taskiq-deduplication": "taskiq-deduplication",
    "taskiq-dedup": "taskiq-dedup",
}


def _proc_field(path: str, name: str) -> str | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def machine() -> dict[str, Any]:
    """Cores, CPU model (``/proc/cpuinfo``) and memory (``/proc/meminfo``)."""
    mem_kib = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "cores": os.cpu_count(),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "memory_gib": round(int(mem_kib.split()[0]) / 1024**2, 1) if mem_kib else None,
        "os": f"{platform.system()} {platform.release()}",
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (the machine is shared)."""
    return [round(x, 2) for x in os.getloadavg()]


def redis_server_version() -> str:
    """``redis-server --version`` of the binary the benchmarks start."""
    binary = redis_server_binary()
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    for word in out.split():
        if word.startswith("v="):
            return f"{word[2:]} ({binary})"
    return f"{out.strip()} ({binary})"


def versions() -> dict[str, str]:
    """Python, the libraries compared and the redis-server."""
    found = {"python": platform.python_version()}
    for label, dist in DISTRIBUTIONS.items():
        try:
            found[label] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[label] = "not installed"
    found["redis-server"] = redis_server_version()
    return found


def git_revision() -> str:
    """The commit benchmarked, with ``+dirty`` if the working tree had changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}+dirty" if dirty else head


def command_line() -> str:
    """The exact command line of this process (interpreter, ``-m benchmarks``, options)."""
    return shlex.join(sys.orig_argv)


def describe() -> dict[str, Any]:
    """Everything a reader needs to weigh the figures."""
    return {
        "started_at": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(),
        "git": git_revision(),
        "machine": machine(),
        "versions": versions(),
        "load_average_at_start": load_average(),
    }
