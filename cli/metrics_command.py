"""``supportdesk metrics``: the numbers of DESIGN §5 for a period, as a table or as JSON.

This module only reads arguments and prints. Every number comes from
:func:`core.metrics.compute_metrics`, the function Slack and the digest call
too, so the three can never disagree.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, TextIO

from cli import output
from core.errors import InvalidInput
from core.metrics import (
    SPLITS,
    Distribution,
    MetricSet,
    MetricsReport,
    MoneyTotal,
    Rate,
    check_split,
    compute_metrics,
    period_from_dates,
    whole_seconds,
)
from core.store import Store

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def register(subparsers: Any) -> None:
    """Add ``metrics`` to the ``supportdesk`` command."""
    p = subparsers.add_parser(
        "metrics", help="response times, backlog, reopen and accuracy rates, money and SLA compliance for a period")
    p.add_argument("--since", metavar="DATE",
                   help="first day, YYYY-MM-DD in SUPPORTDESK_TIMEZONE (default: 7 days before --until)")
    p.add_argument("--until", metavar="DATE",
                   help="the day after the last one: it is not counted (default: today, so full days only)")
    p.add_argument("--by", metavar="FIELD", help=f"also split by one of: {', '.join(SPLITS)}")
    p.add_argument("--json", action="store_true", help="print JSON (stable field names; see README)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace, store: Store) -> int:
    by = check_split(args.by)
    tz = store.settings.tz
    now = store.clock.now()
    period = period_from_dates(_day(args.since, "--since"), _day(args.until, "--until"), tz,
                               now.astimezone(tz).date())
    report = compute_metrics(store, period, by=by, now=now)
    if args.json:
        output.emit_json(report.to_json())
    else:
        show(report, tz)
    return 0


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    text = value.strip()
    try:
        if not _DATE.match(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{option} {value!r} is not a date like 2026-01-31") from None


# --- text for a person -------------------------------------------------------


def show(report: MetricsReport, tz: tzinfo, out: TextIO | None = None) -> None:
    """The report as a person reads it: the whole picture, then one line per group."""
    out = sys.stdout if out is None else out
    last_day = (report.period.until.astimezone(tz) - timedelta(microseconds=1)).date()
    first_day = report.period.since.astimezone(tz).date()
    out.write(f"metrics for {first_day} to {last_day} ({report.timezone}), "
              f"computed {_when(report.now, tz)}\n\n")
    _overall(report.overall, tz, out)
    if report.by is not None:
        out.write(f"\nby {report.by}\n")
        if not report.groups:
            out.write("  nothing in this period\n")
        else:
            _groups(report, out)


def _overall(m: MetricSet, tz: tzinfo, out: TextIO) -> None:
    rows = [
        _times("first response", m.first_response.wall),
        _times("  in business hours", m.first_response.business),
        _times("time to claim", m.time_to_claim),
        _times("resolution", m.resolution.wall, mean=True),
        _times("  in business hours", m.resolution.business, mean=True),
        _times("dispute cycle", m.dispute_cycle),
    ]
    output.table(("DURATIONS", "COUNT", "MEDIAN", "P90", "MEAN"), rows, out)
    b = m.backlog
    out.write(f"\nbacklog at {_when(b.as_of, tz)}: {b.total} open "
              f"(under 1 day {b.age_under_1d}, 1-3 days {b.age_1d_to_3d}, 3-7 days {b.age_3d_to_7d}, "
              f"7 days or more {b.age_over_7d})\n\n")
    s = m.sla_compliance
    output.table(("RATES", "SHARE", "OF"), [
        ("reopened", _percent(m.reopen_rate), _of(m.reopen_rate, "resolved")),
        ("accurate (no rework)", _percent(m.accuracy_rate), _of(m.accuracy_rate, "resolved")),
        ("first response in SLA", _percent(s.first_response), _of(s.first_response, "with a target")),
        ("resolution in SLA", _percent(s.resolution), _of(s.resolution, "with a target")),
    ], out)
    out.write(f"\nSLA breaches open now: first response {s.first_response_breaches}, "
              f"next reply {s.next_reply_breaches}, resolution {s.resolution_breaches} "
              f"({_plural(s.breached_requests, 'request')})\n\n")
    f = m.financial_impact
    output.table(("MONEY", "AMOUNTS"), [
        ("disputed, still open", _amounts(f.disputed_open, "request")),
        ("approved in period", _amounts(f.approved)),
        ("rejected in period", _amounts(f.rejected)),
        ("pending now", _amounts(f.pending)),
    ], out)


def _groups(report: MetricsReport, out: TextIO) -> None:
    headers = (report.by.upper() if report.by else "GROUP", "ANSWERED", "RESP MEDIAN", "RESP P90",
               "CLAIM MEDIAN", "RESOLVED", "RES MEDIAN", "RES P90", "BACKLOG", "REOPENED", "ACCURATE",
               "SLA RESP", "SLA RES", "BREACHED")
    rows = []
    for key, m in report.groups:
        rows.append((
            key if key is not None else "(unassigned)",
            str(m.first_response.wall.count),
            _duration(m.first_response.wall.median),
            _duration(m.first_response.wall.p90),
            _duration(m.time_to_claim.median),
            str(m.resolution.wall.count),
            _duration(m.resolution.wall.median),
            _duration(m.resolution.wall.p90),
            str(m.backlog.total),
            _percent(m.reopen_rate),
            _percent(m.accuracy_rate),
            _percent(m.sla_compliance.first_response),
            _percent(m.sla_compliance.resolution),
            str(m.sla_compliance.breached_requests),
        ))
    output.table(headers, rows, out, indent="  ")


def _times(label: str, d: Distribution, *, mean: bool = False) -> tuple[str, ...]:
    return (label, str(d.count), _duration(d.median), _duration(d.p90), _duration(d.mean) if mean else "")


def _duration(value: Any) -> str:
    """Whole seconds (rounded as in JSON) shown as the two largest units: 2d 04h, 3h 07m, 12m 05s, 45s."""
    seconds = whole_seconds(value)
    if seconds is None:
        return "-"
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _percent(rate: Rate) -> str:
    shown = rate.to_json()["rate"]
    return "-" if shown is None else f"{shown * 100:.1f}%"


def _of(rate: Rate, what: str) -> str:
    return f"{rate.numerator} of {rate.denominator} {what}"


def _amounts(totals: tuple[MoneyTotal, ...], unit: str | None = None) -> str:
    if not totals:
        return "-"
    parts = []
    for t in totals:
        amount = output.money(t.amount_minor, t.currency)
        label = f"{t.kind.replace('_', '-')} " if t.kind else ""
        parts.append(f"{label}{amount} ({_plural(t.count, unit) if unit else t.count})")
    return ", ".join(parts)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _when(moment: datetime, tz: tzinfo) -> str:
    return moment.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")
