"""An online backup of a SQLite store, checked before it is called a backup.

SQLite's backup API copies the database page by page inside one read
transaction, so the copy is one consistent moment even while ``serve`` keeps
accepting mail (WAL: the writer is never blocked). A copy of the file with
``cp`` is not: it can catch the database half way through a commit and miss
what still sits in the ``-wal`` file.

The copy is written under a temporary name and renamed only after it has
passed SQLite's integrity check and the audit chain verifies on it, so a
file with the final name is always a good backup. PostgreSQL has its own
tool for this, ``pg_dump``; we do not wrap it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from core import migrate
from core.audit import VerifyResult, verify_chain
from core.errors import InvalidInput, StoreUnavailable
from core.models import Request
from core.store import Store


@dataclass(frozen=True)
class BackupReport:
    path: Path
    size_bytes: int
    seconds: float
    schema_revision: str | None
    requests: int
    audit: VerifyResult


def backup_sqlite(store: Store, destination: Path) -> BackupReport:
    """Copy the store to ``destination`` (which must not exist yet), then prove the copy sound.

    Raises :class:`InvalidInput` for a PostgreSQL store or an unusable
    destination, and :class:`StoreUnavailable` when the copy fails its checks
    (the half-made file is removed; nothing is left under the final name).
    """
    if not store.is_sqlite:
        raise InvalidInput("`db backup` copies a SQLite database; for PostgreSQL use pg_dump "
                           "(pg_dump -Fc -f supportdesk.dump DBNAME), see the README's Operations section")
    source_path = store.engine.url.database
    if not source_path or source_path == ":memory:" or source_path.startswith("file::memory:"):
        raise InvalidInput("an in-memory database has nothing on disk to back up")
    destination = destination.expanduser()
    if destination.exists():
        raise InvalidInput(f"{destination} already exists; choose a new file name (a backup never overwrites)")
    if not destination.parent.is_dir():
        raise InvalidInput(f"the directory {destination.parent} does not exist")
    partial = destination.with_name(f".{destination.name}.partial")
    started = time.monotonic()
    try:
        _copy(store, partial)
        _check_integrity(partial)
        revision, requests, audit = _inspect(partial)
        if not audit.ok:
            raise StoreUnavailable(f"the copy's audit chain does not verify ({audit.problem}); "
                                   "run `supportdesk audit verify` on the database itself")
        try:
            os.link(partial, destination)  # unlike a rename, never replaces a file that appeared meanwhile
        except FileExistsError:
            raise InvalidInput(f"{destination} already exists; choose a new file name (a backup never overwrites)")
    finally:
        for leftover in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
            leftover.unlink(missing_ok=True)
    return BackupReport(destination, destination.stat().st_size, time.monotonic() - started,
                        revision, requests, audit)


def _copy(store: Store, partial: Path) -> None:
    source = store.engine.raw_connection()
    try:
        target = sqlite3.connect(partial)
        try:
            source.driver_connection.backup(target)  # type: ignore[union-attr]
            # One self-contained file: the copy carries no -wal beside it.
            target.execute("PRAGMA journal_mode=DELETE")
        finally:
            target.close()
    except (sqlite3.Error, OSError) as exc:
        raise StoreUnavailable(f"the backup could not be written to {partial.parent}: {exc}") from exc
    finally:
        source.close()


def _check_integrity(partial: Path) -> None:
    connection = sqlite3.connect(f"file:{partial}?mode=ro", uri=True)
    try:
        verdict = [row[0] for row in connection.execute("PRAGMA integrity_check")]
    finally:
        connection.close()
    if verdict != ["ok"]:
        raise StoreUnavailable(f"the copy failed SQLite's integrity check: {'; '.join(verdict[:3])}")


def _inspect(partial: Path) -> tuple[str | None, int, VerifyResult]:
    # A plain engine: ours would switch the copy back to WAL, and the backup is one self-contained file.
    engine = create_engine(f"sqlite:///{partial}")
    try:
        revision = migrate.current_revision(engine)
        with Session(engine) as session:
            requests = session.execute(select(func.count()).select_from(Request)).scalar_one()
            return revision, requests, verify_chain(session)
    finally:
        engine.dispose()
