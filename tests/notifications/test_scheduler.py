"""The scheduler's jobs under an injected clock that walks through days, and its leader lock. Both databases.

The jobs are the Scheduler's own coroutines, called as APScheduler would
call them, hour by hour of a fixed clock; digests are made in a worker
thread here (serve makes them in its background process, tested in
tests/cli/test_background.py).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text

from core import services
from core.clock import FixedClock
from core.db import make_engine
from core.leadership import AdvisoryLock, AlwaysLeader, FileLock, leader_lock
from core.models import Digest, Event, OutboxMessage, Request
from core.settings import Settings
from core.store import Store
from notifications.scheduler import Scheduler, digest_in_thread
from tests import factories as f
from tests.conftest import Database

UTC = timezone.utc


def at(day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=UTC)


def scheduler(store: Store, written: list[int] | None = None) -> Scheduler:
    calls = written if written is not None else []
    made = Scheduler(store, AlwaysLeader(), outbox_written=lambda: calls.append(1), make_digest_with=digest_in_thread)
    made.leading = True
    return made


def walk(store: Store, clock: FixedClock, until: datetime, step: timedelta, *, jobs: Scheduler) -> None:
    async def run() -> None:
        while clock.now() < until:
            clock.advance(step)
            await jobs.make_due_digests()
            await jobs.sweep_sla()
            await jobs.housekeeping()
    asyncio.run(run())


def digests(store: Store) -> list[tuple[str, str, datetime]]:
    with store.read() as session:
        return [(d.kind, d.period, d.created_at) for d in
                session.execute(select(Digest).order_by(Digest.kind, Digest.period)).scalars()]


def test_each_digest_is_made_once_at_the_digest_time_and_a_restart_makes_no_second(store: Store,
                                                                                  clock: FixedClock) -> None:
    f.seed(store)
    clock.set(at(5, 7))  # Monday before 09:00: at the first tick, Saturday's digest and the week before last are due
    written: list[int] = []
    walk(store, clock, at(7, 12), timedelta(hours=1), jobs=scheduler(store, written))
    walk(store, clock, at(13, 12), timedelta(hours=1), jobs=scheduler(store))  # "restarted" midway
    made = digests(store)
    daily = [(p, c) for k, p, c in made if k == "daily"]
    assert [p for p, _ in daily] == [f"2026-01-{d:02d}" for d in range(3, 13)]
    assert daily[0][1] == at(5, 8)  # caught up at the first tick
    assert all(c == at(int(p[-2:]) + 1, 9) for p, c in daily[1:])  # then each at 09:00 the next day
    # The week of Dec 22 at the first tick; then, each Monday at 09:00, the week before (ISO weeks).
    assert [(p, c) for k, p, c in made if k == "weekly"] == [
        ("2025-W52", at(5, 8)), ("2026-W01", at(5, 9)), ("2026-W02", at(12, 9))]
    assert written  # the delivery workers were woken


def test_the_digest_time_and_zone_come_from_the_settings(database: Database, clock: FixedClock) -> None:
    settings = Settings(database_url=database.url, timezone="America/New_York", digest_time="07:30")
    store = Store(make_engine(database.url), clock, settings)
    try:
        clock.set(at(6, 12, 0))  # 07:00 in New York
        walk(store, clock, at(6, 12, 20), timedelta(minutes=10), jobs=scheduler(store))
        assert [p for k, p, _ in digests(store) if k == "daily"] == ["2026-01-04"]
        walk(store, clock, at(6, 12, 40), timedelta(minutes=10), jobs=scheduler(store))  # 07:30 passed there
        assert [p for k, p, _ in digests(store) if k == "daily"] == ["2026-01-04", "2026-01-05"]
    finally:
        store.dispose()


def test_sla_warnings_are_recorded_once_as_the_days_go_by(store: Store, clock: FixedClock) -> None:
    f.seed(store)
    clock.set(at(5, 9))
    key = f.open_request(store).key
    walk(store, clock, at(8, 9), timedelta(minutes=30), jobs=scheduler(store))
    with store.read() as session:
        kinds = session.execute(select(Event.kind).where(Event.kind.like("sla.%")).order_by(Event.seq)).scalars()
        assert list(kinds) == ["sla.warning", "sla.breached"]  # the first response's; resolution is due later
    assert key


def test_resolved_requests_close_after_seven_days_and_waiting_customers_are_reminded_once(
        store: Store, clock: FixedClock) -> None:
    f.seed(store)
    clock.set(at(1, 9))
    done = f.open_request(store, subject="Done").key
    waiting = f.open_request(store, subject="Waiting").key
    services.claim(store, done, actor=f.AGENT)
    services.resolve(store, done, note="Fixed.", actor=f.AGENT)
    services.claim(store, waiting, actor=f.AGENT)
    services.wait_on_customer(store, waiting, actor=f.AGENT)
    walk(store, clock, at(3, 12), timedelta(hours=2), jobs=scheduler(store))
    assert _reminders(store) == []  # 3 days are not over before Jan 4, 09:00
    walk(store, clock, at(8, 7), timedelta(hours=2), jobs=scheduler(store))
    assert _status(store, done) == "resolved" and len(_reminders(store)) == 1
    walk(store, clock, at(9, 12), timedelta(hours=2), jobs=scheduler(store))
    assert _status(store, done) == "closed" and len(_reminders(store)) == 1  # once per wait
    with store.read() as session:
        closing = session.execute(select(Event.actor, Event.data).where(Event.kind == "request.closed")).one()
        mails = session.execute(select(OutboxMessage.topic).where(OutboxMessage.channel == "email")).scalars()
        assert closing.actor == "system:scheduler" and '"automatic":true' in closing.data.replace(" ", "")
        assert "waiting_reminder" in list(mails)


def test_auto_close_and_reminders_can_be_switched_off(database: Database, clock: FixedClock) -> None:
    settings = Settings(database_url=database.url, auto_close_days=0, waiting_reminder_days=0)
    store = Store(make_engine(database.url), clock, settings)
    try:
        f.seed(store)
        clock.set(at(1, 9))
        key = f.open_request(store).key
        services.claim(store, key, actor=f.AGENT)
        services.resolve(store, key, note="Fixed.", actor=f.AGENT)
        walk(store, clock, at(10), timedelta(hours=12), jobs=scheduler(store))
        assert _status(store, key) == "resolved"
    finally:
        store.dispose()


def test_a_process_that_does_not_lead_runs_no_job(store: Store, clock: FixedClock) -> None:
    f.seed(store)
    clock.set(at(6, 10))
    follower = scheduler(store)
    follower.leading = False
    asyncio.run(follower._led(follower.make_due_digests)())
    assert digests(store) == []


def _status(store: Store, key: str) -> str:
    with store.read() as session:
        return session.execute(select(Request.status).where(Request.number == int(key[3:]))).scalar_one()


def _reminders(store: Store) -> list[str]:
    with store.read() as session:
        return list(session.execute(select(Event.data).where(Event.kind == "request.reminded")).scalars())


# --- the leader lock ----------------------------------------------------------------------------


def test_on_sqlite_one_process_holds_the_file_lock_until_it_lets_go(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "db.scheduler-lock"), FileLock(tmp_path / "db.scheduler-lock")
    assert first.try_acquire() and first.try_acquire()  # keeps it
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    second.release()


def test_the_lock_beside_a_sqlite_file_and_none_for_a_memory_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    lock = leader_lock(Store(make_engine(url), FixedClock(), Settings(database_url=url)))
    assert isinstance(lock, FileLock)
    memory = Store(make_engine("sqlite://"), FixedClock(), Settings(database_url="sqlite://"))
    assert isinstance(leader_lock(memory), AlwaysLeader)


def test_on_postgresql_a_dead_leaders_lock_goes_to_the_next_process(postgres_database: str) -> None:
    url = postgres_database
    stores = [Store(make_engine(url), FixedClock(), Settings(database_url=url)) for _ in range(2)]
    try:
        leader, other = (AdvisoryLock(s) for s in stores)
        assert leader.try_acquire() and not other.try_acquire()
        assert leader.try_acquire()  # still held, checked on its own connection
        with stores[1].engine.connect() as conn:  # the leader's backend dies (as with kill -9 of its process)
            # With a timeout the call waits until the backend is gone (PostgreSQL 14+); without, a busy
            # machine could still have the lock held when the other process asks.
            conn.execute(text("SELECT pg_terminate_backend(pid, 10000) FROM pg_locks "
                              "WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() "
                              "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"))
        assert other.try_acquire()
        assert not leader.try_acquire()  # it notices it lost the lock
        other.release()
        assert leader.try_acquire()
        leader.release()
    finally:
        for s in stores:
            s.dispose()


def test_election_catches_up_at_once(database: Database, clock: FixedClock) -> None:
    store = Store(make_engine(database.url), clock, replace(Settings(database_url=database.url)))
    try:
        f.seed(store)
        clock.set(at(6, 10))
        jobs = Scheduler(store, AlwaysLeader(), make_digest_with=digest_in_thread)
        asyncio.run(jobs.elect())
        assert jobs.leading and [(k, p) for k, p, _ in digests(store)] == [("daily", "2026-01-05"),
                                                                          ("weekly", "2026-W01")]
    finally:
        store.dispose()


def test_a_stop_right_after_the_start_ends_the_first_election_quietly(store: Store,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """SIGTERM as serve starts: APScheduler has handed the election to the loop, which has not run it yet."""
    async def start_and_stop() -> None:
        jobs = Scheduler(store, AlwaysLeader(), make_digest_with=digest_in_thread)
        jobs.start()
        await jobs.stop()

    with caplog.at_level(logging.WARNING):
        asyncio.run(start_and_stop())

    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
