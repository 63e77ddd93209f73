"""``python -m benchmarks.profile --label NAME``: a profile of the worker's hot path.

N no-op scheduled messages (``schedule_id`` + ``dedup_slot``) are pre-filled
into a ``ListQueueBroker`` queue on a private ``redis-server`` and drained in
process by taskiq's ``Receiver`` through ``DedupMiddleware`` - the
``dedup_scheduled`` arm of ``worker_throughput``, with its machinery. Three
passes after a warm-up, each on a fresh queue, each timing only consumption:

1. CPU: ``time.process_time()`` and wall time per message, nothing attached;
2. memory: ``tracemalloc``'s peak during consumption, divided by N;
3. profile: pyinstrument, sampling the event loop's thread.

The text written to ``docs/profiles/worker-NAME.txt`` gives those figures, the
share of sampled time by package (self time: the frame the sample was in), the
time under the first ``taskiq_dedup`` frame of each stack (inclusive: its own
Redis calls count), the functions with the most self time, and pyinstrument's
call tree. Two labels (e.g. ``before`` and ``after`` a change) compare with ``diff``.

Examples::

    python -m benchmarks.profile --label before
    python -m benchmarks.profile --label after --messages 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import tracemalloc
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pyinstrument import Profiler

from benchmarks.environment import (
    PROJECT_ROOT,
    command_line,
    git_revision,
    load_average,
    versions,
)
from benchmarks.servers import flush, private_redis
from benchmarks.worker_throughput import MAX_ASYNC_TASKS, consume, prefill

if TYPE_CHECKING:
    from types import TracebackType

    from pyinstrument.frame import Frame

ARM = "dedup_scheduled"
DEFAULT_MESSAGES = 5_000
WARMUP_MESSAGES = 500
"""Drained once before the passes: imports, script loading and connections are warm."""
DEFAULT_DIR = PROJECT_ROOT / "docs" / "profiles"
INTERVAL = 0.001
"""pyinstrument's sampling interval (s)."""
TOP_FUNCTIONS = 25
GROUPS = (
    ("taskiq_dedup", ("/taskiq_dedup/",)),
    ("taskiq", ("/taskiq/", "/taskiq_redis/")),
    ("redis-py", ("/redis/",)),
    ("asyncio", ("/asyncio/", "/selectors.py", "/socket.py")),
    ("pydantic", ("/pydantic/", "/pydantic_core/")),
    ("benchmark", ("/benchmarks/",)),
)
"""Package of a frame, by a fragment of its file path (first match); else ``OTHER``."""
OTHER = "other (stdlib, ...)"


def group_of(path: str | None) -> str:
    """The package a frame's file belongs to."""
    for name, fragments in GROUPS:
        if path and any(fragment in path for fragment in fragments):
            return name
    return OTHER


def short_path(path: str | None) -> str:
    """A file path without the machine's prefixes: from ``site-packages/`` or the project."""
    if not path:
        return "?"
    for marker in ("site-packages/", f"{PROJECT_ROOT}/"):
        if marker in path:
            return path.split(marker, 1)[1]
    if "/lib/python" in path:
        return "stdlib/" + path.split("/lib/python", 1)[1].split("/", 1)[-1]
    return path


@dataclass
class FrameStats:
    """Self time by package and by function; inclusive time under taskiq_dedup."""

    total: float = 0.0
    by_group: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    by_function: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    under_dedup: float = 0.0

    def walk(self, frame: Frame, caller: str = OTHER, inside_dedup: bool = False) -> None:
        """Add ``frame``'s self time, then its real children's.

        A builtin (``socket.send``, ``str.upper``) has no file: its time counts for
        the package that called it.
        """
        path = frame.file_path
        group = caller if not path or path.startswith("<") else group_of(path)
        if not frame.is_synthetic:
            own = frame.total_self_time
            self.by_group[group] += own
            self.by_function[f"{frame.function} ({short_path(path)}:{frame.line_no})"] += own
        entering = not inside_dedup and group == "taskiq_dedup"
        if entering:
            self.under_dedup += frame.time
        for child in frame.children:
            if not child.is_synthetic:
                self.walk(child, group, inside_dedup or entering)


class CpuClock:
    """Process CPU time and wall time spent inside the ``with`` block."""

    cpu = 0.0
    wall = 0.0

    def __enter__(self) -> CpuClock:
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cpu = time.process_time() - self._cpu
        self.wall = time.perf_counter() - self._wall


class PeakMemory:
    """``tracemalloc``'s peak of memory allocated inside the ``with`` block."""

    peak = 0

    def __enter__(self) -> PeakMemory:
        tracemalloc.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        _, self.peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()


async def _pass(
    url: str, messages: int, around: contextlib.AbstractContextManager[object] | None = None
) -> float:
    """Pre-fill ``messages`` (untimed), then drain them inside ``around``."""
    flush(url)
    prefix = f"profile-{uuid.uuid4().hex[:8]}"
    queue = f"{prefix}:queue"
    await prefill(ARM, url, queue, prefix, messages)
    return await consume(ARM, url, queue, prefix, messages, around=around)


@dataclass
class Measured:
    """The figures of one profile run."""

    messages: int
    load: tuple[list[float], list[float]]
    """The machine's load averages at the start and at the end (it is shared)."""
    cpu: CpuClock
    memory: PeakMemory
    profiler: Profiler


async def measure(messages: int) -> Measured:
    """The warm-up, then the three passes on one private redis-server."""
    load_at_start = load_average()
    cpu, memory = CpuClock(), PeakMemory()
    profiler = Profiler(interval=INTERVAL, async_mode="disabled")
    with private_redis() as server:
        await _pass(server.url, min(messages, WARMUP_MESSAGES))
        await _pass(server.url, messages, cpu)
        await _pass(server.url, messages, memory)
        await _pass(server.url, messages, profiler)
    return Measured(messages, (load_at_start, load_average()), cpu, memory, profiler)


def _largest(seconds: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(seconds.items(), key=lambda item: (-item[1], item[0]))


def render(measured: Measured, label: str) -> str:
    """The profile as text."""
    n = measured.messages
    session = measured.profiler.last_session
    root = session.root_frame() if session else None
    stats = FrameStats()
    if root is not None:
        stats.total = root.time
        stats.walk(root)
    total = stats.total or 1.0
    lines = [
        f"# Worker hot path profile: {label}",
        "",
        f"command: {command_line()}",
        f"commit: {git_revision()}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"load average (1, 5, 15 min): at start {measured.load[0]}, at end {measured.load[1]}"
        " (the machine may be shared: compare profiles made under similar load)",
        f"messages: {n:,} no-op scheduled messages through DedupMiddleware "
        f"(max_async_tasks={MAX_ASYNC_TASKS}), drained in process from a ListQueueBroker",
        "",
        "## Per message (pass 1: no profiler; pass 2: tracemalloc)",
        "",
        f"CPU time per message:  {measured.cpu.cpu / n * 1e6:8.1f} us  "
        f"(process CPU {measured.cpu.cpu:.3f} s for {n:,})",
        f"wall time per message: {measured.cpu.wall / n * 1e6:8.1f} us  "
        f"({n / measured.cpu.wall:,.0f} messages/s)",
        f"memory per message:    {measured.memory.peak / n:8.1f} B   "
        f"(tracemalloc peak {measured.memory.peak / 1024:,.0f} KiB during consumption / {n:,};"
        f" the peak is set by the {MAX_ASYNC_TASKS} tasks in flight, not by N)",
        "",
        f"## Sampled time by package (pass 3: pyinstrument, {stats.total:.2f} s sampled)",
        "",
        "self time: the innermost Python frame of each sample (a builtin counts for its caller)",
        "",
    ]
    cpu_us = measured.cpu.cpu / n * 1e6
    for name, seconds in _largest(stats.by_group):
        lines.append(f"  {name:<22} {seconds / total:6.1%}  ~{seconds / total * cpu_us:7.1f} us")
    lines += [
        "",
        f"  inclusive: under the outermost taskiq_dedup frame {stats.under_dedup / total:6.1%}"
        f"  ~{stats.under_dedup / total * cpu_us:7.1f} us (its calls into redis-py included)",
        "",
        "us: the share times pass 1's CPU time per message (the profiler's own overhead",
        "inflates pass 3's absolute times, not the shares much).",
        "",
        f"## Top {TOP_FUNCTIONS} functions by self time",
        "",
    ]
    for function, seconds in _largest(stats.by_function)[:TOP_FUNCTIONS]:
        lines.append(f"  {seconds / total:6.1%}  {function}")
    lines += ["", "## Call tree (pyinstrument)", ""]
    if session is not None:
        tree = measured.profiler.output_text(unicode=False, color=False, show_all=False)
        lines += [line.rstrip().replace(f"{PROJECT_ROOT}/", "") for line in tree.splitlines()]
    return "\n".join(lines).rstrip() + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--label", required=True, help="names the file: worker-LABEL.txt")
    parser.add_argument("--messages", type=int, default=DEFAULT_MESSAGES, help="N per pass")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_DIR, help="where it goes")
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    if not args.label.replace("-", "").replace("_", "").isalnum():
        parser.error("--label: letters, digits, - and _ only")
    return args


def main(argv: list[str] | None = None) -> int:
    """Profile, write the text, print where it went."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    measured = asyncio.run(measure(args.messages))
    path = args.output_dir / f"worker-{args.label}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(measured, args.label))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
