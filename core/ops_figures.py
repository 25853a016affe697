"""What the store says about the health of the desk right now, for ``serve``'s metrics endpoint.

Read-only and cheap, because a monitoring system asks every few seconds:
each figure is one aggregate over an index whose leading column is a status
(``inbound_mail.status``, ``outbox.status``, ``requests.status``) or a due
time (the open SLA breaches, :func:`core.metrics.open_breaches`), so the
rows read are the rows counted: mail waiting or quarantined, notifications
not yet delivered, open requests and their breaches; never the delivered
or closed history. All figures come from one read transaction (on SQLite one
snapshot; on PostgreSQL each statement sees what was committed when it ran,
which for gauges read a few milliseconds apart is close enough).

Every label a figure can have is present (zero when nothing is there): a
series that vanishes when its count drops to zero cannot be told apart from
a scrape that failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from sqlalchemy import Select, func, select

from core.metrics import OPEN_STATES, open_breaches
from core.models import OutboxMessage, ReceivedMail, Request
from core.services.mail_intake import QUARANTINE_REASONS
from core.store import Store

OUTBOX_CHANNELS = ("email", "slack")
UNDELIVERED = ("pending", "failed")
# open_breaches' targets 1, 2, 3, by name.
BREACH_TARGETS = {1: "first_response", 2: "next_reply", 3: "resolution"}


@dataclass(frozen=True)
class StoreFigures:
    """The store's figures at ``at``; mappings are keyed by every label value, zeros included."""

    at: datetime
    mail_waiting: int  # accepted mail the processor has not filed yet
    mail_quarantined: Mapping[str, int]  # reason -> messages in quarantine now (released ones are not)
    outbox: Mapping[tuple[str, str], int]  # (channel, "pending" | "failed") -> rows
    # channel -> how long its most overdue row has been due and not delivered (rows waiting out a retry back-off,
    # held for business hours or leased by a worker are not due), 0 when none: how far behind delivery is
    overdue_seconds: Mapping[str, float]
    open_breaches: Mapping[str, int]  # first_response | next_reply | resolution -> targets past due now
    open_requests: Mapping[str, int]  # status -> requests not resolved or closed


def read_store_figures(store: Store, now: datetime | None = None) -> StoreFigures:
    """Every figure in one read transaction; raises ``StoreUnavailable`` when the store does not answer."""
    now = now or store.clock.now()
    with store.read() as session:
        waiting = session.execute(
            select(func.count()).select_from(ReceivedMail).where(ReceivedMail.status == "received")).scalar_one()
        quarantined = dict(session.execute(
            select(ReceivedMail.reason, func.count()).where(ReceivedMail.status == "quarantined")
            .group_by(ReceivedMail.reason)).all())
        outbox_rows = session.execute(
            select(OutboxMessage.channel, OutboxMessage.status, func.count())
            .where(OutboxMessage.status.in_(UNDELIVERED))
            .group_by(OutboxMessage.channel, OutboxMessage.status)).all()
        first_due = dict(session.execute(
            select(OutboxMessage.channel, func.min(OutboxMessage.next_attempt_at))
            .where(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now)
            .group_by(OutboxMessage.channel)).all())
        breach_counts = {target: session.execute(select(func.count()).select_from(branch.subquery())).scalar_one()
                         for target, branch in _breach_branches(now)}
        requests = dict(session.execute(
            select(Request.status, func.count()).where(Request.status.in_(OPEN_STATES))
            .group_by(Request.status)).all())
    outbox = {(channel, status): 0 for channel in OUTBOX_CHANNELS for status in UNDELIVERED}
    for channel, status, count in outbox_rows:
        outbox[(channel, status)] = int(count)
    overdue = {channel: max(0.0, (now - first_due[channel]).total_seconds()) if first_due.get(channel) else 0.0
               for channel in OUTBOX_CHANNELS}
    return StoreFigures(
        at=now,
        mail_waiting=int(waiting),
        mail_quarantined={**dict.fromkeys(QUARANTINE_REASONS, 0),
                          **{str(reason or "unknown"): int(n) for reason, n in quarantined.items()}},
        outbox=outbox,
        overdue_seconds=overdue,
        open_breaches={name: int(breach_counts[target]) for target, name in BREACH_TARGETS.items()},
        open_requests={status: int(requests.get(status, 0)) for status in OPEN_STATES},
    )


def _breach_branches(now: datetime) -> list[tuple[int, Select[Any]]]:
    """:func:`core.metrics.open_breaches`' three selects, one per target, each counted on its own.

    Counting each over its own index is three to five times faster than
    grouping the union (SQLite: 240 ms instead of 740-1,300 ms over a
    million open requests nearly all past due); the definitions stay theirs.
    """
    selects = open_breaches(now).element.selects  # type: ignore[attr-defined]
    if len(selects) != len(BREACH_TARGETS):
        raise RuntimeError(f"open_breaches has {len(selects)} parts; expected one per target {BREACH_TARGETS}")
    return list(zip(BREACH_TARGETS, selects))
