"""Mutation testing: ``./dev mutate [module ...]`` (``python -m tests.mutation``).

For each module of ``taskiq_dedup`` named (default: ``DEFAULT_MODULES``), copies
the project's files into a scratch directory, runs ``mutmut`` there on that one
module against the test files ``MODULE_TESTS`` lists for it (the tests that can
see its behaviour; the whole suite would take hours), and prints the score and
each surviving mutant's diff. docs/MUTATION.md lists the survivors and why each
is equivalent or acceptable. Exits 1 if a module scores under ``--min-score``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

MODULE_TESTS: dict[str, list[str]] = {
    "keys": ["tests/test_keys.py"],
    "triggers": ["tests/test_triggers.py"],
    "leases": [
        "tests/test_leases.py",
        "tests/test_lifetimes.py",
        "tests/test_middleware.py",
        "tests/test_ledger.py",
    ],
    "claims": ["tests/test_claims.py", "tests/test_ledger.py", "tests/test_catch_up.py"],
    "identity": ["tests/test_identity.py"],
    "crons": ["tests/test_crons.py", "tests/test_triggers.py", "tests/test_identity.py"],
    "firing": ["tests/test_firing.py", "tests/test_send_failures.py", "tests/test_source.py"],
    "idempotency": [
        "tests/test_idempotency.py",
        "tests/test_middleware.py",
        "tests/test_lifetimes.py",
    ],
}
"""Module -> the test files that exercise it. Add a module here to mutate it."""

DEFAULT_MODULES = [
    "keys",
    "triggers",
    "leases",
    "claims",
    "identity",
    "crons",
    "firing",
    "idempotency",
]
"""The modules whose design is settled (the others are being reworked)."""

STATUS = re.compile(r"^\s*(\S+): (\w[\w ]*)$")
KILLED = {"killed", "timeout", "segfault"}
"""Outcomes that count as a test noticing the mutant (a hang is noticed too)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="./dev mutate", description=__doc__)
    parser.add_argument(
        "modules",
        nargs="*",
        help=f"of {', '.join(sorted(MODULE_TESTS))} (default: {' '.join(DEFAULT_MODULES)})",
    )
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--min-score", type=float, default=0.0, help="fail below this (0-100)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directories")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.modules) - MODULE_TESTS.keys())
    if unknown:
        parser.error(f"no test files listed for {unknown} in MODULE_TESTS (tests/mutation.py)")
    return args


def scratch_copy() -> Path:
    """The project's tracked and new (not ignored) files, copied to a temp directory."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    target = Path(tempfile.mkdtemp(prefix="taskiq-dedup-mutate-"))
    for name in filter(None, listed):
        source = PROJECT_ROOT / name.decode()
        if source.is_file():
            (target / name.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name.decode())
    return target


def config(module: str) -> str:
    """``setup.cfg`` for mutmut (read there because pyproject.toml has no ``[tool.mutmut]``)."""
    tests = "\n    ".join(MODULE_TESTS[module])
    return (
        "[mutmut]\n"
        "source_paths = taskiq_dedup/\n"
        f"only_mutate = taskiq_dedup/{module}.py\n"
        f"pytest_add_cli_args_test_selection =\n    {tests}\n"
        "pytest_add_cli_args = -p no:cacheprovider\n"
    )


def mutate(module: str, jobs: int, keep: bool) -> tuple[int, int]:
    """Run mutmut on ``module``; print survivors; return (killed, total)."""
    workdir = scratch_copy()
    try:
        (workdir / "setup.cfg").write_text(config(module))
        mutmut = [os.path.abspath(sys.executable), "-m", "mutmut"]  # noqa: PTH100 -- no symlinks resolved: the venv must stay
        log = workdir / "mutmut-run.log"
        with log.open("wb") as out:
            subprocess.run(
                [*mutmut, "run", "--max-children", str(jobs)],
                cwd=workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        results = subprocess.run(
            [*mutmut, "results", "--all", "true"],
            cwd=workdir,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        statuses = dict(m.groups() for m in map(STATUS.match, results.splitlines()) if m)
        if not statuses:
            print(log.read_text(errors="replace")[-3000:])
            raise SystemExit(f"mutmut produced no results for {module}")
        survivors = sorted(name for name, status in statuses.items() if status not in KILLED)
        for name in survivors:
            diff = subprocess.run(
                [*mutmut, "show", name], cwd=workdir, capture_output=True, text=True, check=False
            ).stdout
            changed = [line for line in diff.splitlines() if line.startswith(("- ", "+ "))]
            print(f"  {statuses[name]}: {name}")
            for line in changed:
                print(f"      {line}")
        return len(statuses) - len(survivors), len(statuses)
    finally:
        if keep:
            print(f"  kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scores: list[tuple[str, int, int]] = []
    for module in args.modules or DEFAULT_MODULES:
        print(f"== taskiq_dedup/{module}.py against {' '.join(MODULE_TESTS[module])}", flush=True)
        killed, total = mutate(module, args.jobs, args.keep)
        scores.append((module, killed, total))
        print(f"   {killed}/{total} killed ({100 * killed / total:.1f}%)", flush=True)
    print()
    failed = False
    for module, killed, total in scores:
        score = 100 * killed / total
        failed |= score < args.min_score
        print(f"{module}: {killed}/{total} mutants killed, score {score:.1f}%")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
