"""Digests as records: made once per kind and period, sent through the outbox, re-sent on request.

The figures and their rendering are made outside any transaction (they read
a lot and draw a chart); :func:`record_digest` then stores the result and
its ``digest.made`` event in one transaction, and the outbox rows that post
it to Slack and mail it follow from that event. The unique key on (kind,
period) makes the digest once-only: a second process, or the same one after
a restart, that made the same digest finds it recorded and sends nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.errors import InvalidInput, NotFound
from core.models import Digest
from core.services.common import check_email
from core.store import Store
from core.views import iso


@dataclass(frozen=True)
class RenderedDigest:
    """A digest ready to send: what Slack and e-mail show, the chart, and the figures behind them."""

    kind: str
    period: str
    since: datetime
    until: datetime
    figures: dict[str, Any]
    slack_text: str
    email_subject: str
    email_text: str
    chart_png: bytes


@dataclass(frozen=True)
class DigestView(RenderedDigest):
    """A recorded digest: what was rendered, when and by whom, and how far posting it to Slack got."""

    id: int
    created_at: datetime
    created_by: str
    slack_channel: str | None
    slack_ts: str | None
    chart_file_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "period": self.period, "since": iso(self.since),
            "until": iso(self.until), "created_at": iso(self.created_at), "created_by": self.created_by,
            "slack": {"channel": self.slack_channel, "ts": self.slack_ts, "chart_file_id": self.chart_file_id},
            "figures": self.figures,
        }

    @classmethod
    def of(cls, row: Digest) -> DigestView:
        return cls(
            kind=row.kind, period=row.period, since=row.since, until=row.until, figures=json.loads(row.figures),
            slack_text=row.slack_text, email_subject=row.email_subject, email_text=row.email_text,
            chart_png=row.chart_png, id=row.id, created_at=row.created_at, created_by=row.created_by,
            slack_channel=row.slack_channel, slack_ts=row.slack_ts, chart_file_id=row.chart_file_id,
        )


def find_digest(store: Store, kind: str, period: str) -> DigestView | None:
    with store.read() as session:
        row = session.execute(select(Digest).where(Digest.kind == kind, Digest.period == period)).scalar_one_or_none()
        return DigestView.of(row) if row is not None else None


def get_digest(store: Store, digest_id: int) -> DigestView:
    with store.read() as session:
        row = session.get(Digest, digest_id)
        if row is None:
            raise NotFound(f"there is no digest {digest_id}")
        return DigestView.of(row)


def record_digest(store: Store, digest: RenderedDigest, *, emails: tuple[str, ...], actor: str) -> DigestView | None:
    """Store a digest and queue its delivery; None when this kind and period is recorded already.

    Slack gets it when the digest channel is set; each address in ``emails``
    gets a copy. Both follow from the ``digest.made`` event, in this transaction.
    """
    addresses = tuple(check_email(a, "digest address") for a in emails)
    try:
        with store.unit_of_work() as uow:
            row = Digest(
                kind=digest.kind, period=digest.period, since=digest.since, until=digest.until,
                figures=json.dumps(digest.figures, sort_keys=True), slack_text=digest.slack_text,
                email_subject=digest.email_subject,
                email_text=digest.email_text, chart_png=digest.chart_png, created_at=uow.now, created_by=actor,
            )
            uow.session.add(row)
            uow.session.flush()  # the unique key answers here, before anything else is written
            uow.record("digest.made", actor=actor, request=None, ids={"digest_id": row},
                       data=_delivery_data(store, digest.kind, digest.period, addresses))
            uow.commit()
            return DigestView.of(row)
    except IntegrityError:
        if find_digest(store, digest.kind, digest.period) is None:
            raise
        return None


def resend_digest(store: Store, digest_id: int, *, emails: tuple[str, ...], actor: str) -> DigestView:
    """Send a recorded digest again, as it was: a new Slack post (not an edit) and the e-mail copies."""
    addresses = tuple(check_email(a, "digest address") for a in emails)
    with store.unit_of_work() as uow:
        row = uow.session.get(Digest, digest_id, with_for_update=True)
        if row is None:
            raise NotFound(f"there is no digest {digest_id}")
        data = _delivery_data(store, row.kind, row.period, addresses)
        if not data["slack"] and not addresses:
            raise InvalidInput("nowhere to send it: SUPPORTDESK_DIGEST_CHANNEL (with Slack) and "
                               "SUPPORTDESK_DIGEST_EMAILS are both unset")
        row.slack_channel = row.slack_ts = row.chart_file_id = None  # posted afresh
        uow.record("digest.resent", actor=actor, request=None, data={**data, "digest_id": row.id})
        uow.commit()
        return DigestView.of(row)


def record_digest_post(store: Store, digest_id: int, *, channel: str, ts: str) -> None:
    """The digest's message is in Slack: a retried delivery then only uploads the chart."""
    with store.unit_of_work() as uow:
        row = _row(uow.session, digest_id)
        row.slack_channel, row.slack_ts = channel, ts
        uow.commit()


def record_digest_chart(store: Store, digest_id: int, *, file_id: str) -> None:
    with store.unit_of_work() as uow:
        _row(uow.session, digest_id).chart_file_id = file_id
        uow.commit()


def _row(session: Any, digest_id: int) -> Digest:
    row = session.get(Digest, digest_id, with_for_update=True)
    if row is None:
        raise NotFound(f"there is no digest {digest_id}")
    return row


def _delivery_data(store: Store, kind: str, period: str, emails: tuple[str, ...]) -> dict[str, Any]:
    slack = bool(store.slack_enabled and store.settings.digest_channel)
    return {"kind": kind, "period": period, "slack": slack, "emails": list(emails)}
