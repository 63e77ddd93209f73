"""``taskiq dedup``: the operator's view of taskiq-dedup, as a taskiq CLI plugin.

Registered under the ``taskiq_cli`` entry-point group (as taskiq's own ``worker``
and ``scheduler`` are), so it runs as ``taskiq dedup VERB APP:scheduler [modules…]``.
Each verb is a module with ``HELP``, ``add_arguments(parser)`` and
``async run(app, args) -> Result``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from taskiq.abc.cmd import TaskiqCMD

from taskiq_dedup.cli import doctor, history, migrate, prune, schedules
from taskiq_dedup.cli.errors import USAGE_ERROR, CommandError
from taskiq_dedup.cli.loader import App, load
from taskiq_dedup.cli.output import Result, emit
from taskiq_dedup.deadlines import REDIS_ERRORS

if TYPE_CHECKING:
    from collections.abc import Sequence

VERBS: dict[str, ModuleType] = {
    "schedules": schedules,
    "doctor": doctor,
    "prune": prune,
    "migrate": migrate,
    "history": history,
}


def build_parser() -> argparse.ArgumentParser:
    """Build the ``taskiq dedup`` parser: one sub-command per verb, each with the app options."""
    parser = argparse.ArgumentParser(
        prog="taskiq dedup",
        description="Inspect and repair taskiq-dedup schedules. Exit status 2: the command "
        "could not run (bad APP:scheduler, Redis unreachable). See docs/CLI.md.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, module in VERBS.items():
        sub = verbs.add_parser(name, help=module.HELP, description=module.HELP)
        sub.add_argument("scheduler", help="the scheduler as module:variable (APP:scheduler)")
        sub.add_argument("modules", nargs="*", help="modules declaring tasks, as for taskiq")
        sub.add_argument("--app-dir", "-d", default=None, help="directory to import from")
        sub.add_argument(
            "--fs-discover", "-fsd", action="store_true", help="import every tasks.py found"
        )
        sub.add_argument(
            "--tasks-pattern", "-tp", action="append", default=None, help="glob for -fsd"
        )
        sub.add_argument("--json", action="store_true", help="print JSON (for CI)")
        module.add_arguments(sub)
    return parser


async def _run(verb: ModuleType, app: App, args: argparse.Namespace) -> Result:
    """Run ``verb``; close the clients the broker's ``DedupMiddleware`` made."""
    try:
        result: Result = await verb.run(app, args)
    finally:
        for guard in app.middlewares:
            await guard.shutdown()
    return result


def main(argv: Sequence[str]) -> int:
    """Run one verb; return its exit status (2 when it could not run)."""
    args = build_parser().parse_args(list(argv))
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s"
    )
    verb = VERBS[args.verb]
    try:
        app = load(
            args.scheduler,
            args.modules,
            app_dir=args.app_dir,
            fs_discover=args.fs_discover,
            tasks_pattern=args.tasks_pattern or ["**/tasks.py"],
        )
        result = asyncio.run(_run(verb, app, args))
    except CommandError as exc:
        sys.stderr.write(f"taskiq dedup {args.verb}: error: {exc}\n")
        return USAGE_ERROR
    except REDIS_ERRORS as exc:
        sys.stderr.write(
            f"taskiq dedup {args.verb}: error: Redis failed: {type(exc).__name__}: {exc}\n"
        )
        return USAGE_ERROR
    emit(result, as_json=args.json)
    status: int = result.status
    return status


class DedupCMD(TaskiqCMD):
    """The ``taskiq dedup`` command."""

    short_help = "Inspect taskiq-dedup schedules, check the set-up, prune copies"

    def exec(self, args: Sequence[str]) -> int:
        """Run ``taskiq dedup`` with ``args`` (after the word ``dedup``)."""
        return main(args)
