"""The installed ``supportdesk`` console script, run as a separate process the way a user runs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path


from tests.conftest import Database
from tests.factories import AGENTS_CSV


def supportdesk() -> list[str]:
    """The console script of the interpreter running the tests, else any on PATH, else ``python -m cli.main``."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("supportdesk", path=path)
    return [found] if found else [sys.executable, "-m", "cli.main"]


def run(url: str, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``supportdesk ARGV`` with SUPPORTDESK_DATABASE_URL set to ``url``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTDESK_")}
    env["SUPPORTDESK_DATABASE_URL"] = url
    return subprocess.run([*supportdesk(), *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_fresh_sqlite_file_from_upgrade_to_empty_listing(tmp_path: Path) -> None:
    """A new user's first commands: the listing is refused until ``db upgrade``, then it is an empty JSON list."""
    url = f"sqlite:///{tmp_path / 'supportdesk.db'}"
    refused = run(url, tmp_path, "requests", "list", "--json")
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr == "supportdesk: the database has no schema yet; run `supportdesk db upgrade` first\n"

    upgraded = run(url, tmp_path, "db", "upgrade")
    assert (upgraded.returncode, upgraded.stderr) == (0, "")
    assert upgraded.stdout.startswith("schema upgraded from empty to ")
    again = run(url, tmp_path, "db", "upgrade")
    assert again.returncode == 0 and again.stdout.startswith("schema already current (")

    listed = run(url, tmp_path, "requests", "list", "--json")
    assert (listed.returncode, listed.stderr) == (0, "")
    assert json.loads(listed.stdout) == []


def test_real_process_on_both_databases(database: Database, tmp_path: Path) -> None:
    """Import, list as JSON, a refusal (one line on stderr, no log noise) and a usage error (exit 2)."""
    (tmp_path / "agents.csv").write_text(AGENTS_CSV, encoding="utf-8")
    imported = run(database.url, tmp_path, "import", "agents", "agents.csv", "--json")
    assert (imported.returncode, imported.stderr) == (0, "")
    assert json.loads(imported.stdout) == {"kind": "agents", "rows": 6, "created": 6, "updated": 0, "unchanged": 0}

    agents = json.loads(run(database.url, tmp_path, "agents", "list", "--json").stdout)
    assert sorted(a["slack_user_id"] for a in agents) == ["UAGENT1", "UAGENT2", "UAPPROVE", "UBIGBOSS", "UMANAGER",
                                                          "UUSDAPPR"]
    assert json.loads(run(database.url, tmp_path, "requests", "list", "--json").stdout) == []

    missing = run(database.url, tmp_path, "requests", "show", "SR-1")
    assert missing.returncode == 1
    assert missing.stdout == ""
    assert missing.stderr == "supportdesk: there is no request SR-1\n"

    usage = run(database.url, tmp_path, "approvals", "reject", "1", "--as", "UBIGBOSS")
    assert usage.returncode == 2
    assert "the following arguments are required: --reason" in usage.stderr

    verified = run(database.url, tmp_path, "audit", "verify")
    assert verified.returncode == 0
    assert verified.stdout.startswith("audit trail intact: 1 events checked; tip #1 ")


def test_json_output_follows_a_redirected_stdout(tmp_path: Path) -> None:
    """A program that calls ``cli.main.main`` with stdout redirected gets the JSON in its redirect."""
    url = f"sqlite:///{tmp_path / 'supportdesk.db'}"
    assert run(url, tmp_path, "db", "upgrade").returncode == 0
    snippet = textwrap.dedent("""
        import contextlib, io, json, sys
        from cli.main import main
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            code = main(["requests", "list", "--json"])
        sys.stderr.write(json.dumps({"code": code, "captured": buffer.getvalue()}))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTDESK_")}
    env["SUPPORTDESK_DATABASE_URL"] = url
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    report = json.loads(done.stderr)
    assert report["code"] == 0
    assert done.stdout == ""  # nothing leaked past the redirect
    assert json.loads(report["captured"]) == []
