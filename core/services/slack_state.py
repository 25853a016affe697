"""What the Slack app must remember between requests: where its cards are, which events it has handled.

Both are delivery bookkeeping, like the outbox's own state: they record what
Slack was told or sent, not a change to a request, so they carry no audit
event. Each function is one short transaction.

Cards: the first delivery of a request's triage card posts it and records
its channel and timestamp here; every later change updates that message in
place. An approval's card likewise.

Events: Slack delivers an Events API event at least once and retries when
an answer is slow, possibly to another instance. :func:`first_sighting`
claims an ``event_id`` with an insert that only one caller can win, so the
event is acted on once however many copies arrive and wherever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import bindparam, delete, select, text

from core.errors import InvalidInput
from core.models import Request, SlackCard, SlackEvent
from core.services.common import request_id_in
from core.store import Store, translate_store_errors

MAX_EVENT_ID = 64


@dataclass(frozen=True)
class CardPlace:
    """Where a card was posted: a channel id and the message timestamp Slack gave it."""

    channel: str
    ts: str


def request_card_place(store: Store, key: str) -> CardPlace | None:
    """The request's triage card, or None while it has not been posted."""
    with store.read() as session:
        request_id = request_id_in(session, key)
        row = session.execute(
            select(SlackCard).where(SlackCard.kind == "request", SlackCard.request_id == request_id)
        ).scalar_one_or_none()
        return CardPlace(row.channel, row.ts) if row is not None else None


def request_of_card(store: Store, place: CardPlace) -> str | None:
    """The key of the request whose triage card is at ``place`` (a thread's parent), or None."""
    with store.read() as session:
        number = session.execute(
            select(Request.number)
            .join(SlackCard, SlackCard.request_id == Request.id)
            .where(SlackCard.kind == "request", SlackCard.channel == place.channel, SlackCard.ts == place.ts)
        ).scalar_one_or_none()
        return f"SR-{number}" if number is not None else None


def approval_card_place(store: Store, approval_id: int) -> CardPlace | None:
    """The approval's card, or None while it has not been posted."""
    with store.read() as session:
        row = session.execute(select(SlackCard).where(SlackCard.approval_id == approval_id)).scalar_one_or_none()
        return CardPlace(row.channel, row.ts) if row is not None else None


def record_request_card(store: Store, key: str, place: CardPlace) -> CardPlace:
    """Remember where a request's triage card was posted; the first post recorded wins and is returned.

    Two deliveries racing to post the same card (a lease that ran out) both
    post; the second learns here that a card exists and should delete or
    ignore its own. Returning the winner lets the caller tell.
    """
    _check_place(place)
    with store.unit_of_work() as uow:
        request_id = request_id_in(uow.session, key)
        existing = uow.session.execute(
            select(SlackCard).where(SlackCard.kind == "request", SlackCard.request_id == request_id)
        ).scalar_one_or_none()
        if existing is not None:
            existing.updated_at = uow.now
            winner = CardPlace(existing.channel, existing.ts)
        else:
            uow.session.add(SlackCard(kind="request", request_id=request_id, channel=place.channel, ts=place.ts,
                                      posted_at=uow.now, updated_at=uow.now))
            winner = place
        uow.commit()
        return winner


def record_approval_card(store: Store, approval_id: int, request_key: str, place: CardPlace) -> CardPlace:
    """Remember where an approval's card was posted; the first post recorded wins and is returned."""
    _check_place(place)
    with store.unit_of_work() as uow:
        request_id = request_id_in(uow.session, request_key)
        existing = uow.session.execute(
            select(SlackCard).where(SlackCard.approval_id == approval_id)
        ).scalar_one_or_none()
        if existing is not None:
            existing.updated_at = uow.now
            winner = CardPlace(existing.channel, existing.ts)
        else:
            uow.session.add(SlackCard(kind="approval", request_id=request_id, approval_id=approval_id,
                                      channel=place.channel, ts=place.ts, posted_at=uow.now, updated_at=uow.now))
            winner = place
        uow.commit()
        return winner


def first_sighting(store: Store, event_id: str) -> bool:
    """Claim ``event_id``: True for the one caller that sees it first, False for every repeat.

    One INSERT that does nothing on a conflict: the database decides, so
    two instances receiving the same retry at the same moment cannot both
    win.
    """
    event_id = (event_id or "").strip()
    if not event_id or len(event_id) > MAX_EVENT_ID:
        raise InvalidInput(f"a Slack event_id must be 1 to {MAX_EVENT_ID} characters")
    now = store.clock.now()
    with translate_store_errors(), store.engine.begin() as connection:
        inserted = connection.execute(_CLAIM_EVENT, {"event_id": event_id, "received_at": now}).rowcount
    return inserted == 1


def forget_events_before(store: Store, days: int = 7) -> int:
    """Drop handled event ids older than ``days`` (Slack stops retrying after minutes); returns how many."""
    cutoff = store.clock.now() - timedelta(days=days)
    with translate_store_errors(), store.engine.begin() as connection:
        return connection.execute(delete(SlackEvent).where(SlackEvent.received_at < cutoff)).rowcount


_CLAIM_EVENT = text(
    "INSERT INTO slack_events (event_id, received_at) VALUES (:event_id, :received_at)"
    " ON CONFLICT (event_id) DO NOTHING"
).bindparams(*(bindparam(name, type_=SlackEvent.__table__.c[name].type) for name in ("event_id", "received_at")))




def _check_place(place: CardPlace) -> None:
    if not place.channel or not place.ts or len(place.channel) > 32 or len(place.ts) > 32:
        raise InvalidInput(f"not a Slack message place: channel {place.channel!r}, ts {place.ts!r}")
