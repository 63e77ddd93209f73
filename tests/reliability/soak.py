"""Long fault runs: ``python -m tests.reliability.soak [--minutes N] [--seed S] [--out FILE]``.

Runs every scenario of ``tests.reliability.scenarios`` for ``--minutes`` of faults
each, prints the table (fault, firings due, executed, duplicates, missed) and,
with ``--out``, writes it with the command line, the date, the versions and the
guarantees to a Markdown file (``docs/RELIABILITY.md``). Exits 1 if anything was
not explained. Process logs are kept under ``--log-dir``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from taskiq_dedup.claims import CLAIM_RETRY_WINDOW
from taskiq_dedup.triggers import MAX_CLOCK_SKEW
from tests.reliability import app
from tests.reliability.scenarios import OUTAGE, SCENARIOS, Result, run_scenario, table
from tests.support.redis_server import redis_server_binary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0, help="faults per scenario")
    parser.add_argument("--seed", type=int, default=1, help="seed of every fault schedule")
    parser.add_argument("--out", type=Path, help="write the report here (docs/RELIABILITY.md)")
    parser.add_argument(
        "--only", action="append", choices=sorted(SCENARIOS), help="run only these scenarios"
    )
    parser.add_argument("--log-dir", type=Path, help="keep process logs here (default: a temp dir)")
    return parser.parse_args(argv)


def versions() -> str:
    redis_server = subprocess.run(
        [redis_server_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    server = next((part[2:] for part in redis_server if part.startswith("v=")), "?")
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("taskiq-dedup", "taskiq", "taskiq-redis", "redis")
    )
    return (
        f"Python {platform.python_version()}, {packages}, redis-server {server}; "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(SCENARIOS)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="taskiq-dedup-soak-"))
    command = shlex.join(["python", "-m", "tests.reliability.soak", *(argv or sys.argv[1:])])
    began = time.monotonic()
    results: list[Result] = []
    for name in names:
        print(f"== {name}: {args.minutes:g} min of faults (logs: {log_dir / name})", flush=True)
        result = run_scenario(
            SCENARIOS[name], duration=args.minutes * 60, seed=args.seed, log_dir=log_dir
        )
        results.append(result)
        print(result.row(), flush=True)
        for violation in result.violations():
            print(f"   VIOLATION: {violation}", flush=True)
    print()
    print(table(results))
    failed = [r for r in results if r.violations()]
    elapsed = time.monotonic() - began
    print(f"\n{len(results)} scenarios in {elapsed / 60:.1f} min; {len(failed)} with violations")
    if args.out:
        args.out.write_text(report(results, command=command, elapsed=elapsed))
        print(f"wrote {args.out}")
    return 1 if failed else 0


def report(results: list[Result], *, command: str, elapsed: float) -> str:
    date = datetime.now(tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    violations = [
        f"- {result.scenario.title}: {violation}"
        for result in results
        for violation in result.violations()
    ]
    return TEMPLATE.format(
        command=command,
        date=date,
        versions=versions(),
        elapsed=elapsed / 60,
        table=table(results),
        violations="\n".join(violations) or "None: every duplicate and every miss was explained.",
        skew=int(MAX_CLOCK_SKEW.total_seconds()),
        retry=CLAIM_RETRY_WINDOW,
        outage=OUTAGE,
        interval=app.INTERVAL,
        dynamic=app.DYNAMIC_INTERVAL,
        lease=app.LEASE_TTL,
        idle=app.IDLE_TIMEOUT_MS / 1000,
    )


TEMPLATE = """\
# Reliability: faults, clock skew, nothing duplicated, nothing lost

This file is written by the soak command; regenerate it rather than editing the table.

```bash
{command}
```

Run on {date} in {elapsed:.0f} min. {versions}.

## Results

{table}

Violations (a duplicate or a miss the fault does not explain): {violations}

How to read it. *Firings due*: every `(schedule, slot)` whose firing moment fell while the
schedulers ran: an interval schedule declared in the decorator ({interval} s), one registered
in a Redis schedule store ({dynamic} s), and `* * * * *` in UTC and in Asia/Kathmandu (each due
once a minute). *Executed*: due firings that ran to completion at least once. *Duplicates*:
completed executions beyond the first of a firing (any firing, due or not). *Missed*: due
firings that never completed; *explained*: missed firings whose moment lay inside a Redis outage
that outlasted the claim retries (or the {retry:.0f} s after it, while schedulers still wait on
retrying claims) - an instant restart explains none - or that were claimed by a scheduler
SIGKILLed in their window, before it sent them. A duplicate is explained only by a restart
without persistence inside its window, at most one per schedule per restart. In the notes,
*duplicates dropped by workers* are second sends `DedupMiddleware` refused to run, and
*deliveries deferred by a worker's Redis error* are messages a worker left pending because its
claim failed (redelivered later; see Known issues).

## Set-up

- Three stock `taskiq scheduler tests.reliability.app:scheduler --skip-first-run
  --update-interval=5` processes, started 0.7 s apart, reading one `CompositeScheduleSource`
  (a `LabelScheduleSource` and a JSON `ListRedisScheduleSource`); one stock `taskiq worker
  --receiver taskiq_dedup:DedupReceiver` process (two in the worker-kill run) on a
  `RedisStreamBroker` with `DedupMiddleware` (lease {lease:g} s, `idle_timeout` {idle:g} s so
  redelivery takes seconds).
- Two private `redis-server` processes. The *dedup* server holds claims and worker keys and takes
  every fault. The broker's stream, the schedule store and the execution record live on a
  *stable* server, so the table measures this package, not the broker's own durability.
- Every task execution appends `start` and `done` records with its `schedule_id` and `dedup_slot`
  labels; the counts come from those. The random moments of every fault come from `--seed`;
  process timing is not reproducible, so counts vary a little between runs.
- Faults: schedulers SIGKILLed (one at a time, at random moments) and restarted; a worker
  SIGKILLed while a task of 1.5 s runs, then replaced; the dedup server SIGKILLed and started
  again at once (persistence off; and with `appendonly yes`, `appendfsync always`); the dedup
  server down for {outage:.0f} s, twice the claim retry window;
  one scheduler's clock 2 s ahead and one's 2 s behind, and separately one 15 s behind (the
  clock taskiq's loop reads and the composite's `clock=` both shifted, as on a host whose clock is
  off); 50-300 ms added to every read between the processes and the dedup server by a TCP proxy
  on 127.0.0.1, in spikes of 2-6 s.

## Guarantees

- **Exactly once per key.** A firing is the key `(schedule id, slot)`. Schedulers claim it with
  one atomic script before sending; workers take a lease on it and mark it done. However many
  schedulers run, restart or are killed, and however often a message is redelivered, the key runs
  to completion once - while Redis keeps its keys and clocks agree (below).
- **Clocks must agree within `MAX_CLOCK_SKEW` ({skew} s).** Slots come from each scheduler's own
  clock: an interval slot is the epoch-aligned bucket holding the local time; a cron slot is the
  latest cron time at or before local time + `MAX_CLOCK_SKEW`. Each scheduler fires at its own
  minute or bucket boundary, so within the tolerance a skewed host names the same slots and
  only runs them early or late (the table shows executions up to 2 s before their slot). What
  bounds the skew is the claims' lifetime: a claim lives until its slot can no longer be fired
  plus `CLAIM_GRACE` (10 s), counted on the claiming host's clock. A host further behind than
  that fires a slot after its claim expired and sends it again; `DedupMiddleware`'s done-marks
  (kept a day) then stop the second run - the 15 s row - but a deployment without the middleware
  would run it twice. Keep hosts on NTP.
- **A Redis restart without persistence forgets claims and done-marks.** A firing claimed before
  the restart and fired again by another scheduler after it (the schedulers fire a bucket within
  a second or so of each other) is sent again, and the workers' done-marks are gone too, so it
  runs twice. Expect at most one extra run per schedule per restart, for the firings in flight at
  that moment (the table counts them). With `appendonly yes` and `appendfsync always` nothing is
  forgotten (the AOF row). Replication is asynchronous: a failover to a replica can lose the last
  claims the same way. A restart also forgets a Redis schedule store and a Redis broker's queue:
  persist the server that holds them.
- **An outage longer than the retry window skips firings, loudly.** A claim is retried for
  `claim_retry_window` ({retry:.0f} s). Past that, with `on_claim_error="skip"` (the default), the
  firing is not sent: one ERROR line `Cannot claim <key> (...); firing skipped
  (on_claim_error='skip')` per scheduler and firing, and `source.stats.claim_errors`. Nothing is
  sent twice. With `on_claim_error="send"` the firing is sent unclaimed instead (never a miss;
  `DedupMiddleware` still stops duplicates if its Redis is reachable). Messages already queued are
  not lost: `DedupMiddleware` (fail-closed) leaves them unacknowledged on a stream broker, which
  redelivers them after `idle_timeout` - taskiq-redis looks for them only when it reads a new
  message, and its default `idle_timeout` is 10 minutes.
- **A scheduler killed between its claim and its send loses that firing.** The claim is taken
  before the broker accepts the message; the other schedulers see the claim and do not send. The
  window is a few milliseconds per firing; such misses would be counted as explained above.
- **A worker killed mid-task re-runs that task.** The message stays pending, the lease lapses
  (`lease_ttl`), and the redelivery takes the key over and runs the task again from the start.
  A task killed after its side effect but before it finished is therefore repeated: the guarantee
  is one *completed* execution per key, as with any at-least-once broker.

## Known issues

Pinned as strict xfails in `tests/reliability/test_findings.py` and `test_bad_input.py`:

- After a Redis restart, `DedupMiddleware`'s first claim on each pooled connection fails
  (`Connection closed by server`: a client made from `redis_url` has no retries), so the message
  waits for redelivery (`idle_timeout`). The fault runs show these as ERROR lines
  `Redis error on claim`; with taskiq-redis's default `idle_timeout` the wait is 10 minutes.
- A claim whose reply is lost (the connection drops after Redis ran the script) is retried and
  then read as another scheduler's claim: that firing is not sent by anyone.
"""


if __name__ == "__main__":
    sys.exit(main())
