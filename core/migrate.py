"""Schema migrations: the only way the schema is made or changed."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from core.errors import StoreUnavailable
from core.store import translate_store_errors

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` in one transaction per migration."""
    config = alembic_config(engine)
    with translate_store_errors(), engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        connection.commit()


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
    if current is None:
        raise StoreUnavailable("the database has no schema yet; run `supportdesk db upgrade` first")
    if current != head:
        raise StoreUnavailable(
            f"the database schema is at {current} but this version needs {head}; run `supportdesk db upgrade`"
        )
