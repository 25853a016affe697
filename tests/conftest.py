"""Fixtures: a real store on SQLite and on PostgreSQL for every test that asks for one.

PostgreSQL is required. If it cannot be reached the tests that need it fail
(they never skip) with a line that says how to start it. For a quick local
run on SQLite alone, set ``SUPPORTDESK_TEST_DATABASES=sqlite``; CI never does.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from core import migrate
from core.clock import FixedClock
from core.models import Base
from core.db import make_engine
from core.settings import Settings
from core.store import Store

ADMIN_URL = os.environ.get("SUPPORTDESK_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DATABASES = [d.strip() for d in os.environ.get("SUPPORTDESK_TEST_DATABASES", "sqlite,postgresql").split(",") if d.strip()]
START_HINT = "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"

# Every table the tests may fill, children first.
# Every table of the models (a new one cannot be forgotten), dependents first.
TABLES = tuple(table.name for table in reversed(Base.metadata.sorted_tables))


@dataclass
class Database:
    kind: str
    url: str


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()  # closing the last connection checkpoints the WAL into the file
    assert not path.with_name(path.name + "-wal").exists()
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """A database of our own on the shared server, migrated once, dropped at the end."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"supportdesk_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure here means "no PostgreSQL"
        pytest.fail(f"PostgreSQL at {ADMIN_URL} is not reachable ({exc.__class__.__name__}); {START_HINT}",
                    pytrace=False)
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    reset = _RESET_ENGINES.pop(url, None)
    if reset is not None:
        reset.dispose()
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


_RESET_ENGINES: dict[str, Engine] = {}


def _reset_postgres(url: str) -> None:
    """Empty every table and restart every sequence, as a fresh database has them.

    DELETE, not TRUNCATE: on tables this small TRUNCATE costs some 100 ms a
    test (it swaps every table's files), DELETE about 5 ms; over a thousand
    PostgreSQL tests that is most of two minutes. Dependents go first.
    """
    engine = _RESET_ENGINES.get(url)
    if engine is None:
        # One connection, kept until the database is dropped; pinged first, as some tests cut every connection.
        engine = _RESET_ENGINES[url] = create_engine(url, pool_pre_ping=True)
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))
        conn.execute(text("SELECT setval(c.oid, 1, false) FROM pg_class c WHERE c.relkind = 'S'"))
        conn.execute(text("INSERT INTO audit_head (id, last_seq, last_hash) VALUES (1, 0, :h)"), {"h": "0" * 64})
        conn.execute(text("INSERT INTO counters (name, value) VALUES ('request', 0)"))


@pytest.fixture(params=DATABASES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """A fresh, migrated, empty database: a copied SQLite file, or a truncated PostgreSQL one."""
    if request.param == "sqlite":
        path = tmp_path / "supportdesk.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return Database("sqlite", f"sqlite:///{path}")
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_database")
        _reset_postgres(url)
        return Database("postgresql", url)
    raise ValueError(f"unknown test database {request.param!r}")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc))


@pytest.fixture
def store(database: Database, clock: FixedClock) -> Iterator[Store]:
    s = Store(make_engine(database.url), clock, Settings(database_url=database.url))
    yield s
    s.dispose()
