"""``supportdesk doctor`` on the HTTP listener, which every serve runs now (health and metrics), unless it is off."""

from __future__ import annotations

import socket

import pytest

from tests.cli.conftest import Cli
from tests.notifications import free_port


def http_check(cli: Cli) -> tuple[str, str]:
    (check,) = [c for c in cli("doctor", "--json").json() if c["check"] == "http listener"]
    return check["status"], check["detail"]


@pytest.fixture
def free_smtp_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPPORTDESK_SMTP_LISTEN", f"127.0.0.1:{free_port()}")


def test_the_http_port_is_checked_without_slack(cli: Cli, monkeypatch: pytest.MonkeyPatch,
                                                free_smtp_port: None) -> None:
    port = free_port()
    monkeypatch.setenv("SUPPORTDESK_HTTP_LISTEN", f"127.0.0.1:{port}")
    assert http_check(cli) == ("ok", f"127.0.0.1:{port} is free")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        status, detail = http_check(cli)
    assert status == "fail" and "in use" in detail and "SUPPORTDESK_HTTP_LISTEN" in detail


def test_the_listener_off_is_skipped_without_slack_and_a_failure_with_slack_over_http(
        cli: Cli, monkeypatch: pytest.MonkeyPatch, free_smtp_port: None) -> None:
    monkeypatch.setenv("SUPPORTDESK_HTTP_LISTEN", "off")
    assert http_check(cli) == ("skip", "SUPPORTDESK_HTTP_LISTEN is off: serve answers no /health or /metrics")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "s")
    monkeypatch.setenv("SUPPORTDESK_SLACK_API_URL", f"http://127.0.0.1:{free_port()}/api/")  # Slack is not asked
    status, detail = http_check(cli)
    assert status == "fail" and "Slack app in HTTP mode needs it for /slack/events" in detail
    monkeypatch.setenv("SLACK_APP_TOKEN", "xapp-1-A1-1-abc")  # Socket Mode needs no listener
    assert http_check(cli)[0] == "skip"
