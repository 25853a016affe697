"""``supportdesk sla explain`` and ``supportdesk sla sweep``."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from cli import output
from core.errors import InvalidInput
from core.services import sla
from core.store import Store


def register(top: Any) -> None:
    group = top.add_parser("sla", help="SLA clocks: explain one request, record due warnings and breaches")
    actions = group.add_subparsers(title="sla commands", metavar="ACTION", required=True)

    p = actions.add_parser("explain", help="the policy, calendar, pauses and due times behind a request's clocks")
    p.add_argument("key")
    p.add_argument("--now", type=parse_moment, metavar="ISO-TIME", help="explain as of this moment (default: now)")
    p.add_argument("--json", action="store_true", help="print JSON (field names in the README)")
    p.set_defaults(handler=_explain)

    p = actions.add_parser("sweep", help="record the warnings and breaches that are due, once each, and list them")
    p.add_argument("--now", type=parse_moment, metavar="ISO-TIME", help="sweep as of this moment (default: now)")
    p.add_argument("--json", action="store_true", help="print JSON (field names in the README)")
    p.set_defaults(handler=_sweep)


def parse_moment(text: str) -> datetime:
    """ISO 8601; a time without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time like 2026-01-05T09:30:00Z") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _explain(args: argparse.Namespace, store: Store) -> int:
    explanation = sla.explain(store, args.key, args.now)
    if args.json:
        output.emit_json(explanation.to_json())
        return 0
    policy, calendar = explanation.policy, explanation.policy.calendar
    tz = calendar.tz

    def local(moment: datetime | None) -> str:
        return "-" if moment is None else moment.astimezone(tz).strftime("%a %Y-%m-%d %H:%M")

    lines = [
        f"{explanation.key}: {explanation.status}, priority {explanation.priority}, "
        f"category {explanation.category}; as of {local(explanation.now)} ({tz})",
        f"policy {policy.name}: {policy.why}",
        f"calendar {calendar.name} ({tz}): {calendar.describe_hours()}"
        + (f"; holidays {', '.join(sorted(d.isoformat() for d in calendar.holidays))}" if calendar.holidays else ""),
    ]
    for t in explanation.targets:
        c = t.clock
        lines += [
            "",
            f"{c.target.replace('_', ' ')}: {c.state}",
            f"  started   {local(c.started_at)}",
            f"  target    {hours(c.target_seconds)} of business time",
            f"  counted   {hours(c.elapsed_business_seconds)} business, {hours(c.elapsed_wall_seconds)} "
            f"wall-clock while running, {hours(t.wall_since_start_seconds)} since it started",
            f"  warning   {local(c.warn_at)}",
            f"  due       {local(c.due_at)}" + (f"   met {local(c.met_at)}" if c.met_at else ""),
            "  pauses    " + (", ".join(f"{local(a)} to {local(b) if b else 'now'}" for a, b in c.pauses) or "none"),
        ]
        shown = t.counted[:12]
        for lo, hi in shown:
            lines.append(f"  counted   {local(lo)} to {hi.astimezone(tz):%H:%M} ({hours((hi - lo).total_seconds())})")
        if len(t.counted) > len(shown):
            lines.append(f"  … and {len(t.counted) - len(shown)} more intervals (--json lists them all)")
    print("\n".join(lines))
    return 0


def _sweep(args: argparse.Namespace, store: Store) -> int:
    if args.now is not None and args.now > store.clock.now():
        raise InvalidInput("--now may not be in the future: crossings are records of what has happened")
    crossings = sla.sweep(store, args.now)
    if args.json:
        output.emit_json([c.to_json() for c in crossings])
    elif not crossings:
        print("no warnings or breaches are due")
    else:
        output.table(
            ("REQUEST", "TARGET", "THRESHOLD", "CROSSED AT", "DUE AT", "PRIORITY", "ASSIGNEE"),
            ((c.request_key, c.target, c.threshold, output.when(c.crossed_at), output.when(c.due_at),
              c.priority, c.assignee or "-") for c in crossings),
        )
    return 0


def hours(seconds: float) -> str:
    """4h 05m."""
    minutes = round(seconds / 60)
    return f"{minutes // 60}h {minutes % 60:02d}m"
