"""Which ``serve`` process runs the scheduled jobs: the one holding a lock that dies with its holder.

PostgreSQL: a session-level advisory lock, held by one connection kept
aside for it. When the holder dies (kill -9 included) its connection goes
and the server drops the lock; another process asking every few seconds
gets it. A holder that loses its connection (a database restart) loses the
lock too, notices at its next check and stops leading until it wins again.

SQLite: every process sharing the database file is on this machine, so the
lock is an exclusive ``flock`` on a file beside the database, which the
kernel releases when its holder dies. An in-memory database has one process.

Leading is an optimisation, not the guarantee: the jobs themselves are
once-only in the store (crossings, digests and reminders have unique keys,
the sweep locks with SKIP LOCKED), so a brief overlap of two leaders around a
hand-over cannot send anything twice.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from core.store import Store

log = logging.getLogger("supportdesk.leadership")

# pg_try_advisory_lock's key: "supportdesk scheduler" as two 32-bit halves would do too; one bigint is plainer.
ADVISORY_KEY = 0x5D_5C_4E_D0_1E


class LeaderLock(Protocol):
    def try_acquire(self) -> bool:
        """Become the leader if nobody is; True while this process leads (a cheap check when it already does)."""

    def release(self) -> None:
        """Stop leading (at shutdown): another process may take over at once."""


def leader_lock(store: Store) -> LeaderLock:
    if store.is_sqlite:
        path = _sqlite_file(store)
        return FileLock(Path(f"{path}.scheduler-lock")) if path is not None else AlwaysLeader()
    return AdvisoryLock(store)


class AlwaysLeader:
    """An in-memory SQLite database lives in one process: it leads."""

    def try_acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass


class FileLock:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        if self._file is not None:
            return True
        handle = open(self._path, "ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        self._file = handle
        return True

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class AdvisoryLock:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._connection: Connection | None = None

    def try_acquire(self) -> bool:
        try:
            if self._connection is not None:
                if self._still_held(self._connection):
                    return True
                log.warning("the scheduler lock was lost with its database connection; no longer leading")
                self._drop()
            connection = self._store.engine.connect()
            got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": ADVISORY_KEY}).scalar())
            connection.commit()  # end the transaction the query began; the session-level lock stays
            if got:
                self._connection = connection
            else:
                connection.close()
            return got
        except SQLAlchemyError as exc:
            log.warning("cannot reach the database to decide the scheduler's leader: %s", exc.__class__.__name__)
            self._drop()
            return False

    def release(self) -> None:
        if self._connection is None:
            return
        try:
            self._connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_KEY})
            self._connection.commit()
        except SQLAlchemyError:
            pass  # closing the connection drops the lock as well
        self._drop()

    @staticmethod
    def _still_held(connection: Connection) -> bool:
        """Our own lock, on our own backend: lost if the connection was."""
        try:
            held = connection.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
                     "AND objid = :low AND classid = :high AND granted"),
                {"low": ADVISORY_KEY & 0xFFFFFFFF, "high": ADVISORY_KEY >> 32},
            ).scalar()
            connection.commit()
            return bool(held)
        except SQLAlchemyError:
            return False

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.invalidate()  # never back to the pool: it may hold the lock
                self._connection.close()
            except SQLAlchemyError:
                pass
            self._connection = None


def _sqlite_file(store: Store) -> str | None:
    database = make_url(store.settings.database_url).database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return os.path.abspath(database)
