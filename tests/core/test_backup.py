"""The online SQLite backup: a consistent, checked copy, taken while the store keeps being written."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from core.backup import backup_sqlite
from core.clock import FixedClock
from core.db import make_engine
from core.errors import InvalidInput, StoreUnavailable
from core.settings import Settings
from core.store import Store
from tests import factories as f


@pytest.fixture
def store(sqlite_template: Path, clock: FixedClock, tmp_path: Path) -> Iterator[Store]:
    """A SQLite store of its own (the backup is SQLite's; PostgreSQL has its test at the end)."""
    path = tmp_path / "supportdesk.db"
    shutil.copy(sqlite_template, path)
    url = f"sqlite:///{path}"
    s = Store(make_engine(url), clock, Settings(database_url=url))
    yield s
    s.dispose()


def test_the_copy_has_every_request_and_its_audit_chain_verifies(store: Store,
                                                                  tmp_path: Path) -> None:
    f.seed(store)
    keys = [f.open_request(store, subject=f"Question {n}").key for n in range(5)]
    destination = tmp_path / "backups" / "supportdesk-2026-12-06.db"
    destination.parent.mkdir()

    report = backup_sqlite(store, destination)

    assert report.path == destination and report.requests == 5 and report.audit.ok
    with store.read() as session:
        head = session.execute(text("SELECT last_seq, last_hash FROM audit_head")).one()
    assert (report.audit.tip_seq, report.audit.tip_hash) == tuple(head)
    assert sorted(p.name for p in destination.parent.iterdir()) == [destination.name]  # no -wal, no partial
    copy = sqlite3.connect(destination)
    try:
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert sorted(f"SR-{row[0]}" for row in copy.execute("SELECT number FROM requests")) == sorted(keys)
    finally:
        copy.close()


def test_a_backup_taken_while_requests_are_being_opened_is_one_consistent_moment(store: Store,
                                                                                 tmp_path: Path) -> None:
    f.seed(store)
    f.open_request(store)
    stop, failures, opened = threading.Event(), [], [0]

    def keep_writing() -> None:
        writer = Store.open(Settings(database_url=str(store.engine.url)))
        try:
            while not stop.is_set():
                f.open_request(writer, subject="Written during the backup")
                opened[0] += 1
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
        finally:
            writer.dispose()

    thread = threading.Thread(target=keep_writing)
    thread.start()
    try:
        reports = [backup_sqlite(store, tmp_path / f"copy-{n}.db") for n in range(3)]
    finally:
        stop.set()
        thread.join(30)
    assert failures == [] and opened[0] > 0
    for report in reports:
        assert report.audit.ok, report.audit.problem
        # Every request in the copy has the events that opened it: nothing half-copied.
        copy = sqlite3.connect(report.path)
        try:
            without_events = copy.execute(
                "SELECT count(*) FROM requests r WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.request_id = r.id)"
            ).fetchone()
        finally:
            copy.close()
        assert without_events == (0,)


def test_a_backup_never_overwrites_and_needs_an_existing_directory(store: Store,
                                                                   tmp_path: Path) -> None:
    existing = tmp_path / "yesterday.db"
    existing.write_bytes(b"yesterday's backup")
    with pytest.raises(InvalidInput, match="already exists"):
        backup_sqlite(store, existing)
    assert existing.read_bytes() == b"yesterday's backup"
    with pytest.raises(InvalidInput, match="does not exist"):
        backup_sqlite(store, tmp_path / "missing" / "copy.db")
    database = Path(store.engine.url.database or "")
    size = database.stat().st_size
    with pytest.raises(InvalidInput, match="already exists"):
        backup_sqlite(store, database)
    assert database.stat().st_size == size


def test_a_database_whose_audit_chain_was_tampered_with_gives_no_backup(store: Store,
                                                                        tmp_path: Path) -> None:
    f.seed(store)
    f.open_request(store)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE events SET actor = 'UMALLORY' WHERE seq = 1"))

    with pytest.raises(StoreUnavailable, match="audit chain does not verify"):
        backup_sqlite(store, tmp_path / "copy.db")
    assert list(tmp_path.glob("*copy.db*")) == []


def test_postgresql_is_pointed_to_pg_dump(postgres_database: str, clock: FixedClock, tmp_path: Path) -> None:
    store = Store(make_engine(postgres_database), clock, Settings(database_url=postgres_database))
    try:
        with pytest.raises(InvalidInput, match="pg_dump"):
            backup_sqlite(store, tmp_path / "copy.db")
    finally:
        store.dispose()
    assert list(tmp_path.iterdir()) == []
