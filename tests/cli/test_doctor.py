"""``supportdesk doctor`` as an admin runs it: against a real database, real ports, a real SMTP relay on
loopback and the fake Slack Web API. Both databases."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.cli.conftest import Cli
from tests.notifications import free_port, running_sink
from tests.slack.fake_slack import FakeSlack


@pytest.fixture
def quiet_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Listener ports nobody uses, so the checks do not depend on what else runs on this machine."""
    monkeypatch.setenv("SUPPORTDESK_SMTP_LISTEN", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("SUPPORTDESK_HTTP_LISTEN", f"127.0.0.1:{free_port()}")


def statuses(cli: Cli) -> dict[str, tuple[str, str]]:
    result = cli("doctor", "--json")
    return {c["check"]: (c["status"], c["detail"]) for c in result.json()}


def test_a_migrated_store_without_slack_is_healthy(cli: Cli, quiet_ports: None) -> None:
    result = cli("doctor")
    assert result.code == 0, result.out
    assert result.err == "all checks passed\n"
    found = statuses(cli)
    assert {k: v[0] for k, v in found.items()} == {
        "database": "ok", "smtp listener": "ok", "http listener": "ok", "outgoing mail": "ok", "slack": "skip",
        "templates": "ok"}
    assert "(current)" in found["database"][1] and "Maildir" in found["outgoing mail"][1]


def test_a_missing_sqlite_file_is_reported_and_not_created(bare_cli: Cli, monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path, quiet_ports: None) -> None:
    monkeypatch.setenv("SUPPORTDESK_DATABASE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    result = bare_cli("doctor")
    assert result.code == 1 and "FAIL  database" in result.out and "supportdesk db upgrade" in result.out
    assert not (tmp_path / "none.db").exists()


def test_a_port_in_use_is_named(cli: Cli, monkeypatch: pytest.MonkeyPatch, quiet_ports: None) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("SUPPORTDESK_SMTP_LISTEN", f"127.0.0.1:{port}")
        status, detail = statuses(cli)["smtp listener"]
    assert status == "fail" and "in use" in detail and "SUPPORTDESK_SMTP_LISTEN" in detail


def test_a_relay_nobody_answers_is_reported(cli: Cli, monkeypatch: pytest.MonkeyPatch, quiet_ports: None) -> None:
    silent = free_port()
    monkeypatch.setenv("SUPPORTDESK_OUTBOUND_SMTP", f"127.0.0.1:{silent}")
    status, detail = statuses(cli)["outgoing mail"]
    assert status == "fail" and "cannot reach the relay" in detail


def test_a_relay_that_answers_is_ok(cli: Cli, monkeypatch: pytest.MonkeyPatch, quiet_ports: None) -> None:
    port = free_port()
    with running_sink(port):
        monkeypatch.setenv("SUPPORTDESK_OUTBOUND_SMTP", f"127.0.0.1:{port}")
        assert statuses(cli)["outgoing mail"] == ("ok", f"the relay 127.0.0.1:{port} answers")


def test_slack_token_and_channels(cli: Cli, monkeypatch: pytest.MonkeyPatch, fake_slack: FakeSlack,
                                  quiet_ports: None) -> None:
    fake_slack.add_channel("C0TRIAGE1", name="support-triage")
    fake_slack.add_channel("C0DIGEST1", name="support-digest", is_member=False)
    for name, value in (("SLACK_BOT_TOKEN", fake_slack.token), ("SUPPORTDESK_SLACK_API_URL", fake_slack.base_url),
                        ("SLACK_SIGNING_SECRET", "s3cret"), ("SUPPORTDESK_TRIAGE_CHANNEL", "C0TRIAGE1"),
                        ("SUPPORTDESK_DIGEST_CHANNEL", "C0DIGEST1"), ("SUPPORTDESK_ALERTS_CHANNEL", "nonsense")):
        monkeypatch.setenv(name, value)
    found = statuses(cli)
    assert found["slack token"][0] == "ok" and found["http listener"][0] == "ok"
    assert found["triage channel"] == ("ok", "#support-triage (C0TRIAGE1), the bot is a member")
    assert found["digest channel"][0] == "fail" and "/invite" in found["digest channel"][1]
    assert found["alerts channel"] == ("fail", "SUPPORTDESK_ALERTS_CHANNEL=nonsense: Slack says channel_not_found")
    assert found["approvals channel"][0] == "skip"
    assert "slack mode" not in found

    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-not-the-one")
    assert statuses(cli)["slack token"] == ("fail", "Slack refused SLACK_BOT_TOKEN: invalid_auth")
