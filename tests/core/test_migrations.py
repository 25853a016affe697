"""Migrations are the only way the schema is made, and they agree with the models on both databases."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from core import migrate
from core.db import make_engine
from core.errors import StoreUnavailable
from core.models import Base
from tests.conftest import ADMIN_URL, DATABASES, START_HINT


@pytest.fixture(params=DATABASES)
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database with no tables at all."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
        yield engine
        engine.dispose()
        return
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"supportdesk_mig_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL is not reachable ({exc.__class__.__name__}); {START_HINT}", pytrace=False)
    engine = make_engine(make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False))
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_upgrade_from_empty_reaches_head(empty_engine: Engine) -> None:
    assert migrate.current_revision(empty_engine) is None
    with pytest.raises(StoreUnavailable, match="supportdesk db upgrade"):
        migrate.require_current(empty_engine)
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == migrate.head_revision()
    migrate.require_current(empty_engine)
    tables = set(inspect(empty_engine).get_table_names())
    assert set(Base.metadata.tables) <= tables


def test_upgrade_twice_is_a_no_op(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    migrate.upgrade(empty_engine)
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_head")).scalar_one() == 1
        assert conn.execute(text("SELECT value FROM counters WHERE name = 'request'")).scalar_one() == 0


def test_servers_starting_together_migrate_one_after_the_other(empty_engine: Engine) -> None:
    """Two processes upgrading one empty database at the same moment: both succeed, the schema is made once."""
    url = empty_engine.url.render_as_string(hide_password=False)
    engines = [make_engine(url) for _ in range(3)]
    start = threading.Barrier(len(engines))
    failures: list[BaseException] = []

    def upgrade(engine: Engine) -> None:
        start.wait()
        try:
            migrate.upgrade(engine)
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            failures.append(exc)

    threads = [threading.Thread(target=upgrade, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for engine in engines:
        engine.dispose()
    assert failures == []
    assert migrate.current_revision(empty_engine) == migrate.head_revision()
    with empty_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_head")).scalar_one() == 1


def test_models_agree_with_migrations(empty_engine: Engine) -> None:
    migrate.upgrade(empty_engine)
    with empty_engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []


def test_postgresql_compresses_mail_bytes_with_lz4_and_sqlite_is_left_alone(empty_engine: Engine) -> None:
    """pglz cost the database 2.5 ms of CPU per 64 KB message before its 250; lz4 about 1 ms."""
    migrate.upgrade(empty_engine)
    if empty_engine.dialect.name == "sqlite":
        assert migrate.current_revision(empty_engine) == migrate.head_revision()
        return
    with empty_engine.connect() as conn:
        methods = conn.execute(text("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
                               ).scalar()
        compression = dict(conn.execute(text(
            "SELECT attrelid::regclass::text || '.' || attname, attcompression FROM pg_attribute"
            " WHERE (attrelid, attname) IN (('inbound_mail'::regclass, 'raw'), ('attachments'::regclass, 'content'))"
        )).all())
    expected = "l" if methods and "lz4" in methods else ""  # "" is the server's default, pglz
    assert compression == {"inbound_mail.raw": expected, "attachments.content": expected}


def test_downgrade_to_base_and_up_again(empty_engine: Engine) -> None:
    from alembic import command

    migrate.upgrade(empty_engine)
    config = migrate.alembic_config(empty_engine)
    with empty_engine.connect() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
        conn.commit()
    assert set(inspect(empty_engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(empty_engine)
    assert migrate.current_revision(empty_engine) == migrate.head_revision()


def test_sqlite_is_set_up_for_concurrent_use(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'pragmas.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() >= 5000
    engine.dispose()


def test_plain_postgresql_url_uses_psycopg3() -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:5432/test")
    assert engine.dialect.driver == "psycopg"
    engine.dispose()


def test_a_schema_made_by_a_later_version_is_refused_in_plain_words(empty_engine: Engine) -> None:
    """Not "run db upgrade" (which cannot help) and not a traceback: run the version that made it."""
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099_from_the_future'"))
    for attempt in (migrate.upgrade, migrate.require_current):
        with pytest.raises(StoreUnavailable, match="0099_from_the_future, which this version of supportdesk does not know"):
            attempt(empty_engine)
    assert migrate.current_revision(empty_engine) == "0099_from_the_future"
