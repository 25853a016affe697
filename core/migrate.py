"""Schema migrations: the only way the schema is made or changed."""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from core.errors import StoreUnavailable
from core.store import translate_store_errors

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"

# pg_advisory_lock's key for schema changes; the scheduler's leader lock uses another.
MIGRATION_LOCK_KEY = 0x5D_5C_4D_16_2A


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` in one transaction per migration.

    Several ``serve`` processes may start at once on one database (after an
    upgrade, say): they take turns, and each one after the first finds the
    schema current and has nothing to do.
    """
    config = alembic_config(engine)
    with translate_store_errors(), _one_migrator_at_a_time(engine), engine.connect() as connection:
        _refuse_unknown(MigrationContext.configure(connection).get_current_revision())
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


@contextmanager
def _one_migrator_at_a_time(engine: Engine) -> Iterator[None]:
    """While the schema changes, an exclusive lock only another migrator waits for.

    PostgreSQL: an advisory lock held on a connection of its own. SQLite: an
    ``flock`` on a file beside the database (its own write lock is not
    enough: two migrators both read "no schema" before either writes). The
    kernel or the server drops either lock if its holder dies.
    """
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:" or database.startswith("file::memory:"):
            yield  # one process owns an in-memory database
            return
        with open(f"{os.path.abspath(database)}.migrate-lock", "ab") as lock_file:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)  # released when the file closes
            yield
        return
    # A session-level lock on a connection in autocommit: no transaction stays open while others wait or
    # while the migration runs (servers that end idle transactions would otherwise take the lock away).
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock_connection:
        key = {"key": MIGRATION_LOCK_KEY}
        if not lock_connection.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar():
            log.info("another process is migrating the schema; waiting for it")
            lock_connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
        try:
            yield
        finally:
            try:
                lock_connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
            except SQLAlchemyError:
                pass  # the connection is gone, and the lock with it


def _refuse_unknown(current: str | None) -> None:
    """A schema made by a later version: say so, rather than "run db upgrade", which cannot help."""
    if current is None:
        return
    try:
        known = ScriptDirectory(str(MIGRATIONS)).get_revision(current) is not None
    except CommandError:
        known = False
    if not known:
        raise StoreUnavailable(
            f"the database schema is at {current}, which this version of supportdesk does not know (its newest "
            f"is {head_revision()}): a later version made it; run that version or a newer one"
        )


def head_revision() -> str:
    script = ScriptDirectory(str(MIGRATIONS))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with translate_store_errors(), engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def require_current(engine: Engine) -> None:
    """Refuse to work on a database whose schema is missing or out of date."""
    current, head = current_revision(engine), head_revision()
    _refuse_unknown(current)
    if current is None:
        raise StoreUnavailable("the database has no schema yet; run `supportdesk db upgrade` first")
    if current != head:
        raise StoreUnavailable(
            f"the database schema is at {current} but this version needs {head}; run `supportdesk db upgrade`"
        )
