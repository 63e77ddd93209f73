"""Deciding one firing: claim its slot, wait out another sender, confirm or release.

``FiringCoordinator`` drives the claim protocol of ``claims`` for a scheduler of
any kind (it knows schedules only by id and trigger, not taskiq or APScheduler):

1. ``acquire`` offers the trigger's candidate slots and gets the earliest unsent
   one, pending under this attempt's lease. Its first claim waits for this
   process's stagger step of the schedule (0-20 ms), so that the schedulers of a
   tick share its firings (not for a late send or a later run time: ``stagger``,
   nor where its last claim won with no rival: alone).
   Another sender's live pending claim is waited for - it confirms (nothing to do),
   releases after a failed send, or lapses (its process died) and is taken over -
   for at most ``wait`` seconds, or while it sees the holder renew its lease (up to
   ``MAX_RENEWED`` more).
2. The adapter sends the firing, then calls ``confirm``; a failed send calls
   ``release``, so a waiting scheduler sends at once.

While a won claim is neither confirmed nor released, one renewal loop per
coordinator restarts its pending lease every third of it, for at most
``MAX_RENEWED`` seconds: a send that waits its turn behind thousands of others in
a live process keeps its claim, while a dead process's claims lapse as before.

Slots that fell out of the window unsent are reported once (by the winner that
skips past them) at ERROR, naming schedule and slot. The one exception is a lapsed
claim's own slot: its sender died after claiming it, perhaps after sending it, so
it is reported *unconfirmed*, at WARNING.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from taskiq_dedup.claims import PENDING_LEASE, Claim, Confirm, FiringClaims
from taskiq_dedup.histograms import CLAIM_SECONDS_BUCKETS, LATENESS_SECONDS_BUCKETS, Histogram
from taskiq_dedup.log_fields import decision
from taskiq_dedup.triggers import OneOffTrigger, SlotTrigger, Trigger, epoch_seconds

if TYPE_CHECKING:
    from taskiq_dedup.keys import KeySpace

logger = logging.getLogger("taskiq_dedup.firing")

MIN_STATE_TTL_MS = 24 * 3600 * 1000
"""A firing state lives at least a day after its last claim, however short its
period: an outage of every scheduler up to a day then ends with the window's slots
sent late and the older ones reported missed, instead of forgotten. A hash of a
few fields and the firing ledger (under 3 KB, ``ledger``) per schedule; a deleted
schedule's state, ledger included, expires a day later."""

WAIT_MARGIN = 1.0
"""Seconds a scheduler waits beyond a pending claim's lease before giving up: lets
the lease lapse by Redis's clock (which may run a little behind this host's)."""

WAIT_POLL = 0.05
"""Seconds between looks at another sender's pending claim at first; doubled up to
``WAIT_POLL_MAX``. A healthy sender confirms within milliseconds."""

WAIT_POLL_MAX = 0.5
"""The longest pause between looks at a pending claim."""

WAIT_GRID = 0.05
"""Looks at other senders' pending claims happen on a grid of this many seconds of
the event loop's clock: the waiters of one process due in the same step wake in the
same loop turn and share one script call per ``pipelining.MAX_BATCH`` looks
(``ScriptPipeline(same_turn=True)``). Waking each at its own microsecond split a
burst's looks into calls of a few each, which cost a loser more CPU than its claim.
A look comes at most this much later than its pause says."""

MAX_WAIT_POLLS_PER_SECOND = 2000
"""Looks at other senders' pending claims one process makes per second at most, its
waits all together. A look costs ~0.05 ms of this process's CPU: with a few waits
each looks as ``WAIT_POLL`` says, but in a burst (thousands of firings waiting for
another scheduler's sends) polling would starve this process's own sends. With N
waits each looks every N / 2000 s (a release or a lapse is noticed that much later;
both still are), so polling takes at most ~10 % of a core."""

RENEWALS_PER_LEASE = 3
"""How often per lease the renewal loop restarts each pending lease: the lease
survives two renewals in a row that come late (a busy event loop, a call queued
behind a burst's claims) or fail (a Redis blip)."""

MAX_RENEWED = 60.0
"""Seconds after its claim during which a live process renews a pending claim.
A send queued behind a burst of 10k firings is in the broker within seconds even
on a loaded host; one still not there after a minute has hung (a broker that never
answers, no ``--send-timeout``), and its lease then lapses so that another
scheduler takes the slot over while it is still within ``LATE_WINDOW`` (2 min)."""

STAGGER_STEPS = 4
"""A scheduler makes its first claim of a firing in one of this many steps of
``STAGGER_STEP``, chosen per (process, schedule) by a hash: the schedulers of one
tick then win shares of its firings and send them in parallel, instead
of the first to reach Redis winning every firing of the tick (its claims go as one
call) and sending them all while the others wait. Measured with three schedulers
of 100 firings a tick: p50 lateness 1.22x -> 0.89x bare (docs/BENCHMARKS.md).
A scheduler whose last claim of a schedule won with no rival (no look at the slot
before, ``claims``: 'looked', and no other sender of it) claims the next firing at
once: alone, it pays no step; one joining is seen at the next tick, and staggered
shares follow."""

STAGGER_STEP = 0.005
"""Seconds between stagger steps: longer than the spread of schedulers' wake-ups at a
tick's start on a busy host, short against a tick's sends (100 kicks take ~60 ms).
The last step claims 15-20 ms after the first (steps start at the next step
boundary); a scheduler sends the first step's firings meanwhile."""

MAX_CLAIMS_IN_FLIGHT = 1000
"""Claim calls one coordinator has made and not yet had answered, at most; more
wait their turn before the call is made. A call's deadline (``claim_retry_window``)
runs from when it is made, the wait behind earlier calls included, so 10k claims
made at once by a burst would spend it queued behind one another (and behind the
process's own sends) and fail with Redis healthy. 1000 is one pipelined round trip
(``pipelining.MAX_BATCH``): the next batch is queued while one is on the wire."""

CONFIRM_HOLD = 0.1
"""Seconds a confirm waits at most for this process's other won sends still in
flight, so that one tick's confirms go to Redis together, once its last kick is in
the broker (or the hold is over): one call for the confirms of the sends won so far,
made after their kicks instead of between them (a tick whose later stagger steps are
won after its first step's kicks returned confirms in up to ``STAGGER_STEPS`` calls).
A healthy broker takes a tick's kicks well within it; a slow or hung send holds the
others' confirms no longer than this, and every held claim's lease is renewed
meanwhile. Only the confirm waits: the firing is in the broker already."""

MAX_KNOWN_CURSORS = 100_000
"""Schedules whose last seen cursor this process keeps (``FiringCoordinator``): one
small int per schedule, far above any real schedule count; past it the memory is
dropped at once (it is only a shortcut: the next claim of each schedule offers
its whole window again and learns the cursor back)."""


def due_slots(trigger: Trigger | SlotTrigger, now: datetime) -> list[int]:
    """Return the trigger's candidates at ``now`` that are due, the current slot last.

    Cron candidates reach ``MAX_CLOCK_SKEW`` ahead: a slot still ahead of this
    host's clock is offered only when nothing due is left (a tick within the skew).
    """
    ahead = trigger.candidates(now)
    # ascending: everything up to the last slot at or before now is due
    due = bisect.bisect_right(ahead, epoch_seconds(now))
    return ahead[:due] or ahead[:1]


def _renewed(seen: tuple[str, float, float], holder: str, lease_left: float, now: float) -> bool:
    """Whether the lease of ``holder`` was restarted since the look ``seen``.

    Without a renewal the lease left shrinks by the time passed; a renewal (or a
    reply that queued longer than the last one) shows more left than that.
    """
    last_holder, last_left, last_at = seen
    return holder == last_holder and lease_left > last_left - (now - last_at) + WAIT_POLL


def after_cursor(candidates: list[int], cursor: int | None) -> list[int]:
    """Drop the candidates at or before a cursor seen earlier; keep the current slot.

    A cursor only moves forward (a claim moves it to just before the slot it wins,
    a confirm to the slot), so every slot at or before one seen earlier is sent or
    given up for good; offering them again changes no claim's outcome. A state lost
    with its data has no cursor, and its claim takes the current slot, kept last.
    """
    if cursor is None:
        return candidates
    return candidates[bisect.bisect_right(candidates, cursor) :] or candidates[-1:]


async def _sleep_on_grid(delay: float) -> None:
    """Sleep at least ``delay`` seconds, until the next point of the ``WAIT_GRID`` grid."""
    loop = asyncio.get_running_loop()
    await _sleep_until(math.ceil((loop.time() + delay) / WAIT_GRID) * WAIT_GRID)


async def _sleep_until(when: float) -> None:
    """Sleep until the event loop's time ``when``, computed by the caller.

    Every sleeper given the same computed time gets the same timer time, and the
    event loop runs them all in one turn (``asyncio.sleep`` reads the clock again for
    each, microseconds apart). A cancelled sleeper leaves no timer behind.
    """
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()
    timer = loop.call_at(when, _wake, woken)
    try:
        await woken
    finally:
        timer.cancel()


def _wake(woken: asyncio.Future[None]) -> None:
    if not woken.done():
        woken.set_result(None)


def _stagger_step(holder: str, schedule_id: str) -> int:
    """Return this process's step for its first claim of ``schedule_id`` (``STAGGER_STEPS``).

    A mixing hash: with a linear one (CRC32), two holder names of one length get the
    same step difference for every schedule id of one length (all 32-character ids),
    so some pairs of schedulers would never be staggered against each other.
    """
    text = f"{holder}\x00{schedule_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "big") % STAGGER_STEPS


async def _sleep_to_step(step: int) -> None:
    """Sleep until ``step`` steps of ``STAGGER_STEP`` past the next step boundary.

    Step ``n`` (n >= 1) wakes 5n to 5(n + 1) ms from now: steps stay a step apart, and
    a tick's claims of one step wake in one loop turn and go as one call (a tick whose
    starts straddle a boundary wakes its later starts' step n with its earlier starts'
    step n + 1: still on the grid, still one call per grid point). Step 0 does not sleep.
    """
    if step:
        start = math.ceil(asyncio.get_running_loop().time() / STAGGER_STEP) * STAGGER_STEP
        await _sleep_until(start + step * STAGGER_STEP)


class _Turns:
    """At most ``limit`` holders at once, the others served first come, first served.

    ``asyncio.Semaphore`` looks through every waiter at each release (Python 3.11),
    which with thousands waiting costs more than the claims themselves.
    """

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._queue: deque[asyncio.Future[None]] = deque()

    @property
    def taken(self) -> bool:
        """Whether every turn is held (a new holder would wait)."""
        return self._free == 0

    async def __aenter__(self) -> None:
        if self._free > 0 and not self._queue:
            self._free -= 1
            return
        turn = asyncio.get_running_loop().create_future()
        self._queue.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # handed a turn, then cancelled
                self._pass_on()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._pass_on()

    def _pass_on(self) -> None:
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1


@dataclass(frozen=True)
class Attempt:
    """A won claim: this process must send ``slot`` and then confirm or release."""

    schedule_id: str
    key: str
    token: str
    slot: int
    ttl_ms: int
    behind: bool
    """An older slot was won: the current one is still due after it."""
    takeover: bool
    missed: tuple[int, ...] = ()
    """Slots the claim skipped as never sent (reported; written to the ledger)."""
    unconfirmed: int | None = None
    """The skipped slot of a lapsed claim, perhaps sent (reported; to the ledger)."""

    def log_fields(self) -> dict[str, object]:
        """Return the ``extra=`` of a log line about this attempt (``log_fields``)."""
        return decision(
            schedule_id=self.schedule_id, slot=self.slot, key=self.key, holder=self.token
        )


@dataclass
class FiringStats:
    """Counters of one coordinator since it was made."""

    claimed: int = 0
    """Slots this process won (and so is sending)."""
    confirmed: int = 0
    """Won slots confirmed in the broker."""
    duplicates_cancelled: int = 0
    """Firings another scheduler had sent or was sending: not sent here."""
    takeovers: int = 0
    """Slots taken over from a sender whose pending lease lapsed."""
    send_failures: int = 0
    """Won slots whose send failed; released for another attempt."""
    sent_late: int = 0
    """Won slots older than the tick's current slot (a skipped or late tick)."""
    missed: int = 0
    """Slots never sent within the late window, reported at ERROR."""
    unconfirmed: int = 0
    """Slots whose sender died after claiming them and that left the late window
    before a takeover: perhaps sent, perhaps not; reported at WARNING."""
    waits_given_up: int = 0
    """Pending claims still live after the longest wait: left to their sender."""
    claim_errors: int = 0
    """Claims that failed on Redis errors after retrying (see the adapter's policy)."""
    renewals: int = 0
    """Pending leases restarted by the renewal loop (sends queued behind others)."""


class FiringCoordinator:
    """Claims, confirms and releases firings for one scheduler process."""

    def __init__(
        self,
        claims: FiringClaims,
        keys: KeySpace,
        *,
        one_off_grace: timedelta,
        wait: float = PENDING_LEASE + WAIT_MARGIN,
    ) -> None:
        self.claims = claims
        self.keys = keys
        self.one_off_grace = one_off_grace
        self.wait = wait
        self.stats = FiringStats()
        self._keys: dict[str, str] = {}
        """Firing state keys by schedule id, built once (``KeySpace`` hashes odd ids)."""
        self._cursors: dict[str, int] = {}
        """The latest cursor seen per firing state key: a claim offers only the slots
        after it (``after_cursor``), not the whole late window, at every tick."""
        self._alone: set[str] = set()
        """Firing state keys whose last claim here won with no rival: the next claim of
        each is not staggered (``_unrivalled``)."""
        self._held: dict[str, tuple[Attempt, float]] = {}
        """Won claims not yet confirmed or released, by token, with when they were won
        (``time.monotonic``): the renewal loop keeps their leases live."""
        self._renewer: asyncio.Task[None] | None = None
        self._to_confirm: list[tuple[Attempt, asyncio.Future[bool]]] = []
        """Confirms asked for and not yet sent (``CONFIRM_HOLD``), with their outcomes."""
        self._confirming = 0
        """Held claims whose confirm is asked for and not yet decided."""
        self._confirm_timer: asyncio.TimerHandle | None = None
        self._confirm_sends: set[asyncio.Task[None]] = set()
        self._waiting = 0
        self._in_flight = _Turns(MAX_CLAIMS_IN_FLIGHT)
        """Acquires of this coordinator now waiting for another sender's pending claim."""
        self.histograms = {
            "claim_seconds": Histogram(CLAIM_SECONDS_BUCKETS),
            "lateness_seconds": Histogram(LATENESS_SECONDS_BUCKETS),
        }
        """``claim_seconds``: each ``acquire``, waits included, whatever its outcome;
        ``lateness_seconds``: each confirmed firing, confirm time minus its slot."""

    def state_ttl_ms(self, trigger: Trigger | SlotTrigger, slot: int, now: datetime) -> int:
        """How long the firing state must live after a claim on ``slot`` at ``now``."""
        if isinstance(trigger, OneOffTrigger):
            expiry = trigger.state_expiry(slot, self.one_off_grace)
        else:
            expiry = trigger.state_expiry(slot)
        return max(MIN_STATE_TTL_MS, (expiry - epoch_seconds(now)) * 1000)

    def key(self, schedule_id: str) -> str:
        """Return the firing state key of ``schedule_id``."""
        key = self._keys.get(schedule_id)
        if key is None:
            if len(self._keys) >= MAX_KNOWN_CURSORS:
                self._keys.clear()
            key = self._keys[schedule_id] = self.keys.firings(schedule_id)
        return key

    def _saw_cursor(self, key: str, cursor: int | None) -> None:
        """Remember that the state at ``key`` had sent every slot up to ``cursor``."""
        if cursor is None or cursor <= 0:
            return
        known = self._cursors.get(key)
        if known is None:
            if len(self._cursors) >= MAX_KNOWN_CURSORS:
                self._cursors.clear()
        elif known >= cursor:
            return
        self._cursors[key] = cursor

    async def acquire(
        self,
        schedule_id: str,
        trigger: Trigger | SlotTrigger,
        now: datetime,
        *,
        stagger: bool = True,
    ) -> Attempt | None:
        """Win the earliest unsent slot due at ``now``, or return ``None`` if it is not ours.

        ``stagger``: wait for this process's stagger step before the first claim, as a
        tick's firings do (``STAGGER_STEPS``); ``False`` for a claim that is not part of
        a tick (a late re-send, a job's later run times).

        :raises RedisError: Redis failed for the claim's whole retry window.
        """
        started = time.monotonic()
        try:
            return await self._acquire(schedule_id, trigger, now, stagger=stagger)
        finally:
            self.histograms["claim_seconds"].observe(time.monotonic() - started)

    async def _acquire(
        self, schedule_id: str, trigger: Trigger | SlotTrigger, now: datetime, *, stagger: bool
    ) -> Attempt | None:
        key = self.key(schedule_id)
        # no history: the last, current, is taken
        candidates = after_cursor(due_slots(trigger, now), self._cursors.get(key))
        token = self.claims.new_attempt()
        ttl_ms = self.state_ttl_ms(trigger, candidates[-1], now)
        if stagger and key not in self._alone and not self._in_flight.taken:
            # (a burst's turns interleave the schedulers' claims already)
            await _sleep_to_step(_stagger_step(self.claims.holder, schedule_id))
        claim = await self._win(schedule_id, key, token, candidates, ttl_ms)
        if claim is None:
            return None
        self.stats.claimed += 1
        missed = (
            ()
            if claim.previous is None
            else tuple(
                slot
                for slot in trigger.slots_between(claim.previous, claim.slot)
                if slot != claim.unconfirmed
            )
        )
        attempt = Attempt(
            schedule_id=schedule_id,
            key=key,
            token=token,
            slot=claim.slot,
            ttl_ms=ttl_ms,
            behind=claim.slot < candidates[-1],
            takeover=claim.verdict == "takeover",
            missed=missed,
            unconfirmed=claim.unconfirmed,
        )
        self._hold(attempt)
        if attempt.takeover:
            self.stats.takeovers += 1
            logger.warning(
                "Took over firing %s of schedule %s from %s, whose send did not "
                "confirm within its lease",
                claim.slot,
                schedule_id,
                claim.holder,
                extra=decision(
                    schedule_id=schedule_id, slot=claim.slot, key=key, holder=claim.holder
                ),
            )
        if attempt.behind:
            self.stats.sent_late += 1
            logger.warning(
                "Sending firing %s of schedule %s late (%ds after its time)",
                claim.slot,
                schedule_id,
                epoch_seconds(now) - claim.slot,
                extra=decision(
                    schedule_id=schedule_id, slot=claim.slot, key=key, holder=self.claims.holder
                ),
            )
        if claim.unconfirmed is not None:
            # a takeover names the lapsed sender; a win's holder is a rival, not it
            sender = claim.holder if attempt.takeover else ""
            self._report_unconfirmed(schedule_id, claim.unconfirmed, sender)
        self._report_missed(schedule_id, missed)
        return attempt

    def _report_unconfirmed(self, schedule_id: str, slot: int, holder: str) -> None:
        """Log the slot of a lapsed claim that left the window before anyone took it over."""
        self.stats.unconfirmed += 1
        logger.warning(
            "Firing %s (%s) of schedule %s is unconfirmed: %s claimed it and "
            "stopped before confirming, perhaps after sending it (the worker guard runs "
            "it at most once); too late to send it again",
            slot,
            datetime.fromtimestamp(slot, tz=timezone.utc).isoformat(),
            schedule_id,
            f"its sender {holder}" if holder else "its sender (not recorded)",
            extra=decision(
                schedule_id=schedule_id,
                slot=slot,
                key=self.keys.firings(schedule_id),
                holder=holder,
            ),
        )

    async def _win(
        self, schedule_id: str, key: str, token: str, candidates: list[int], ttl_ms: int
    ) -> Claim | None:
        """Claim, waiting out another sender's pending claim; ``None`` if it is not ours."""
        started = time.monotonic()
        give_up = started + self.wait
        poll = WAIT_POLL
        seen: tuple[str, float, float] | None = None  # holder, lease left, when: the last look
        waiting = False
        try:
            while True:
                try:
                    async with self._in_flight:
                        claim = await self.claims.claim(key, token, candidates, ttl_ms)
                except Exception:
                    self.stats.claim_errors += 1
                    raise
                self._unrivalled(key, claim)
                if claim.won:
                    self._saw_cursor(key, claim.slot - 1)
                    return claim
                if claim.verdict == "sent":
                    self._saw_cursor(key, claim.slot)
                    self.stats.duplicates_cancelled += 1
                    logger.info(
                        "Firing %s of schedule %s was sent by %s; not sending it again",
                        claim.slot,
                        schedule_id,
                        claim.holder,
                        extra=decision(
                            schedule_id=schedule_id, slot=claim.slot, key=key, holder=claim.holder
                        ),
                    )
                    return None
                looked = time.monotonic()
                if seen is not None and _renewed(seen, claim.holder, claim.lease_left, looked):
                    # A live holder renewing a queued send: wait for it while it may
                    # renew; if it stops, its lease lapses first and is taken over.
                    give_up = max(
                        give_up,
                        min(
                            looked + claim.lease_left + WAIT_MARGIN,
                            started + MAX_RENEWED + self.wait,  # there when it stops renewing
                        ),
                    )
                seen = (claim.holder, claim.lease_left, looked)
                if looked >= give_up:
                    self._gave_up(schedule_id, key, claim, give_up - started)
                    return None
                if not waiting:
                    waiting = True
                    self._waiting += 1
                pause = max(
                    min(poll, claim.lease_left + 0.01),
                    self._waiting / MAX_WAIT_POLLS_PER_SECOND,
                )
                await _sleep_on_grid(min(pause, give_up - looked))
                poll = min(poll * 2, WAIT_POLL_MAX)
        finally:
            if waiting:
                self._waiting -= 1

    def _unrivalled(self, key: str, claim: Claim) -> None:
        """Remember whether ``claim`` shows this process alone on ``key``.

        A win with no rival (``Claim.holder`` of 'won': nobody found the slot before
        taken, and this process sent it or none did) means no other scheduler ran this
        schedule's last tick: its next first claim is not staggered, so a lone
        scheduler sends each tick at once. A rival, a loss or a takeover makes the
        next one staggered again: a scheduler that joins is seen at the next tick.
        """
        if claim.verdict == "won" and not claim.holder:
            if key not in self._alone and len(self._alone) >= MAX_KNOWN_CURSORS:
                self._alone.clear()
            self._alone.add(key)
        else:
            self._alone.discard(key)

    def _gave_up(self, schedule_id: str, key: str, claim: Claim, waited: float) -> None:
        self.stats.waits_given_up += 1
        logger.warning(
            "Firing %s of schedule %s is still being sent by %s after %.1fs; "
            "leaving it to that sender (a later tick takes it over if it died)",
            claim.slot,
            schedule_id,
            claim.holder,
            waited,
            extra=decision(schedule_id=schedule_id, slot=claim.slot, key=key, holder=claim.holder),
        )

    def _report_missed(self, schedule_id: str, missed: tuple[int, ...]) -> None:
        """Log, once across schedulers, the slots between the cursor and the one won."""
        for slot in missed:
            self.stats.missed += 1
            logger.error(
                "Firing %s (%s) of schedule %s was never sent: every scheduler was down, "
                "blocked or failing past the late window",
                slot,
                datetime.fromtimestamp(slot, tz=timezone.utc).isoformat(),
                schedule_id,
                extra=decision(
                    schedule_id=schedule_id,
                    slot=slot,
                    key=self.key(schedule_id),
                    holder=self.claims.holder,
                ),
            )

    async def confirm(self, attempt: Attempt) -> None:
        """Record that the broker took ``attempt``'s firing.

        The confirm is sent with the others of this process once none of its won
        sends is still in flight, or after ``CONFIRM_HOLD`` (one call for a tick's
        confirms, after its kicks); it returns when the confirm is decided.

        :raises RedisError: Redis failed for the whole retry window; the pending
            claim then lapses and another scheduler may send a second copy, which
            the worker guard drops.
        """
        self.stats.confirmed += 1
        self.histograms["lateness_seconds"].observe(max(0.0, time.time() - attempt.slot))
        decided: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._to_confirm.append((attempt, decided))
        counted = attempt.token in self._held
        self._confirming += counted
        self._confirm_when_sent()
        try:
            confirmed = await decided
        finally:  # renewed until the confirm is decided: its lease must not lapse meanwhile
            self._confirming -= counted
            self._held.pop(attempt.token, None)
        self._saw_cursor(attempt.key, attempt.slot)  # moved forward either way
        if not confirmed:
            logger.info(
                "Firing %s of schedule %s was taken over while this send ran; the worker "
                "guard drops the second copy",
                attempt.slot,
                attempt.schedule_id,
                extra=attempt.log_fields(),
            )

    def _confirm_when_sent(self) -> None:
        """Send the confirms asked for once no other won send is in flight, or after the hold."""
        if not self._to_confirm:
            return
        if len(self._held) <= self._confirming:  # every held claim awaits its confirm
            self._send_confirms()
        elif self._confirm_timer is None:
            loop = asyncio.get_running_loop()
            self._confirm_timer = loop.call_later(CONFIRM_HOLD, self._send_confirms)

    def _send_confirms(self) -> None:
        if self._confirm_timer is not None:
            self._confirm_timer.cancel()
            self._confirm_timer = None
        batch, self._to_confirm = self._to_confirm, []
        if batch:
            sending = asyncio.get_running_loop().create_task(self._confirm_batch(batch))
            self._confirm_sends.add(sending)
            sending.add_done_callback(self._confirm_sends.discard)

    async def _confirm_batch(self, batch: list[tuple[Attempt, asyncio.Future[bool]]]) -> None:
        """Confirm ``batch`` in one group of script calls; hand each outcome to its caller."""
        outcomes: list[bool | BaseException]
        try:
            outcomes = await self.claims.confirm_many(
                [
                    Confirm(
                        key=attempt.key,
                        attempt=attempt.token,
                        slot=attempt.slot,
                        ttl_ms=attempt.ttl_ms,
                        takeover=attempt.takeover,
                        missed=attempt.missed,
                        unconfirmed=attempt.unconfirmed,
                    )
                    for attempt, _ in batch
                ],
            )
        except BaseException as exc:  # cancelled (close), or a bug: every caller learns it
            for _, decided in batch:
                if not decided.done():
                    decided.set_exception(exc)
            raise
        for (_, decided), outcome in zip(batch, outcomes, strict=True):
            if decided.done():  # its caller was cancelled; the confirm was sent all the same
                continue
            if isinstance(outcome, BaseException):
                decided.set_exception(outcome)
            else:
                decided.set_result(outcome)

    async def release(self, attempt: Attempt) -> None:
        """Give up ``attempt`` after its send failed, so another sender takes the slot."""
        self.stats.send_failures += 1
        self._held.pop(attempt.token, None)  # a failed release lapses on its own
        self._confirm_when_sent()  # one send fewer in flight
        await self.claims.release(
            attempt.key, attempt.token, missed=attempt.missed, unconfirmed=attempt.unconfirmed
        )

    # ------------------------------------------------------------ lease renewal

    def _hold(self, attempt: Attempt) -> None:
        """Keep ``attempt``'s lease live until it is confirmed or released."""
        self._held[attempt.token] = (attempt, time.monotonic())
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_held())

    async def _renew_held(self) -> None:
        """Renew every held claim each third of a lease, in one batch; end when none is held.

        A claim held past ``MAX_RENEWED`` is no longer renewed (its send has hung):
        it lapses and may be taken over. A claim that is no longer this attempt's
        (taken over after a late renewal) is dropped. The loop runs in this process
        only while it runs at all: a dead or frozen process renews nothing.
        """
        period = self.claims.pending_lease_ms / 1000 / RENEWALS_PER_LEASE
        while self._held:
            await asyncio.sleep(period)
            limit = time.monotonic() - MAX_RENEWED
            due = []
            for token, (attempt, won_at) in list(self._held.items()):
                if won_at < limit:
                    del self._held[token]
                    logger.warning(
                        "Firing %s of schedule %s is still not in the broker %.0fs after "
                        "its claim; its lease is no longer renewed, so another scheduler "
                        "may take it over",
                        attempt.slot,
                        attempt.schedule_id,
                        MAX_RENEWED,
                        extra=attempt.log_fields(),
                    )
                else:
                    due.append(attempt)
            if not due:
                continue
            replies = await asyncio.gather(
                *(self.claims.renew(attempt.key, attempt.token) for attempt in due),
                return_exceptions=True,
            )
            for attempt, reply in zip(due, replies, strict=True):
                if reply is False:  # confirmed or released meanwhile, or taken over
                    self._held.pop(attempt.token, None)
                elif isinstance(reply, BaseException):
                    if not isinstance(reply, Exception):
                        raise reply
                    logger.debug("Renewing the lease of %s failed: %s", attempt.key, reply)
                self.stats.renewals += reply is True

    async def close(self) -> None:
        """Stop renewing (at shutdown): the claims still held lapse or are released.

        Confirms asked for are sent first (their firings are in the broker).
        """
        self._send_confirms()
        await asyncio.gather(*self._confirm_sends, return_exceptions=True)
        self._held.clear()
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
