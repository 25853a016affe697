"""`supportdesk serve`: migrates the store, says what started and why the rest did not, stops on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import migrate
from core.db import make_engine
from core.settings import load_settings
from cli.serve import plan_parts
from tests.intake.serve_process import free_port


def test_plan_names_every_part_and_why() -> None:
    plans = {p.name: p for p in plan_parts(load_settings({}))}
    assert set(plans) == {"store", "smtp listener", "mail processor", "slack app", "scheduler", "outbox delivery"}
    assert plans["store"].start and plans["smtp listener"].start and plans["mail processor"].start
    assert "Maildir outgoing-mail" in plans["outbox delivery"].reason
    assert "SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET unset" in plans["slack app"].reason
    assert "127.0.0.1:2525" in plans["smtp listener"].reason


def test_plan_starts_slack_in_socket_mode_with_an_app_token_and_needs_no_signing_secret() -> None:
    settings = load_settings({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_APP_TOKEN": "xapp-1-A1-1-abc",
                              "SUPPORTDESK_TRIAGE_CHANNEL": "C0TRIAGE1", "SUPPORTDESK_HTTP_LISTEN": "127.0.0.1:3100"})
    plans = {p.name: p for p in plan_parts(settings)}
    assert plans["slack app"].start and plans["slack app"].reason.startswith("in Socket Mode")
    assert "127.0.0.1:3100/health" in plans["slack app"].reason and "C0TRIAGE1" in plans["slack app"].reason
    assert "/slack/events" not in plans["slack app"].reason
    assert "Slack cards to the triage channel C0TRIAGE1" in plans["outbox delivery"].reason


@pytest.mark.parametrize(("env", "reason"), [
    ({"SLACK_APP_TOKEN": "xapp-1-A1-1-abc"},
     "not configured for Socket Mode: SLACK_BOT_TOKEN and SUPPORTDESK_TRIAGE_CHANNEL unset"),
    ({"SLACK_APP_TOKEN": "xapp-1-A1-1-abc", "SLACK_BOT_TOKEN": "xoxb-1"},
     "not configured for Socket Mode: SUPPORTDESK_TRIAGE_CHANNEL unset"),
    ({"SLACK_APP_TOKEN": "xoxb-1", "SLACK_BOT_TOKEN": "xoxb-1", "SUPPORTDESK_TRIAGE_CHANNEL": "C0TRIAGE1"},
     "SLACK_APP_TOKEN must be the app-level token, which starts with xapp-"),
], ids=["app token alone", "no triage channel", "a bot token as app token"])
def test_plan_says_what_socket_mode_is_missing(env: dict[str, str], reason: str) -> None:
    plan = next(p for p in plan_parts(load_settings(env)) if p.name == "slack app")
    assert not plan.start and plan.reason.startswith(reason)


def test_plan_starts_slack_in_http_mode_without_an_app_token() -> None:
    settings = load_settings({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s",
                              "SUPPORTDESK_TRIAGE_CHANNEL": "C0TRIAGE1"})
    plan = next(p for p in plan_parts(settings) if p.name == "slack app")
    assert plan.start and plan.reason.startswith("HTTP on 127.0.0.1:3000, Slack posts to /slack/events")


def test_plan_hides_the_database_password() -> None:
    settings = load_settings({"SUPPORTDESK_DATABASE_URL": "postgresql+psycopg://u:s3cret@db/x"})
    store = next(p for p in plan_parts(settings) if p.name == "store")
    assert "s3cret" not in store.reason and "***" in store.reason


def test_serve_migrates_runs_and_stops_on_sigterm(tmp_path: Path) -> None:
    db = tmp_path / "serve.db"
    env = {**os.environ, "SUPPORTDESK_DATABASE_URL": f"sqlite:///{db}", "PYTHONUNBUFFERED": "1",
           "SUPPORTDESK_SMTP_LISTEN": f"127.0.0.1:{free_port()}", "SUPPORTDESK_HTTP_LISTEN": f"127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "supportdesk is running" in line:
            break
    else:
        proc.kill()
    assert any("supportdesk is running" in line for line in lines), "".join(lines)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    log = "".join(lines) + rest
    assert proc.returncode == 0, log
    assert "slack app: not started (not configured" in log
    assert "stopped" in rest
    engine = make_engine(f"sqlite:///{db}")
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()
