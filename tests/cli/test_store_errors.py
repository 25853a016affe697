"""An unreachable or unsupported database gets one clear line, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.main import main


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql+psycopg://postgres@127.0.0.1:1/nothing", "the database is unavailable right now"),
        ("sqlite:////nonexistent-dir/supportdesk.db", "unable to open database file"),
        ("mysql://user:hunter2@db/x", "is not supported; use sqlite:///"),
        ("not a url", "is not supported"),
    ],
)
@pytest.mark.parametrize("command", [["db", "upgrade"], ["requests", "list"], ["audit", "verify"]])
def test_bad_database_is_one_line(url: str, expected: str, command: list[str], monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SUPPORTDESK_DATABASE_URL", url)
    assert main(command) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("supportdesk: ") and expected in lines[0], captured.err
    assert "hunter2" not in captured.err + captured.out


def test_bad_setting_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SUPPORTDESK_TIMEZONE", "Nowhere/Special")
    assert main(["requests", "list"]) == 1
    assert capsys.readouterr().err.strip() == (
        "supportdesk: SUPPORTDESK_TIMEZONE='Nowhere/Special' is not a known time zone such as Europe/Berlin"
    )
