"""The operations side of a real ``supportdesk serve``: ``/health``, ``/metrics`` and its log. Both databases.

Each test runs serve as a child process (tests/intake/serve_process.py)
and drives it only from outside: mail over SMTP, Slack's signed requests
over HTTP with the fake Slack Web API behind it (tests/slack/fake_slack.py,
whose fault injection makes Slack answer errors and 429s), the endpoints
read with urllib, the metrics parsed with prometheus-client's own parser.
Where serve's figures settle in their own time (mail filed by the
processor, cards delivered), the test polls ``/metrics`` until they do
and then checks every value; nothing is timed.
"""

from __future__ import annotations

import json
import os
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url

from core.clock import FixedClock
from core.db import make_engine
from core.store import Store
from tests import factories as f
from tests.conftest import Database, _reset_postgres
from tests.intake.gateway import message
from tests.intake.serve_process import ServeProcess, free_port, serve_env, wait_for_port
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import DEFAULT_SIGNING_SECRET, HOME_TEAM, TRIAGE_CHANNEL, SlackUser, event_callback, post, \
    signed_event

Values = dict[tuple[str, tuple[tuple[str, str], ...]], float]

ALICE = SlackUser("UAGENT1", "alice", HOME_TEAM.id)  # an agent of tests.factories' directory
# Text only a customer wrote: it must reach the store and Slack, never the log.
BODY_MARKER = "PINEAPPLE-4471 my card number is in here"
AUTO_REPLY_MARKER = "MANGO-0092 back on Monday"
RELAY_PASSWORD = "relay-pw-Kiwi-5150"
DATABASE_PASSWORD = "db-pw-Papaya-8080"
OPEN_STATUSES = ("new", "assigned", "waiting_on_customer", "pending_approval")


# --- reading serve from outside ----------------------------------------------------------------------------


def get(url: str) -> tuple[int, str, bytes]:
    """Status, content type and body; a 5xx answer is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def scrape(port: int) -> Values:
    status, content_type, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), (status, content_type)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def health(port: int) -> tuple[int, Any]:
    status, _, body = get(f"http://127.0.0.1:{port}/health")
    return status, json.loads(body)


def settle(port: int, ready: Callable[[Values], bool], what: str, timeout: float = 90.0) -> Values:
    """Scrape until ``ready`` holds (serve files mail and delivers in its own time); the last scrape."""
    deadline = time.monotonic() + timeout
    values = scrape(port)
    while not ready(values):
        assert time.monotonic() < deadline, f"serve's metrics never showed {what}: {values}"
        time.sleep(0.2)
        values = scrape(port)
    return values


def value(values: Values, name: str, **labels: str) -> float | None:
    return values.get((f"supportdesk_{name}", tuple(sorted(labels.items()))))


def labelled(values: Values, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in values.items() if n == f"supportdesk_{name}"}


def wait_for_line(serve: ServeProcess, needle: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while needle not in serve.log():
        assert time.monotonic() < deadline, f"serve never logged {needle!r}:\n{serve.log()}"
        assert serve.process is not None and serve.process.poll() is None, f"serve exited:\n{serve.log()}"
        time.sleep(0.05)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports process ``pid`` listens on, from /proc: its socket inodes matched with LISTEN entries."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports


def with_password(url: str, password: str) -> str:
    """The URL with a password in it (PostgreSQL on trust authentication accepts and ignores it)."""
    return make_url(url).set(password=password).render_as_string(hide_password=False)


# --- with mail and Slack ---------------------------------------------------------------------------------------


def test_metrics_health_and_json_log_of_a_serve_with_mail_and_slack_traffic(
        store: Store, database: Database, fake_slack: FakeSlack, tmp_path: Path) -> None:
    f.seed(store)
    # A request from long ago that nobody answered: past its first-response and resolution targets now.
    long_ago = Store(store.engine, FixedClock(datetime(2020, 1, 6, 9, 0, tzinfo=timezone.utc)),
                     replace(store.settings, slack_bot_token=fake_slack.token))
    f.open_request(long_ago, subject="Old and forgotten")
    url = with_password(database.url, DATABASE_PASSWORD) if database.kind == "postgresql" else database.url
    fake_slack.rate_limit("chat.postMessage", times=1, retry_after=1)  # the first post waits once, then goes
    fake_slack.fail("views.publish", "invalid_arguments")  # the Home tab is refused once
    smtp_port, http_port = free_port(), free_port()
    env = serve_env(url, smtp_port, tmp_path, SLACK_BOT_TOKEN=fake_slack.token,
                    SLACK_SIGNING_SECRET=DEFAULT_SIGNING_SECRET, SUPPORTDESK_SLACK_API_URL=fake_slack.base_url,
                    SUPPORTDESK_TRIAGE_CHANNEL=TRIAGE_CHANNEL.id, SUPPORTDESK_HTTP_LISTEN=f"127.0.0.1:{http_port}",
                    SUPPORTDESK_LOG_FORMAT="json", SUPPORTDESK_OUTBOUND_SMTP_USER="relay-user",
                    SUPPORTDESK_OUTBOUND_SMTP_PASSWORD=RELAY_PASSWORD)
    serve = ServeProcess(env, tmp_path, smtp_port, tmp_path / "serve.log")
    serve.start()
    try:
        wait_for_port(http_port)
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.sendmail("jane@acme.test", ["support@localhost"],
                            message(subject="Invoice INV-100 charged twice", body=BODY_MARKER + "\n"))
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("jane@acme.test", ["nobody@elsewhere.test"], message(subject="Lost", body="x\n"))
            client.sendmail("jane@acme.test", ["support@localhost"],
                            message(subject="Out of office", body=AUTO_REPLY_MARKER + "\n",
                                    headers={"Auto-Submitted": "auto-replied"}))
        home = event_callback({"type": "app_home_opened", "user": ALICE.id, "channel": "D" + ALICE.id[1:],
                               "tab": "home", "event_ts": f"{time.time():.6f}"})
        assert post(f"http://127.0.0.1:{http_port}/slack/events", signed_event(home)).status == 200
        fake_slack.wait_for_calls("views.publish", 1, timeout=30)
        values = settle(http_port, lambda v: (
            value(v, "inbound_mail_waiting") == 0
            and value(v, "inbound_mail_quarantined", reason="auto_reply") == 1
            and value(v, "requests_open", status="new") == 2
            and value(v, "slack_api_rate_limited_total", method="chat.postMessage") == 1
            and value(v, "scheduler_leader") == 1
        ), "the mail filed, the 429 met and the scheduler leading")
        health_status, health_body = health(http_port)
    finally:
        assert serve.terminate() == 0, serve.log()

    assert value(values, "smtp_messages_accepted_total") == 2
    assert value(values, "smtp_recipients_rejected_total") == 1
    assert value(values, "smtp_temporary_failures_total") == 0
    assert value(values, "smtp_sessions_refused_busy_total") == 0
    assert labelled(values, "slack_api_errors_total") == {
        (("error", "invalid_arguments"), ("method", "views.publish")): 1}
    assert labelled(values, "slack_api_rate_limited_total") == {(("method", "chat.postMessage"),): 1}
    assert value(values, "slack_mode", mode="http") == 1 and value(values, "slack_mode", mode="off") == 0
    assert value(values, "store_up") == 1 and value(values, "mail_processor_up") == 1
    assert value(values, "mail_processor_restarts_total") == 0
    assert {labels: v for labels, v in labelled(values, "inbound_mail_quarantined").items() if v} == {
        (("reason", "auto_reply"),): 1}
    assert labelled(values, "requests_open") == {(("status", s),): (2 if s == "new" else 0) for s in OPEN_STATUSES}
    assert labelled(values, "sla_breaches_open") == {
        (("target", "first_response"),): 1, (("target", "next_reply"),): 0, (("target", "resolution"),): 1}
    assert value(values, "outbox_messages", channel="email", status="failed") == 0
    assert value(values, "outbox_messages", channel="slack", status="failed") == 0
    assert set(labelled(values, "outbox_overdue_seconds")) == {(("channel", "email"),), (("channel", "slack"),)}
    assert health_status == 200
    assert health_body == {"status": "ok", "store": True, "parts": {
        "smtp": True, "slack": "http", "scheduler": True, "scheduler_leader": True, "mail_processor": True}}

    log = serve.log()
    entries = [json.loads(line) for line in log.splitlines() if line.strip()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
    messages = [e["message"] for e in entries]
    assert (f"http listener: started (on 127.0.0.1:{http_port}: health at http://127.0.0.1:{http_port}/health, "
            f"metrics at http://127.0.0.1:{http_port}/metrics; Slack posts to /slack/events)") in messages
    assert any(e["logger"] == "supportdesk.intake" and e["message"].startswith("background process stopped")
               for e in entries), "the background process (a child of serve) logs JSON too"
    assert "Slack refused the Home tab of UAGENT1: invalid_arguments" in messages
    for secret in (BODY_MARKER, AUTO_REPLY_MARKER, fake_slack.token, DEFAULT_SIGNING_SECRET, RELAY_PASSWORD,
                   DATABASE_PASSWORD):
        assert secret not in log, f"{secret!r} is in serve's log"
    assert "PINEAPPLE" not in log and "MANGO" not in log


# --- without Slack -----------------------------------------------------------------------------------------------


def test_health_and_metrics_answer_without_slack(store: Store, database: Database, tmp_path: Path) -> None:
    f.seed(store)
    smtp_port, http_port = free_port(), free_port()
    serve = ServeProcess(serve_env(database.url, smtp_port, tmp_path, SUPPORTDESK_HTTP_LISTEN=f"127.0.0.1:{http_port}"),
                         tmp_path, smtp_port, tmp_path / "serve.log")
    serve.start()
    try:
        wait_for_port(http_port)
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.sendmail("jane@acme.test", ["support@localhost"], message(body=BODY_MARKER + "\n"))
        values = settle(http_port, lambda v: value(v, "requests_open", status="new") == 1, "the mail filed")
        status, body = health(http_port)
        slack_post = get(f"http://127.0.0.1:{http_port}/slack/events")[0]
    finally:
        assert serve.terminate() == 0, serve.log()
    assert value(values, "smtp_messages_accepted_total") == 1 and value(values, "store_up") == 1
    assert value(values, "slack_mode", mode="off") == 1
    assert not labelled(values, "slack_api_errors_total") and not labelled(values, "slack_api_rate_limited_total")
    assert status == 200 and body["store"] is True and body["parts"]["slack"] == "off"
    assert body["parts"]["smtp"] is True and body["parts"]["mail_processor"] is True
    assert slack_post == 404
    log = serve.log()
    assert (f"http listener: started (on 127.0.0.1:{http_port}: health at http://127.0.0.1:{http_port}/health, "
            f"metrics at http://127.0.0.1:{http_port}/metrics)") in log
    assert "slack app: not started (not configured" in log and BODY_MARKER not in log


def test_serve_without_slack_does_not_load_bolt(tmp_path: Path) -> None:
    """The listener's modules stand without the Slack app: serve without Slack stays some 20 MB lighter."""
    probe = ("import sys, cli.serve, cli.http_listener, cli.vitals, cli.exposition; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('bot', 'slack_bolt', 'slack_sdk')))")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


# --- the listener off, or its port taken ----------------------------------------------------------------------


def test_http_listen_off_starts_no_listener(tmp_path: Path) -> None:
    smtp_port = free_port()
    env = serve_env(f"sqlite:///{tmp_path / 'serve.db'}", smtp_port, tmp_path, SUPPORTDESK_HTTP_LISTEN="off")
    serve = ServeProcess(env, tmp_path, smtp_port, tmp_path / "serve.log")
    serve.start()
    try:
        wait_for_line(serve, "supportdesk is running")
        assert serve.process is not None
        ports = listening_ports(serve.process.pid)
    finally:
        assert serve.terminate() == 0, serve.log()
    assert ports == {smtp_port}
    assert "http listener: not started (SUPPORTDESK_HTTP_LISTEN is off: no /health and no /metrics)" in serve.log()


def test_a_taken_http_port_stops_serve_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = serve_env(f"sqlite:///{tmp_path / 'serve.db'}", free_port(), tmp_path,
                        SUPPORTDESK_HTTP_LISTEN=f"127.0.0.1:{port}")
        done = subprocess.run([sys.executable, "-m", "cli.main", "serve"], env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"supportdesk: the HTTP listener cannot listen on 127.0.0.1:{port}: Address already in use "
        "(set SUPPORTDESK_HTTP_LISTEN to a free address, or off)")
    assert "Traceback" not in done.stderr


def test_slack_in_http_mode_with_the_listener_off_does_not_start_and_says_why(tmp_path: Path) -> None:
    smtp_port = free_port()
    env = serve_env(f"sqlite:///{tmp_path / 'serve.db'}", smtp_port, tmp_path, SUPPORTDESK_HTTP_LISTEN="off",
                    SLACK_BOT_TOKEN="xoxb-unused", SLACK_SIGNING_SECRET="unused",
                    SUPPORTDESK_TRIAGE_CHANNEL=TRIAGE_CHANNEL.id)
    serve = ServeProcess(env, tmp_path, smtp_port, tmp_path / "serve.log")
    serve.start()
    try:
        wait_for_line(serve, "supportdesk is running")
    finally:
        assert serve.terminate() == 0, serve.log()
    assert ("slack app: not started (SUPPORTDESK_HTTP_LISTEN is off, and in HTTP mode Slack posts to /slack/events "
            "on it") in serve.log()


# --- the store goes away and comes back -------------------------------------------------------------------------


def test_on_postgresql_health_is_503_and_store_up_0_while_the_database_refuses_connections(
        postgres_database: str, tmp_path: Path) -> None:
    _reset_postgres(postgres_database)
    name = make_url(postgres_database).database
    admin = make_engine(make_url(postgres_database).set(database="postgres").render_as_string(hide_password=False),
                        isolation_level="AUTOCOMMIT")
    smtp_port, http_port = free_port(), free_port()
    serve = ServeProcess(serve_env(postgres_database, smtp_port, tmp_path,
                                   SUPPORTDESK_HTTP_LISTEN=f"127.0.0.1:{http_port}"),
                         tmp_path, smtp_port, tmp_path / "serve.log")
    serve.start()
    try:
        wait_for_port(http_port)
        assert health(http_port)[0] == 200
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                         {"d": name})
        try:
            down = _wait_for_health(http_port, 503)
            values = scrape(http_port)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        back = _wait_for_health(http_port, 200)
        values_back = scrape(http_port)
    finally:
        assert serve.terminate() == 0, serve.log()
        admin.dispose()
    assert down == {"status": "degraded", "store": False, "parts": down["parts"]}
    assert value(values, "store_up") == 0 and not labelled(values, "requests_open")
    assert value(values, "smtp_messages_accepted_total") == 0  # the process's own figures still answer
    assert back["status"] in ("ok", "degraded") and back["store"] is True
    assert value(values_back, "store_up") == 1 and value(values_back, "requests_open", status="new") == 0
    assert "health: the store did not answer" in serve.log()


def _wait_for_health(port: int, status: int, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    answer = health(port)
    while answer[0] != status:
        assert time.monotonic() < deadline, f"/health kept answering {answer}"
        time.sleep(0.2)
        answer = health(port)
    return answer[1]
