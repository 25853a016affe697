"""Engines and transactions.

SQLite is set up for several threads and processes at once: WAL so readers
never block the writer, foreign keys on, a busy timeout so a writer waits for
the lock instead of failing, and ``BEGIN IMMEDIATE`` for write transactions so
two writers queue on the lock *before* reading. Without it, two claims that
both read "new" would both try to upgrade their read snapshot and one would
fail with "database is locked" instead of a clear answer.

Read-only work uses :func:`read_engine`, whose transactions start deferred.
"""

from __future__ import annotations

import logging
from typing import Any

from core.errors import InvalidInput

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


SUPPORTED = ("sqlite", "postgresql")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the settings this product relies on."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        parsed = None
    if parsed is None or parsed.get_backend_name() not in SUPPORTED:
        raise InvalidInput(
            f"database URL {_redacted(url)!r} is not supported; use sqlite:///path/to/file.db "
            "or postgresql+psycopg://user@host:5432/dbname"
        )
    # Statement parameters can hold a customer's mail; an error (and so a log line) never shows them.
    kwargs.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, **kwargs)
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # Plain postgresql:// would pick psycopg2, which we do not ship.
        url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _redacted(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url.split("@")[-1]


def _sqlite_engine(url: str, **kwargs: Any) -> Engine:
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
    busy_timeout_ms = int(connect_args["timeout"] * 1000)
    connect_args.setdefault("check_same_thread", False)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so that the
        # "begin" hook below decides how each transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before it returns, so the 250 the mail
        # gateway answers after it survives a power cut, not only a crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        deferred = conn.get_execution_options().get("sqlite_deferred", False)
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

    return engine


def read_engine(engine: Engine) -> Engine:
    """The same pool, for read-only transactions (deferred on SQLite)."""
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_deferred=True)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)
