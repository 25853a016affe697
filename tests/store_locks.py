"""Another writer holding a lock that a test's code under test needs, the way a busy database would."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import psycopg

from core.store import Store


def hold_write_lock(store: Store, table: str) -> Callable[[], None]:
    """Another connection blocks writes to ``table`` (reads go on); returns what releases it.

    SQLite has one write lock for the whole database: ``BEGIN IMMEDIATE``
    takes it. PostgreSQL locks the table in EXCLUSIVE mode, which lets
    readers through and makes writers wait.
    """
    if store.is_sqlite:
        locker = sqlite3.connect(store.engine.url.database, isolation_level=None, check_same_thread=False)
        locker.execute("BEGIN IMMEDIATE")

        def release() -> None:
            locker.execute("ROLLBACK")
            locker.close()

        return release
    holder = psycopg.connect(store.engine.url.set(drivername="postgresql").render_as_string(False))
    holder.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")

    def release_pg() -> None:
        holder.rollback()
        holder.close()

    return release_pg
