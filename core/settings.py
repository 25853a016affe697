"""Settings, read once at start-up into a frozen, typed object.

Sources, later ones winning: built-in defaults, the TOML file named by
``SUPPORTDESK_CONFIG`` (its ``[supportdesk]`` table uses the variable names in
lower case without the prefix, e.g. ``database_url``), then the environment.
Nothing in the code base reads the environment anywhere else.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from core.errors import InvalidInput


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_host_port(value: str, name: str) -> HostPort:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidInput(f"{name}={value!r} must look like host:port, e.g. 127.0.0.1:2525")
    return HostPort(host.strip("[]"), int(port))


@dataclass(frozen=True)
class Settings:
    """Every option of the product. The README's settings table lists the same."""

    database_url: str = "sqlite:///supportdesk.db"
    smtp_listen: HostPort = HostPort("127.0.0.1", 2525)
    support_addresses: tuple[str, ...] = ("support@localhost",)
    outbound_smtp: HostPort | None = None
    outgoing_maildir: Path = Path("./outgoing-mail")
    # None: no HTTP listener (``SUPPORTDESK_HTTP_LISTEN=off``), possible unless Slack runs in HTTP mode.
    http_listen: HostPort | None = HostPort("127.0.0.1", 3000)
    slack_bot_token: str | None = field(default=None, repr=False)
    slack_signing_secret: str | None = field(default=None, repr=False)
    slack_app_token: str | None = field(default=None, repr=False)
    slack_api_url: str | None = None
    triage_channel: str | None = None
    approvals_channel: str | None = None
    alerts_channel: str | None = None
    digest_channel: str | None = None
    slash_command: str = "/sd"
    timezone: str = "UTC"
    digest_time: str = "09:00"
    # The scheduler.
    digest_emails: tuple[str, ...] = ()
    auto_close_days: int = 7
    waiting_reminder_days: int = 3
    # The mail gateway.
    smtp_max_message_size: int = 25 * 1024 * 1024
    smtp_max_sessions: int = 100
    outbound_smtp_starttls: bool = False
    outbound_smtp_user: str | None = None
    outbound_smtp_password: str | None = field(default=None, repr=False)
    authserv_ids: tuple[str, ...] = ()
    invoice_pattern: str | None = None
    new_requests_per_sender_hour: int = 20
    acks_per_sender_hour: int = 3
    # How serve and the commands log: "text" (one readable line) or "json" (one object a line).
    log_format: str = "text"
    config_path: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def mail_domain(self) -> str:
        """The domain our Message-IDs and reply addresses use."""
        return self.support_addresses[0].rpartition("@")[2] or "localhost"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


_INT_FIELDS = {
    "smtp_max_message_size": (1024, 2**31 - 1),
    "smtp_max_sessions": (1, 100_000),
    "new_requests_per_sender_hour": (1, 1_000_000),
    "acks_per_sender_hour": (0, 1_000_000),
    "auto_close_days": (0, 3650),
    "waiting_reminder_days": (0, 3650),
}
_LOG_FORMATS = ("text", "json")
# SUPPORTDESK_HTTP_LISTEN values that turn the HTTP listener off.
_OFF = ("", "off")
_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}

# variable name -> (field name, parser)
_ENV_PREFIX = "SUPPORTDESK_"
_PLAIN_ENV = {
    "SLACK_BOT_TOKEN": "slack_bot_token",
    "SLACK_SIGNING_SECRET": "slack_signing_secret",
    "SLACK_APP_TOKEN": "slack_app_token",
}


def _parse_field(name: str, raw: Any) -> Any:
    env_name = _env_name(name)
    if name == "http_listen" and str(raw).strip().lower() in _OFF:
        return None
    if name in ("smtp_listen", "http_listen"):
        return parse_host_port(str(raw), env_name)
    if name == "log_format":
        text = str(raw).strip().lower()
        if text not in _LOG_FORMATS:
            raise InvalidInput(f"{env_name}={raw!r} must be text or json")
        return text
    if name == "outbound_smtp":
        return parse_host_port(str(raw), env_name) if str(raw).strip() else None
    if name == "support_addresses":
        items = raw if isinstance(raw, list) else str(raw).split(",")
        addresses = tuple(a.strip().lower() for a in items if a.strip())
        if not addresses or any("@" not in a for a in addresses):
            raise InvalidInput(f"{env_name} must list e-mail addresses, comma-separated")
        return addresses
    if name == "outgoing_maildir":
        return Path(str(raw))
    if name == "timezone":
        try:
            ZoneInfo(str(raw))
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise InvalidInput(f"{env_name}={raw!r} is not a known time zone such as Europe/Berlin") from exc
        return str(raw)
    if name == "digest_time":
        hh, sep, mm = str(raw).partition(":")
        if not (sep and hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
            raise InvalidInput(f"{env_name}={raw!r} must be a time like 09:00")
        return f"{int(hh):02d}:{int(mm):02d}"
    if name in _INT_FIELDS:
        low, high = _INT_FIELDS[name]
        text = str(raw).strip()
        if not text.isdigit() or not low <= int(text) <= high:
            raise InvalidInput(f"{env_name}={raw!r} must be a whole number from {low} to {high}")
        return int(text)
    if name == "outbound_smtp_starttls":
        text = str(raw).strip().lower()
        if text not in _BOOLEANS:
            raise InvalidInput(f"{env_name}={raw!r} must be true or false")
        return _BOOLEANS[text]
    if name == "digest_emails":
        items = raw if isinstance(raw, list) else str(raw).split(",")
        addresses = tuple(str(a).strip() for a in items if str(a).strip())
        if any(a.count("@") != 1 for a in addresses):
            raise InvalidInput(f"{env_name} must list e-mail addresses, comma-separated")
        return addresses
    if name == "authserv_ids":
        items = raw if isinstance(raw, list) else str(raw).split(",")
        return tuple(str(a).strip().lower() for a in items if str(a).strip())
    if name == "invoice_pattern":
        value = str(raw).strip()
        if value:
            try:
                re.compile(value)
            except re.error as exc:
                raise InvalidInput(f"{env_name}={raw!r} is not a valid regular expression: {exc}") from exc
        return value or None
    if name == "slash_command":
        value = str(raw).strip()
        return value if value.startswith("/") else "/" + value
    value = str(raw).strip()
    if name == "database_url":
        if not value:
            raise InvalidInput(f"{env_name} must not be empty")
        return value
    return value or None


def _env_name(field_name: str) -> str:
    for env, fname in _PLAIN_ENV.items():
        if fname == field_name:
            return env
    return _ENV_PREFIX + field_name.upper()


_SETTABLE = {f.name for f in fields(Settings)} - {"config_path", "extra"}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from defaults, the optional TOML file and the environment.

    Raises :class:`InvalidInput` naming the variable when a value is malformed,
    so ``serve`` refuses to start instead of failing later.
    """
    env = dict(os.environ if environ is None else environ)
    values: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    config_path: Path | None = None
    if env.get("SUPPORTDESK_CONFIG"):
        config_path = Path(env["SUPPORTDESK_CONFIG"])
        try:
            document = tomllib.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise InvalidInput(f"SUPPORTDESK_CONFIG names {config_path}, which does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInput(f"{config_path} is not valid TOML: {exc}") from exc
        extra = {k: v for k, v in document.items() if k != "supportdesk"}
        for key, raw in (document.get("supportdesk") or {}).items():
            if key not in _SETTABLE:
                raise InvalidInput(f"{config_path}: unknown setting {key!r} in [supportdesk]")
            values[key] = _parse_field(key, raw)
    for name in _SETTABLE:
        env_name = _env_name(name)
        if env_name in env:
            values[name] = _parse_field(name, env[env_name])
    return Settings(**values, config_path=config_path, extra=extra)
