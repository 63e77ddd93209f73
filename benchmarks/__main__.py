"""``python -m benchmarks``: run the benchmarks, write the JSON (and the docs).

Examples::

    python -m benchmarks                       # everything (~12 min on 2 cores)
    python -m benchmarks --write-docs          # ... and docs/BENCHMARKS.md + its PNG figures
    python -m benchmarks --quick --only merge  # a smoke run of one benchmark
    python -m benchmarks --docs-only           # docs/BENCHMARKS.md and figures from the last JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import burst, claim_cost, demo, lateness, merge, report, worker_throughput
from benchmarks.environment import PROJECT_ROOT, describe, load_average
from benchmarks.harness import Config

if TYPE_CHECKING:
    from collections.abc import Callable

    from benchmarks.harness import Result
    from benchmarks.plots import Plot

BENCHMARKS: dict[str, Callable[[Config], Result]] = {
    worker_throughput.NAME: worker_throughput.run,
    claim_cost.NAME: claim_cost.run,
    merge.NAME: merge.run,
    burst.NAME: burst.run,
    lateness.NAME: lateness.run,
    demo.NAME: demo.run,
}
DEFAULT_OUTPUT = PROJECT_ROOT / "benchmarks" / "results" / "latest.json"
DEFAULT_DOCS = PROJECT_ROOT / "docs" / "BENCHMARKS.md"


def _names(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    return names


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument(
        "--only",
        type=_names,
        default=list(BENCHMARKS),
        help=f"comma-separated: {', '.join(BENCHMARKS)}",
    )
    parser.add_argument("--reps", type=int, default=None, help="repetitions for every benchmark")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON results file")
    parser.add_argument(
        "--write-docs",
        nargs="?",
        type=Path,
        const=DEFAULT_DOCS,
        default=None,
        metavar="PATH",
        help=f"also write the Markdown report (default {DEFAULT_DOCS.relative_to(PROJECT_ROOT)})",
    )
    parser.add_argument(
        "--docs-only", action="store_true", help="render the docs from --output without running"
    )
    args = parser.parse_args(argv)
    if args.reps is not None and args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def _wrote(docs: Path, figures: list[Plot]) -> None:
    for path in (docs, *(figure.path for figure in figures)):
        print(f"wrote {path}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks; write the results."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # LabelScheduleSource warns that taskiq_dedup's skip task (registered on taskiq's
    # shared broker) is not on the benchmark's broker: true, and harmless here.
    logging.getLogger("taskiq.schedule_sources.label_based").setLevel(logging.ERROR)
    if args.docs_only:
        docs = args.write_docs or DEFAULT_DOCS
        figures = report.write_docs(json.loads(args.output.read_text()), docs)
        _wrote(docs, figures)
        return 0
    config = Config(quick=args.quick, reps=args.reps)
    started = time.monotonic()
    data: dict[str, Any] = {
        "schema_version": report.SCHEMA_VERSION,
        "quick": args.quick,
        "environment": describe(),
        "duration_s": 0.0,
        "load_average_at_end": None,
        "benchmarks": [],
        "failed": [],
    }
    for name in args.only:
        print(f"== {name}", file=sys.stderr, flush=True)
        bench_started = time.monotonic()
        try:
            result = BENCHMARKS[name](config)
        except Exception:  # the others still run; the exit status tells
            traceback.print_exc()
            data["failed"].append({"name": name, "error": traceback.format_exc(limit=5)})
        else:
            result.seconds = time.monotonic() - bench_started
            data["benchmarks"].append(result.as_dict())
        print(f"   {time.monotonic() - bench_started:.0f} s", file=sys.stderr, flush=True)
        # Written after every benchmark, so a failure late in a run keeps the rest.
        data["duration_s"] = round(time.monotonic() - started, 1)
        data["load_average_at_end"] = load_average()
        report.write_json(data, args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    if args.write_docs is not None:
        _wrote(args.write_docs, report.write_docs(data, args.write_docs))
    return 1 if data["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
