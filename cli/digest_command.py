"""``supportdesk digest``: preview the daily digest or weekly summary, or send it (again)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cli import output
from core.digest import monday_of, parse_day
from core.errors import InvalidInput
from core.services.digests import find_digest, resend_digest
from core.store import Store
from notifications.digest_job import DueDigest, due_digests, make_digest, preview_digest

CLI_ACTOR = "system:cli"


def register(top: Any) -> None:
    p = top.add_parser(
        "digest", help="preview the daily digest (or weekly summary), or send it now or again",
        description="Without --date: the latest digest due (yesterday's once today's digest time has passed). "
                    "--print (the default) shows it without recording or sending anything; --send records and "
                    "sends it, or sends a recorded one again, as it was recorded.")
    p.add_argument("--kind", choices=("daily", "weekly"), default="daily",
                   help="the daily digest (default) or the weekly summary (Monday to Sunday)")
    p.add_argument("--date", metavar="DAY", help="the day (YYYY-MM-DD) of a daily digest, or any day of the week "
                                                 "of a weekly summary")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--print", dest="send", action="store_false", help="show it; record and send nothing (default)")
    mode.add_argument("--send", dest="send", action="store_true", help="record and send it; send it again if it was")
    p.add_argument("--chart", metavar="FILE.png", type=Path, help="also write the chart to this file")
    p.add_argument("--json", action="store_true", help="print the figures as JSON (field names in the README)")
    p.set_defaults(handler=_digest, send=False)


def _digest(args: argparse.Namespace, store: Store) -> int:
    due = _which(args, store)
    if not args.send:
        rendered = preview_digest(store, due)
        figures, text, chart = rendered.figures, rendered.slack_text, rendered.chart_png
    else:
        recorded = find_digest(store, due.kind, due.period)
        if recorded is None:
            made = make_digest(store, due, actor=CLI_ACTOR)
            recorded = made or find_digest(store, due.kind, due.period)
            what = "made and queued for sending"
        else:
            recorded = resend_digest(store, recorded.id, emails=store.settings.digest_emails, actor=CLI_ACTOR)
            what = "queued for sending again"
        assert recorded is not None
        if not store.settings.digest_channel and not store.settings.digest_emails:
            what += " (nowhere to send it: set SUPPORTDESK_DIGEST_CHANNEL or SUPPORTDESK_DIGEST_EMAILS)"
        print(f"{due.kind} digest {due.period} {what}", file=sys.stderr if args.json else sys.stdout)
        figures, text, chart = recorded.figures, recorded.slack_text, recorded.chart_png
    if args.chart is not None:
        try:
            args.chart.write_bytes(chart)
        except OSError as exc:
            raise InvalidInput(f"cannot write the chart to {args.chart}: {exc.strerror}") from exc
    if args.json:
        output.emit_json(figures)
    elif not args.send:
        print(text, end="")
    return 0


def _which(args: argparse.Namespace, store: Store) -> DueDigest:
    if args.date is None:
        daily, weekly = due_digests(store.clock.now(), store.settings.tz, store.settings.digest_time)
        return daily if args.kind == "daily" else weekly
    day = parse_day(args.date)
    return DueDigest("daily", day) if args.kind == "daily" else DueDigest("weekly", monday_of(day))
