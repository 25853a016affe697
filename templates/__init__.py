"""The jinja2 templates of everything we send, and the one environment that renders them.

The templates (e-mail bodies, Slack digests and alerts, the exported record
of a request) sit beside this file, a package only so that they install with
the code; the mail worker, the Slack app and the scheduler all render through
:func:`render` here, and HTML (``export/``) through :func:`render_html`,
whose environment escapes every value because customer text is untrusted.
``StrictUndefined`` turns a misspelt or missing variable into an error
instead of a silently empty sentence in a customer's inbox or a manager's
digest. Templates get plain data only; nothing here reads settings or the
database. The filters format figures one way everywhere: durations, money
in minor units, rates, changes against an earlier period, UTC times and
file sizes.
"""

from __future__ import annotations

import functools
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from core.money import format_minor

TEMPLATE_ROOT = Path(__file__).resolve().parent


@functools.cache
def environment() -> Environment:
    """The one environment; plain text and Slack mrkdwn, so nothing is HTML-escaped."""
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_ROOT),
        undefined=StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters.update(_filters())
    return env


@functools.cache
def html_environment() -> Environment:
    """The same templates and filters for HTML, with autoescape on: every value is escaped unless marked safe.

    A separate environment, so the text templates above keep rendering
    exactly as they do (no ``&amp;`` in a customer's mail or a Slack post).
    """
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_ROOT),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=True,
    )
    env.filters.update(_filters())
    return env


def render(name: str, **context: Any) -> str:
    """Render template ``name`` (e.g. ``email/reply.txt.j2``); raises a jinja2 error when it cannot."""
    return environment().get_template(name).render(**context)


def render_html(name: str, **context: Any) -> str:
    """Render the HTML template ``name`` (e.g. ``export/request_record.html.j2``) with every value escaped."""
    return html_environment().get_template(name).render(**context)


def _filters() -> dict[str, Any]:
    # Both environments know every filter: `supportdesk doctor` compiles every template with the text one.
    return dict(duration=duration, money=money, percent=percent, change=change, utc=utc, filesize=filesize)


def duration(seconds: float | None) -> str:
    """``4 min``, ``2.5 h``, ``3.1 d``; ``n/a`` when there is nothing to measure."""
    if seconds is None:
        return "n/a"
    value = int(seconds)
    if value < 3600:
        return f"{value // 60} min"
    if value < 86400:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


def money(amount: dict[str, Any] | None) -> str:
    """A ``money_json`` value as ``120.00 EUR``."""
    if not amount:
        return "n/a"
    return f"{format_minor(int(amount['amount_minor']), str(amount['currency']))} {amount['currency']}"


def percent(rate: dict[str, Any] | None) -> str:
    """A rate's JSON as ``83% (5/6)``; ``n/a`` with nothing to divide."""
    if not rate or rate.get("rate") is None:
        return "n/a"
    return f"{math.floor(100 * float(rate['rate']) + 0.5)}% ({rate['numerator']}/{rate['denominator']})"


def change(now: float | None, before: float | None, days_before: int = 1) -> str:
    """How ``now`` compares with the daily average of ``before`` over ``days_before`` days.

    `` ▲ 20%``, `` ▼ 5%``, `` =``, with the space before it, or nothing at all
    when there is nothing to compare (so a template writes it straight after
    the figure).
    """
    if now is None or before is None:
        return ""
    average = before / days_before if days_before else before
    if average == 0:
        return "" if now == 0 else " (new)"
    ratio = (now - average) / average
    if abs(ratio) < 0.005:
        return " ="
    return f" {'▲' if ratio > 0 else '▼'} {abs(ratio) * 100:.0f}%"


def utc(moment: str | datetime | None) -> str:
    """An ISO 8601 time (as our JSON spells it) or a datetime as ``2026-01-05 09:00:00 UTC``; ``-`` for none."""
    if moment is None or moment == "":
        return "-"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError("a naive datetime has no place in a UTC time")
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def filesize(size: int | None) -> str:
    """``12.1 KiB (12,345 bytes)``; the exact byte count stays, as a reviewer may compare it."""
    if size is None:
        return "-"
    value = int(size)
    if value < 1024:
        return f"{value:,} bytes"
    scaled, unit = float(value), "B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        scaled /= 1024
        if scaled < 1024:
            break
    return f"{scaled:.1f} {unit} ({value:,} bytes)"
