"""``taskiq dedup doctor``: each set-up that can cause a duplicate or a miss, with its fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskiq_dedup.cli import config_checks, server_checks
from taskiq_dedup.cli.output import Result
from taskiq_dedup.cli.session import opened, reach, redis_target

if TYPE_CHECKING:
    import argparse

    from taskiq_dedup.cli.findings import Finding
    from taskiq_dedup.cli.loader import App

HELP = (
    "check the scheduler, broker and Redis; one line per finding with its fix; "
    "exit 1 if one can cause a duplicate or a miss"
)

FAILED = 1
"""Exit status when a finding is an error."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``doctor`` takes no options of its own."""


async def run(app: App, args: argparse.Namespace) -> Result:
    """Run every check; exit status 1 when an error was found."""
    findings: list[Finding] = [*config_checks.sources(app), *config_checks.middleware(app)]
    findings.extend(config_checks.broker(app))
    clients = {
        redis_target(redis): redis
        for redis in [*(c.redis for c in app.composites), *(g.redis for g in app.middlewares)]
    }
    for where, redis in clients.items():
        await reach(redis)
        findings.extend(await server_checks.server(redis, where))
        findings.extend(await server_checks.clock(redis, where))
    async with opened(app, need_composite=False) as views:
        for view in views:
            findings.extend(config_checks.copies(view))
            findings.extend(config_checks.pickling(view))
            findings.extend(config_checks.foreign(app, view))
    order = {"error": 0, "warning": 1, "info": 2}
    findings.sort(key=lambda f: order[f.level])
    errors = sum(f.level == "error" for f in findings)
    ok = errors == 0
    lines = [f.line() for f in findings]
    lines.append(
        f"{errors} error(s), {len(findings) - errors} other finding(s): "
        + ("nothing found that can cause a duplicate or a miss" if ok else "fix the errors"),
    )
    return Result(
        {"ok": ok, "findings": [f.as_json() for f in findings]},
        lines=lines,
        status=0 if ok else FAILED,
    )
