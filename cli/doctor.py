"""``supportdesk doctor``: check the configuration against the world and say, in plain words, what is wrong.

Each check is independent and ends ``ok``, ``FAIL`` (with what to do) or
``skip`` (not configured, and why that is fine). Nothing is written: the
database is only read (a missing SQLite file is reported, not created), the
listener ports are bound and let go at once,
the relay gets EHLO and QUIT, Slack gets ``auth.test`` and
``conversations.info``. The exit code is 1 when any check failed, so a
deployment script can run it before ``serve``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import smtplib
import socket
import ssl
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from cli.output import safe_url
from core import migrate
from core.errors import StoreUnavailable
from core.digest import MATCHES
from core.metrics import Backlog, Distribution, FinancialImpact, FirstResponse, MetricSet, Rate, Resolution, \
    SlaCompliance
from core.settings import HostPort, Settings
from core.store import Store

Status = Literal["ok", "FAIL", "skip"]
TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "status": self.status.lower(), "detail": self.detail}


def register(top: Any) -> None:
    p = top.add_parser("doctor", help="check the settings, the database, the ports, the relay, Slack and the "
                                      "templates, and say what is wrong")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(handler=run, settings_only=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    checks = diagnose(settings)
    if args.json:
        print(json.dumps([c.to_json() for c in checks], indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
        failed = sum(1 for c in checks if c.status == "FAIL")
        print("all checks passed" if not failed else f"{failed} check{'s' if failed > 1 else ''} failed",
              file=sys.stderr)
    return 1 if any(c.status == "FAIL" for c in checks) else 0


def diagnose(settings: Settings) -> list[Check]:
    return [
        check_database(settings),
        check_port("smtp listener", settings.smtp_listen, "SUPPORTDESK_SMTP_LISTEN"),
        check_http_listener(settings),
        check_outgoing_mail(settings),
        *check_slack(settings),
        check_templates(),
    ]


def check_database(settings: Settings) -> Check:
    from sqlalchemy.engine import make_url

    where = safe_url(settings.database_url)
    database = make_url(settings.database_url).database
    if settings.is_sqlite and database and database != ":memory:" and not Path(database).exists():
        # Opening it would create an empty file; say what to do instead.
        return Check("database", "FAIL", f"{where}: there is no database file yet: run `supportdesk db upgrade`")
    store = Store.open(settings)
    try:
        store.ping()
        current, head = migrate.current_revision(store.engine), migrate.head_revision()
    except StoreUnavailable as exc:
        return Check("database", "FAIL", f"cannot reach it: {exc}")
    finally:
        store.dispose()
    if current is None:
        return Check("database", "FAIL", f"{where} has no schema yet: run `supportdesk db upgrade`")
    if current != head:
        return Check("database", "FAIL", f"{where} is at revision {current}, this version needs {head}: "
                                         "run `supportdesk db upgrade`")
    return Check("database", "ok", f"{where}, schema at revision {current} (current)")


def check_http_listener(settings: Settings) -> Check:
    """serve listens there for /health and /metrics (and Slack's posts in HTTP mode) unless it is off."""
    if settings.http_listen is not None:
        return check_port("http listener", settings.http_listen, "SUPPORTDESK_HTTP_LISTEN")
    if settings.slack_bot_token and settings.slack_signing_secret and not settings.slack_app_token:
        return Check("http listener", "FAIL", "SUPPORTDESK_HTTP_LISTEN is off, but the Slack app in HTTP mode "
                                              "needs it for /slack/events: set an address, or SLACK_APP_TOKEN "
                                              "for Socket Mode")
    return Check("http listener", "skip", "SUPPORTDESK_HTTP_LISTEN is off: serve answers no /health or /metrics")


def check_port(name: str, where: HostPort, setting: str) -> Check:
    """Bind and let go at once: a port taken means another process (a running serve?) listens there."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in where.host else socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((where.host, where.port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return Check(name, "FAIL", f"{where} is in use by another process (is `supportdesk serve` running "
                                       f"already?); stop it or set {setting}")
        return Check(name, "FAIL", f"cannot listen on {where}: {exc.strerror}; check {setting}")
    return Check(name, "ok", f"{where} is free")


def check_outgoing_mail(settings: Settings) -> Check:
    relay = settings.outbound_smtp
    if relay is None:
        folder = Path(settings.outgoing_maildir)
        existing = next((p for p in (folder, *folder.absolute().parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            return Check("outgoing mail", "FAIL", f"no relay set and the Maildir {folder} cannot be written "
                                                  "(or created); set SUPPORTDESK_OUTBOUND_SMTP or fix its rights")
        made = "" if existing == folder else " (made on first use)"
        return Check("outgoing mail", "ok", f"no relay set: mail is written to the Maildir {folder}{made}")
    try:
        with smtplib.SMTP(relay.host, relay.port, timeout=TIMEOUT_SECONDS) as smtp:
            code, _ = smtp.ehlo()
            if code != 250:
                return Check("outgoing mail", "FAIL", f"the relay {relay} answered EHLO with {code}")
            if settings.outbound_smtp_starttls:
                if not smtp.has_extn("starttls"):
                    return Check("outgoing mail", "FAIL", f"the relay {relay} does not offer STARTTLS, which "
                                                          "SUPPORTDESK_OUTBOUND_SMTP_STARTTLS asks for")
                smtp.starttls(context=ssl.create_default_context())
                smtp.ehlo()
            if settings.outbound_smtp_user and settings.outbound_smtp_password:
                smtp.login(settings.outbound_smtp_user, settings.outbound_smtp_password)
    except smtplib.SMTPAuthenticationError as exc:
        return Check("outgoing mail", "FAIL", f"the relay {relay} refused the login ({exc.smtp_code}): check "
                                              "SUPPORTDESK_OUTBOUND_SMTP_USER and _PASSWORD")
    except (OSError, smtplib.SMTPException) as exc:
        return Check("outgoing mail", "FAIL", f"cannot reach the relay {relay}: {exc.__class__.__name__}: {exc}; "
                                              "mail will wait in the outbox until it answers")
    return Check("outgoing mail", "ok", f"the relay {relay} answers")


def check_slack(settings: Settings) -> list[Check]:
    if not settings.slack_bot_token:
        return [Check("slack", "skip", "SLACK_BOT_TOKEN unset: the Slack app does not start (e-mail works alone)")]
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError, SlackClientError

    from bot.client import api_url

    url = api_url(settings)
    client = WebClient(token=settings.slack_bot_token, base_url=url, timeout=int(TIMEOUT_SECONDS))
    try:
        who = client.auth_test()
    except SlackApiError as exc:
        return [Check("slack token", "FAIL", f"Slack refused SLACK_BOT_TOKEN: {exc.response.get('error')}")]
    except (SlackClientError, OSError) as exc:
        return [Check("slack token", "FAIL", f"cannot reach Slack at {url}: {exc.__class__.__name__}")]
    checks = [Check("slack token", "ok", f"the bot {who.get('user')} in workspace {who.get('team')}")]
    for setting, channel in (("SUPPORTDESK_TRIAGE_CHANNEL", settings.triage_channel),
                             ("SUPPORTDESK_APPROVALS_CHANNEL", settings.approvals_channel),
                             ("SUPPORTDESK_ALERTS_CHANNEL", settings.alerts_channel),
                             ("SUPPORTDESK_DIGEST_CHANNEL", settings.digest_channel)):
        checks.append(_channel(client, setting, channel))
    if settings.slack_app_token is None and not settings.slack_signing_secret:
        checks.append(Check("slack mode", "FAIL", "neither SLACK_SIGNING_SECRET (HTTP mode) nor SLACK_APP_TOKEN "
                                                  "(Socket Mode) is set: Slack's requests cannot be taken"))
    elif settings.slack_app_token is not None and not settings.slack_app_token.startswith("xapp-"):
        checks.append(Check("slack mode", "FAIL", "SLACK_APP_TOKEN must be the app-level token (xapp-...)"))
    return checks


def _channel(client: Any, setting: str, channel: str | None) -> Check:
    from slack_sdk.errors import SlackApiError, SlackClientError

    name = setting.removeprefix("SUPPORTDESK_").lower().replace("_", " ")
    if not channel:
        required = setting == "SUPPORTDESK_TRIAGE_CHANNEL"
        return Check(name, "FAIL" if required else "skip",
                     f"{setting} unset" + (": new requests have no card" if required else ""))
    try:
        info = client.conversations_info(channel=channel)["channel"]
    except SlackApiError as exc:
        return Check(name, "FAIL", f"{setting}={channel}: Slack says {exc.response.get('error')}")
    except (SlackClientError, OSError) as exc:
        return Check(name, "FAIL", f"{setting}={channel}: cannot ask Slack ({exc.__class__.__name__})")
    if info.get("is_archived"):
        return Check(name, "FAIL", f"{setting}={channel} (#{info.get('name')}) is archived")
    if not info.get("is_member", False):
        return Check(name, "FAIL", f"the bot is not in #{info.get('name')} ({channel}): invite it with "
                                   f"/invite @supportdesk there")
    return Check(name, "ok", f"#{info.get('name')} ({channel}), the bot is a member")


def check_templates() -> Check:
    """Every template of the package compiles, and the ones we send render with sample values (StrictUndefined)."""
    from jinja2 import TemplateError

    from templates import TEMPLATE_ROOT, environment, render

    names = sorted(str(p.relative_to(TEMPLATE_ROOT)) for p in TEMPLATE_ROOT.rglob("*.j2"))
    try:
        for name in names:
            environment().get_template(name)
        for name, context in _samples().items():
            render(name, **context)
    except TemplateError as exc:
        return Check("templates", "FAIL", f"{exc.__class__.__name__}: {exc}")
    return Check("templates", "ok", f"{len(names)} templates load; the e-mail, alert and digest ones render")


def _samples() -> dict[str, dict[str, Any]]:
    mail = dict(request_key="SR-1", subject="A sample", customer_name="Sample Ltd", author_name="An Agent",
                body_text="Text.", resolution_note="Fixed.")
    now = datetime.now(timezone.utc)
    empty = MetricSet(opened=0, first_response=FirstResponse(), time_to_claim=Distribution(),
                      resolution=Resolution(), backlog=Backlog(now), reopen_rate=Rate(), accuracy_rate=Rate(),
                      dispute_cycle=Distribution(), financial_impact=FinancialImpact(),
                      sla_compliance=SlaCompliance()).to_json()
    return {
        **{f"email/{topic}.txt.j2": mail for topic in ("acknowledgment", "reply", "resolution_notice",
                                                       "waiting_reminder")},
        "email/digest.txt.j2": dict(text="Digest.", kind="daily", first_day="2026-01-01"),
        "slack/sla_alert.md.j2": dict(threshold="breach", state="running", target_label="First response",
                                      request_key="SR-1", due="today", met=None, subject="A sample",
                                      priority="normal", request_status="assigned", assignee="<@U1>",
                                      managers=["<@U2>"]),
        "slack/digest.md.j2": dict(title="Sample", period_text="a day", compared_text="the day before",
                                   compare_days=1, current=empty, previous=empty, top_categories=[],
                                   mail={"filed": 0, "matched": {m: 0 for m in MATCHES}, "quarantined_now": 0}),
    }


