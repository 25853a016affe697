"""`supportdesk serve`: migrates the store, says what started and why the rest did not, stops on SIGTERM.

And its background process: forked at start-up, making the digests, spawned again if it dies.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import migrate
from core.db import make_engine
from core.settings import load_settings
from cli.background import PROCESS_NAME as BACKGROUND
from cli.serve import plan_parts
from tests.conftest import Database
from tests.e2e_harness import wait_for
from tests.intake.serve_process import ServeProcess, free_port, serve_env
from tests.proc_stats import children_of, cmdline, comm


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


def test_the_background_process_is_a_fork_of_serve_makes_the_digests_and_is_spawned_again_if_killed(
        database: Database, tmp_path: Path) -> None:
    port = free_port()
    serve = ServeProcess(serve_env(database.url, port, tmp_path), tmp_path, port, tmp_path / "serve.log")
    serve.start()
    assert serve.process is not None
    pid = serve.process.pid
    try:
        wait_for(lambda: "weekly digest" in serve.log() and "made and queued" in serve.log(), 30, "the digests are made")
        at_start = {child: (comm(child), cmdline(child)) for child in children_of(pid)}
        serve_command = cmdline(pid)
        assert len(at_start) == 1, at_start
        (first,) = at_start
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: [c for c in children_of(pid) if c != first and comm(c) == BACKGROUND], 30, "it is back")
        (second,) = [c for c in children_of(pid) if comm(c) == BACKGROUND]
        second_command = cmdline(second)
        with smtplib.SMTP("127.0.0.1", port) as client:
            client.sendmail("customer@example.test", ["support@localhost"],
                            b"From: customer@example.test\r\nTo: support@localhost\r\nSubject: Still there?\r\n"
                            b"Message-ID: <still-there@example.test>\r\n\r\nHello.\r\n")
        acknowledged = tmp_path / "outgoing-mail" / "new"
        wait_for(lambda: acknowledged.exists() and any(acknowledged.iterdir()), 30, "the mail is acknowledged")
    finally:
        code = serve.terminate()

    assert code == 0, serve.log()
    # Alone at start-up (no resource tracker, no digest child), with serve's own command line: a fork.
    assert at_start == {first: (BACKGROUND, serve_command)} and "cli.main serve" in serve_command
    assert "spawn_main" in second_command  # restarted while serve runs threads: a fresh interpreter
    assert "background process exited with -9; restarting it" in serve.log()


def processes_with(marker: bytes) -> list[int]:
    """Every process whose environment holds ``marker`` (a serve of this test and anything it forked)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as environ:
                    if marker in environ.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def test_a_sigterm_while_serve_starts_stops_it_and_what_it_forked_cleanly(tmp_path: Path) -> None:
    """SIGTERM as soon as serve has opened its store, before its children are forked and its event loop
    handles the signal (on a slow machine the signal may come later: the outcome must be the same). serve
    stops, exits with 0, logs no traceback and leaves no process behind."""
    port = free_port()
    env = {**os.environ, "SUPPORTDESK_DATABASE_URL": f"sqlite:///{tmp_path / 'serve.db'}", "PYTHONUNBUFFERED": "1",
           "SUPPORTDESK_SMTP_LISTEN": f"127.0.0.1:{port}", "SUPPORTDESK_HTTP_LISTEN": f"127.0.0.1:{free_port()}"}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "store: started" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=60)
    log = "".join(lines) + rest
    marker = f"SUPPORTDESK_SMTP_LISTEN=127.0.0.1:{port}\0".encode()
    wait_for(lambda: not processes_with(marker), 15, "the children it forked are gone")

    assert proc.returncode == 0, log
    assert "Traceback" not in log, log
