"""Fixtures for driving the ``supportdesk`` command in-process, on both databases."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select


from cli.main import main
from core.models import Base
from core.store import Store
from tests.conftest import Database
from tests.factories import AGENTS_CSV, CUSTOMERS_CSV, INVOICES_CSV
from tests.slack.fake_slack import fake_slack

__all__ = ["fake_slack"]  # the fake Slack Web API, for `supportdesk doctor`; listed so linters see it is used


@dataclass(frozen=True)
class Outcome:
    """What one run of the command did: exit code and both output streams."""

    argv: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        """The standard output parsed as JSON."""
        assert self.out.strip(), f"{' '.join(self.argv)} printed nothing on stdout (stderr: {self.err!r})"
        return json.loads(self.out)


class Cli:
    """Runs ``cli.main.main`` with the given arguments and captures what it prints."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys

    def __call__(self, *argv: str) -> Outcome:
        self._capsys.readouterr()  # forget anything printed before
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse: --help and usage errors
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = self._capsys.readouterr()
        return Outcome(tuple(argv), code, captured.out, captured.err)

    def ok(self, *argv: str) -> Outcome:
        """Run, and insist on exit code 0 and a quiet stderr."""
        result = self(*argv)
        assert result.code == 0, f"{' '.join(argv)} exited {result.code}: {result.err}"
        assert result.err == "", result.err
        return result

    def json(self, *argv: str) -> Any:
        """Run with ``--json`` and return the parsed output."""
        return self.ok(*argv, "--json").json()

    def refused(self, *argv: str) -> str:
        """Run, insist on a refusal (exit 1, one ``supportdesk:`` line on stderr, nothing on stdout)."""
        result = self(*argv)
        assert result.code == 1, f"{' '.join(argv)} exited {result.code}, not 1; out={result.out!r} err={result.err!r}"
        lines = result.err.splitlines()
        assert len(lines) == 1, f"expected exactly one line on stderr, got {lines!r}"
        assert lines[0].startswith("supportdesk: "), lines[0]
        assert result.out == "", result.out
        return lines[0]

    def usage_error(self, *argv: str) -> str:
        """Run, insist on argparse's usage error (exit 2, usage on stderr); return stderr."""
        result = self(*argv)
        assert result.code == 2, f"{' '.join(argv)} exited {result.code}, not 2; err={result.err!r}"
        assert "usage: supportdesk" in result.err
        assert "error:" in result.err
        assert result.out == ""
        return result.err


@pytest.fixture
def bare_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Cli:
    """The command with no database chosen yet, run from an empty directory (set SUPPORTDESK_DATABASE_URL)."""
    monkeypatch.delenv("SUPPORTDESK_CONFIG", raising=False)
    monkeypatch.delenv("SUPPORTDESK_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return Cli(capsys)


@pytest.fixture
def cli(bare_cli: Cli, database: Database, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """The command, pointed at the test database (already migrated and empty)."""
    monkeypatch.setenv("SUPPORTDESK_DATABASE_URL", database.url)
    return bare_cli


def write_csv(directory: Path, name: str, content: str) -> Path:
    """Write ``content`` as a UTF-8 file called ``name`` and return its path."""
    path = directory / name
    path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture
def seeded(cli: Cli, tmp_path: Path) -> Cli:
    """The command on a store holding the fixed directory of tests/factories.py, imported from CSV files."""
    for kind, content in (("agents", AGENTS_CSV), ("customers", CUSTOMERS_CSV), ("invoices", INVOICES_CSV)):
        cli.ok("import", kind, str(write_csv(tmp_path, f"{kind}.csv", content)))
    return cli


def snapshot(cli: Cli, *keys: str) -> dict[str, Any]:
    """Everything a user can read back about the store, as JSON, to compare before and after a refusal."""
    state: dict[str, Any] = {
        "requests": cli.json("requests", "list", "--status", "all"),
        "approvals": cli.json("approvals", "list", "--status", "all"),
        "agents": cli.json("agents", "list"),
        "audit": cli.json("audit", "verify"),
    }
    for key in keys:
        state[key] = cli.json("requests", "show", key)
    return state


def dump_store(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (counters, outbox and audit head included), ordered by primary key."""
    with store.read() as session:
        return {
            table.name: [tuple(row) for row in session.execute(select(table).order_by(*table.primary_key.columns))]
            for table in Base.metadata.sorted_tables
        }
