"""`supportdesk db backup` as an admin runs it: a checked copy that `serve` and every command accept."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tests.conftest import Database


def test_the_backup_is_a_database_the_command_works_on(seeded: Cli, database: Database, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if database.kind != "sqlite":
        message = seeded.refused("db", "backup", str(tmp_path / "copy.db"))
        assert "pg_dump" in message
        assert not (tmp_path / "copy.db").exists()
        return
    seeded.ok("requests", "open", "--from", "jane@acme.test", "--subject", "Charged twice", "--as", "UAGENT1")
    copy = tmp_path / "backup.db"

    printed = seeded.ok("db", "backup", str(copy)).out
    assert printed.startswith(f"backed up to {copy} (") and "1 requests; integrity ok" in printed
    assert "audit chain verified through event" in printed

    again = seeded.refused("db", "backup", str(copy))
    assert "already exists" in again
    monkeypatch.setenv("SUPPORTDESK_DATABASE_URL", f"sqlite:///{copy}")
    (request,) = seeded.json("requests", "list")
    assert request["key"] == "SR-1" and request["subject"] == "Charged twice"
    assert seeded.json("audit", "verify")["ok"] is True


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)  # PostgreSQL's refusal is the test above
def test_json_fields(seeded: Cli, tmp_path: Path) -> None:
    report = seeded.json("db", "backup", str(tmp_path / "backup.db"))
    assert sorted(report) == ["audit_events", "audit_tip_hash", "path", "requests", "schema_revision",
                              "seconds", "size_bytes"]
    assert report["requests"] == 0 and report["audit_events"] > 0 and report["size_bytes"] > 0
