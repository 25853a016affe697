"""The scheduler: SLA sweep, digests, auto-close and reminders, in serve's event loop, in one process at a time.

APScheduler 3's ``AsyncIOScheduler`` runs the jobs as coroutines in the same
loop as the SMTP listener and the Slack app; the blocking work of each job
runs in a worker thread (or, for the digest in serve, its background
process), so the loop keeps answering. Every job coalesces (a job that fell
behind runs once, not once per missed tick), runs one instance at a time,
and may start up to a grace period late.

Several ``serve`` processes may share one PostgreSQL database; only the one
holding the leader lock (``core.leadership``) runs the jobs. Every process
asks for the lock every :data:`ELECT_SECONDS`, so when the leader dies
another takes over within that time; and the process that becomes leader
catches up at once: a digest that was due while nobody led is made then,
once (the store refuses a second one for the same period).

What each job writes goes out through the outbox, like everything else;
``outbox_written`` wakes the delivery workers right after, so an alert does
not wait for their next poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from core.errors import StoreUnavailable
from core.leadership import LeaderLock
from core.services import housekeeping
from core.services import sla
from core.store import Store
from notifications.digest_job import DueDigest, due_digests, make_digest

log = logging.getLogger("supportdesk.scheduler")

ELECT_SECONDS = 10
SWEEP_SECONDS = 60
DIGEST_CATCH_UP_MINUTES = 30
HOUSEKEEPING_MINUTES = 60
HOUSEKEEPING_ROUNDS = 10  # batches of auto-close per run, at most
MISFIRE_GRACE_SECONDS = 300

DigestMaker = Callable[[Store, DueDigest, datetime], Awaitable[int | None]]


async def digest_in_thread(store: Store, due: DueDigest, now: datetime) -> int | None:
    """The digest made in a worker thread of this process.

    serve passes its background process's way instead
    (``cli.background.BackgroundProcess.make_digest``), which keeps the
    metrics' CPU and the chart's memory out of the process that answers
    SMTP sessions and Slack clicks.
    """
    made = await asyncio.to_thread(make_digest, store, due, now=now)
    return made.id if made is not None else None


class Scheduler:
    """The jobs, their triggers, and whether this process leads."""

    def __init__(self, store: Store, lock: LeaderLock, *, outbox_written: Callable[[], None] = lambda: None,
                 make_digest_with: DigestMaker = digest_in_thread) -> None:
        self._store = store
        self._lock = lock
        self._outbox_written = outbox_written
        self._make_digest = make_digest_with
        self.leading = False
        self._stopping = False
        self._running: set[asyncio.Task[Any]] = set()
        settings = store.settings
        hour, minute = (int(part) for part in settings.digest_time.split(":"))
        self._scheduler = AsyncIOScheduler(
            timezone=settings.tz,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE_SECONDS},
        )
        add = self._scheduler.add_job
        add(self._tracked(self.elect), IntervalTrigger(seconds=ELECT_SECONDS), id="leader election",
            next_run_time=_soon())
        add(self._led(self.sweep_sla), IntervalTrigger(seconds=SWEEP_SECONDS), id="sla sweep")
        add(self._led(self.make_due_digests), CronTrigger(hour=hour, minute=minute, timezone=settings.tz),
            id="digests at the digest time")
        add(self._led(self.make_due_digests), IntervalTrigger(minutes=DIGEST_CATCH_UP_MINUTES), id="digest catch-up")
        add(self._led(self.housekeeping), IntervalTrigger(minutes=HOUSEKEEPING_MINUTES), id="housekeeping")

    def start(self) -> None:
        self._scheduler.start()

    async def stop(self) -> None:
        """Stop scheduling, end the job under way, and hand the lead to another process.

        A job is cancelled where it waits: the blocking part of a sweep or of
        housekeeping finishes its transaction in its thread, as does a digest
        in the background process. Nothing is left half done; the next leader
        picks up what was not.
        """
        self._stopping = True
        # No job starts from now on. One APScheduler handed to the loop a moment ago has not taken its first
        # step, so it is not known here yet, and cancelled before that step (as APScheduler's shutdown would)
        # it would end in an "Error running job" with a traceback: one turn of the loop lets it begin and
        # become one of ours, which end quietly.
        self._scheduler.pause()
        await asyncio.sleep(0)
        running = [task for task in self._running if not task.done()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        self._scheduler.shutdown(wait=False)
        if self.leading:
            await asyncio.to_thread(self._lock.release)
            self.leading = False

    def jobs(self) -> list[tuple[str, datetime | None]]:
        """Each job's name and next run time, for the log."""
        return [(job.id, job.next_run_time) for job in self._scheduler.get_jobs()]

    # --- the jobs ------------------------------------------------------------------------

    async def elect(self) -> None:
        """Take or keep the lead; on winning it, catch up at once."""
        was_leading = self.leading
        self.leading = await asyncio.to_thread(self._lock.try_acquire)
        if self.leading and not was_leading:
            log.info("this process now runs the scheduled jobs (SLA sweep, digests, housekeeping)")
            for job in (self.sweep_sla, self.make_due_digests, self.housekeeping):
                await self._guarded(job)
        elif was_leading and not self.leading:
            log.warning("this process no longer runs the scheduled jobs")

    async def sweep_sla(self) -> None:
        crossings = await asyncio.to_thread(sla.sweep, self._store)
        if crossings:
            log.info("SLA sweep: %d warnings and breaches recorded", len(crossings))
            self._outbox_written()

    async def make_due_digests(self) -> None:
        settings = self._store.settings
        now = self._store.clock.now()
        for due in due_digests(now, settings.tz, settings.digest_time):
            made = await self._make_digest(self._store, due, now)
            if made is not None:
                log.info("%s digest %s made and queued for sending", due.kind, due.period)
                self._outbox_written()

    async def housekeeping(self) -> None:
        settings = self._store.settings
        if settings.auto_close_days:
            closed: list[str] = []
            for _ in range(HOUSEKEEPING_ROUNDS):  # a desk that resolves more than a batch an hour keeps up
                batch = await asyncio.to_thread(housekeeping.close_resolved, self._store,
                                                after_days=settings.auto_close_days)
                closed += batch
                if len(batch) < housekeeping.BATCH:
                    break
            if closed:
                log.info("closed %d requests resolved more than %d days ago", len(closed), settings.auto_close_days)
                self._outbox_written()
        if settings.waiting_reminder_days:
            reminded = await asyncio.to_thread(housekeeping.remind_waiting, self._store,
                                               after_days=settings.waiting_reminder_days)
            if reminded:
                log.info("reminded the customers of %d requests waiting on them", len(reminded))
                self._outbox_written()

    # --- guards --------------------------------------------------------------------------

    def _led(self, job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Run ``job`` only while this process leads; a failure is logged and the next run tries again."""

        async def run() -> None:
            if self.leading:
                await self._guarded(job)

        run.__name__ = run.__qualname__ = job.__name__
        return self._tracked(run)

    def _tracked(self, job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Known to :meth:`stop`, which cancels it; that cancellation ends the job quietly."""

        async def run() -> None:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            try:
                await job()
            except asyncio.CancelledError:
                if not self._stopping:
                    raise
                log.info("%s stopped: serve is shutting down", job.__name__)
            finally:
                self._running.discard(task)

        run.__name__ = run.__qualname__ = job.__name__
        return run

    @staticmethod
    async def _guarded(job: Callable[[], Awaitable[Any]]) -> None:
        try:
            await job()
        except StoreUnavailable as exc:
            log.warning("%s skipped: %s", job.__name__, exc)
        except Exception:
            log.exception("%s failed; it runs again at its next time", job.__name__)


def _soon() -> datetime:
    return datetime.now(timezone.utc)
