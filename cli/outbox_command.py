"""``supportdesk outbox list`` and ``supportdesk outbox retry``: notifications that wait, went out or failed.

This module only reads arguments and prints; what a row says and how a retry
changes it is decided in :mod:`core.services.outbox`, the one writer of
delivery state.
"""

from __future__ import annotations

import argparse
from typing import Any

from cli import output
from core.errors import InvalidInput
from core.services.outbox import OUTBOX_CHANNELS, OutboxRowView, list_outbox, retry_outbox_row
from core.store import Store


def register(top: Any) -> None:
    """Add ``outbox`` to the ``supportdesk`` command."""
    group = top.add_parser("outbox", help="notifications waiting to go out or failed: list them, retry one")
    actions = group.add_subparsers(title="outbox commands", metavar="ACTION", required=True)

    about = "outbox rows, newest first; by default every row not sent yet (pending and failed)"
    p = actions.add_parser("list", help=about, description=about[0].upper() + about[1:] + ".")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--failed", dest="status", action="store_const", const="failed",
                       help="only rows given up on, with their error")
    which.add_argument("--pending", dest="status", action="store_const", const="pending",
                       help="only rows still to be delivered (due, leased or waiting to be retried)")
    which.add_argument("--sent", dest="status", action="store_const", const="sent", help="only rows delivered")
    p.add_argument("--channel", choices=OUTBOX_CHANNELS, help="only e-mail or only Slack rows")
    p.add_argument("--limit", type=int, default=100, metavar="N", help="at most N rows (default 100)")
    p.add_argument("--json", action="store_true", help="print JSON (stable field names; see README)")
    p.set_defaults(handler=_list, status=None)

    about = "send a failed row (or one waiting for a later attempt) again, now, with fresh attempts"
    p = actions.add_parser("retry", help=about, description=about[0].upper() + about[1:] + ".")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--as", dest="actor", required=True, metavar="SLACK_USER_ID",
                   help="the agent doing this, by Slack user id")
    p.add_argument("--json", action="store_true", help="print the row as JSON")
    p.set_defaults(handler=_retry)


def _list(args: argparse.Namespace, store: Store) -> int:
    if args.limit < 1:
        raise InvalidInput("--limit must be at least 1")
    rows = list_outbox(store, status=args.status, channel=args.channel, limit=args.limit)
    if args.json:
        output.emit_json([r.to_json() for r in rows])
    elif not rows:
        print("nothing waiting or failed in the outbox (delivered rows: --sent)" if args.status is None
              else "no outbox rows match")
    else:
        output.table(
            ("ID", "CHANNEL", "TOPIC", "STATUS", "REQUEST", "ATTEMPTS", "CREATED", "NEXT ATTEMPT", "ERROR"),
            (
                (str(r.id), r.channel, r.topic, r.status, r.request_key or "-", str(r.attempts),
                 output.when(r.created_at), "-" if r.status != "pending" else output.when(r.next_attempt_at),
                 output.short(" ".join((r.last_error or "-").split()), 60))
                for r in rows
            ),
        )
    return 0


def _retry(args: argparse.Namespace, store: Store) -> int:
    row = retry_outbox_row(store, args.id, actor=args.actor)
    if args.json:
        output.emit_json(row.to_json())
    else:
        print(f"outbox row {row.id} ({_describe(row)}) is pending again and due now, attempts reset; "
              f"the delivery worker of `supportdesk serve` sends it on its next round")
    return 0


def _describe(row: OutboxRowView) -> str:
    what = f"{row.channel} {row.topic}"
    return f"{what} for {row.request_key}" if row.request_key else what
