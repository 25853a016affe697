"""The team's figures as a short Slack message: the numbers ``supportdesk metrics --json`` prints, in words. Pure.

Every figure is read from :func:`core.metrics.compute_metrics`'s JSON (the
same function the command line and the digest use), so Slack can never show
a number the others disagree with; this module only chooses the period and
the wording.
"""

from __future__ import annotations

from datetime import date, timedelta, tzinfo
from typing import Any

from bot.blocks import money
from core.errors import InvalidInput
from core.metrics import Period, period_from_dates
from templates import duration

MAX_DAYS = 366


def metrics_period(text: str, today: date, tz: tzinfo) -> Period:
    """``today``, ``yesterday``, ``Nd`` (the last N full days) or ``FIRST..END`` (END not counted), in ``tz``."""
    if text == "today":
        return period_from_dates(today, today + timedelta(days=1), tz, today)
    if text == "yesterday":
        return period_from_dates(today - timedelta(days=1), today, tz, today)
    if text.endswith("d") and text[:-1].isdigit():
        days = int(text[:-1])
        if not 1 <= days <= MAX_DAYS:
            raise InvalidInput(f"give between 1 and {MAX_DAYS} days")
        return period_from_dates(today - timedelta(days=days), today, tz, today)
    first, _, end = text.partition("..")
    try:
        return period_from_dates(date.fromisoformat(first), date.fromisoformat(end), tz, today)
    except ValueError:
        raise InvalidInput(f"{text!r} is not a period like 2026-01-01..2026-02-01") from None


def metrics_text(report: dict[str, Any], label: str) -> str:
    """The figures of one report, most asked-for first."""
    sla = report["sla_compliance"]
    backlog = report["backlog"]
    money_lines = _money(report["financial_impact"])
    lines = [
        f"*Team figures, {label}* ({report['period']['since'][:10]} to {report['period']['until'][:10]}, "
        f"end not counted, {report['period']['timezone']})",
        f"• First response: median {duration(report['first_response']['median_seconds'])}, "
        f"90% within {duration(report['first_response']['p90_seconds'])} ({report['first_response']['count']})",
        f"• Time to claim: median {duration(report['time_to_claim']['median_seconds'])}",
        f"• Resolution: median {duration(report['resolution']['median_seconds'])} "
        f"({report['resolution']['count']} resolved)",
        f"• Backlog: {backlog['total']} open (under 1 day {backlog['age_under_1d']}, 1–3 days "
        f"{backlog['age_1d_to_3d']}, 3–7 days {backlog['age_3d_to_7d']}, over 7 days {backlog['age_over_7d']})",
        f"• Reopened: {_rate(report['reopen_rate'])} · resolved right first time: {_rate(report['accuracy_rate'])}",
        f"• SLA met: first response {_rate(sla['first_response'])}, resolution {_rate(sla['resolution'])} · "
        f"breaches open now: {sla['breaches_open']['requests']} requests",
        f"• Disputes: median cycle {duration(report['dispute_cycle']['median_seconds'])} "
        f"({report['dispute_cycle']['count']} closed)",
        *money_lines,
    ]
    return "\n".join(lines)


def _money(impact: dict[str, Any]) -> list[str]:
    lines = []
    for key, label in (("disputed_open", "Disputed, open"), ("approved", "Adjustments approved"),
                       ("rejected", "Adjustments rejected"), ("pending", "Adjustments pending")):
        totals = impact.get(key) or []
        if totals:
            lines.append(f"• {label}: " + ", ".join(_total(t) for t in totals))
    return lines or ["• No money in dispute and no adjustments in the period."]


def _total(total: dict[str, Any]) -> str:
    amount = money(total["amount"]["amount_minor"], total["amount"]["currency"])
    kind = f" {total['kind'].replace('_', ' ')}" if total.get("kind") else ""
    count = total.get("count", total.get("requests"))
    return f"{amount}{kind} ({count})"


def _rate(rate: dict[str, Any]) -> str:
    if rate.get("rate") is None:
        return "n/a"
    return f"{100 * float(rate['rate']):.0f}% ({rate['numerator']}/{rate['denominator']})"
