"""Settings: defaults, environment, TOML file, and a clear error naming the bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import InvalidInput
from core.settings import HostPort, load_settings


def test_defaults_match_the_design() -> None:
    s = load_settings({})
    assert s.database_url == "sqlite:///supportdesk.db"
    assert s.smtp_listen == HostPort("127.0.0.1", 2525)
    assert s.support_addresses == ("support@localhost",)
    assert s.outbound_smtp is None
    assert s.outgoing_maildir == Path("outgoing-mail")
    assert s.http_listen == HostPort("127.0.0.1", 3000)
    assert (s.slash_command, s.timezone, s.digest_time) == ("/sd", "UTC", "09:00")
    assert s.slack_bot_token is None and s.triage_channel is None


def test_environment_overrides() -> None:
    s = load_settings({
        "SUPPORTDESK_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1/x",
        "SUPPORTDESK_SMTP_LISTEN": "0.0.0.0:25",
        "SUPPORTDESK_SUPPORT_ADDRESSES": "Help@Example.com, billing@example.com",
        "SUPPORTDESK_OUTBOUND_SMTP": "relay.example.com:587",
        "SLACK_BOT_TOKEN": "xoxb-secret",
        "SUPPORTDESK_TRIAGE_CHANNEL": "C123",
        "SUPPORTDESK_SLASH_COMMAND": "help",
        "SUPPORTDESK_TIMEZONE": "Europe/Berlin",
        "SUPPORTDESK_DIGEST_TIME": "7:30",
    })
    assert s.smtp_listen == HostPort("0.0.0.0", 25)
    assert s.support_addresses == ("help@example.com", "billing@example.com")
    assert s.mail_domain == "example.com"
    assert s.outbound_smtp == HostPort("relay.example.com", 587)
    assert (s.slack_bot_token, s.triage_channel, s.slash_command) == ("xoxb-secret", "C123", "/help")
    assert (s.timezone, s.digest_time) == ("Europe/Berlin", "07:30")
    assert "xoxb-secret" not in repr(s)


def test_toml_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "supportdesk.toml"
    config.write_text('[supportdesk]\ntimezone = "Asia/Tokyo"\nsupport_addresses = ["a@x.test"]\n'
                      '[sla.urgent]\nfirst_response = "1h"\n', encoding="utf-8")
    s = load_settings({"SUPPORTDESK_CONFIG": str(config), "SUPPORTDESK_TIMEZONE": "UTC"})
    assert s.timezone == "UTC"  # the environment wins
    assert s.support_addresses == ("a@x.test",)
    assert s.extra["sla"]["urgent"]["first_response"] == "1h"
    assert s.config_path == config


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SUPPORTDESK_SMTP_LISTEN": "2525"}, "SUPPORTDESK_SMTP_LISTEN"),
        ({"SUPPORTDESK_HTTP_LISTEN": "localhost:99999"}, "SUPPORTDESK_HTTP_LISTEN"),
        ({"SUPPORTDESK_TIMEZONE": "Mars/Olympus"}, "SUPPORTDESK_TIMEZONE"),
        ({"SUPPORTDESK_DIGEST_TIME": "25:00"}, "SUPPORTDESK_DIGEST_TIME"),
        ({"SUPPORTDESK_SUPPORT_ADDRESSES": "not-an-address"}, "SUPPORTDESK_SUPPORT_ADDRESSES"),
        ({"SUPPORTDESK_DATABASE_URL": " "}, "SUPPORTDESK_DATABASE_URL"),
        ({"SUPPORTDESK_CONFIG": "/nonexistent/supportdesk.toml"}, "SUPPORTDESK_CONFIG"),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], named: str) -> None:
    with pytest.raises(InvalidInput, match=named):
        load_settings(environ)


def test_unknown_toml_setting_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[supportdesk]\ndatabse_url = "sqlite://"\n', encoding="utf-8")
    with pytest.raises(InvalidInput, match="unknown setting 'databse_url'"):
        load_settings({"SUPPORTDESK_CONFIG": str(config)})


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text("[supportdesk\n", encoding="utf-8")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        load_settings({"SUPPORTDESK_CONFIG": str(config)})
