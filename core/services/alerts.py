"""SLA alerts in Slack: what each one says now, and where it was posted.

The sweep records each crossing once (``core.services.sla``); its event
queues one ``sla_alert`` outbox row, and the Slack delivery posts the alert
from :func:`alert_view`, then records where with :func:`record_alert_place`.
Afterwards every change to the request (which redraws its card anyway)
redraws its alerts from the same view: "met", "paused", a new assignee. A
digest of the text is kept, so an alert whose text did not change is not
updated, and a crossing's alert is never posted twice (the crossing id is
the key).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import sla_tracking
from core.errors import NotFound
from core.lifecycle import Status
from core.models import Agent, Request, SlaCrossing, SlackAlert, SlackCard
from core.services.common import parse_key
from core.services.slack_state import CardPlace
from core.sla import TargetClock
from core.store import Store

# How the alert describes its target now.
ALERT_STATES = ("running", "paused", "met", "ended")


@dataclass(frozen=True)
class AlertView:
    crossing_id: int
    request_key: str
    subject: str
    priority: str
    request_status: str
    target: str  # first_response, next_reply, resolution
    threshold: str  # warning, breach
    due_at: datetime
    crossed_at: datetime
    state: str  # one of ALERT_STATES
    met_at: datetime | None
    assignee: str | None  # Slack user id
    managers: tuple[str, ...]  # Slack user ids of the active managers
    card: CardPlace | None  # the request's triage card
    place: CardPlace | None  # this alert, once posted
    text_sha256: str | None  # of the text it was last posted or updated with


def alert_view(store: Store, crossing_id: int, now: datetime | None = None) -> AlertView:
    moment = now or store.clock.now()
    with store.read() as session:
        crossing = session.get(SlaCrossing, crossing_id)
        if crossing is None:
            raise NotFound(f"there is no SLA crossing {crossing_id}")
        return _views(store, session, [crossing], moment)[0]


def alerts_of_request(store: Store, key: str, now: datetime | None = None) -> list[AlertView]:
    """Every posted alert of the request, as it should read now."""
    moment = now or store.clock.now()
    with store.read() as session:
        crossings = list(session.execute(
            select(SlaCrossing).join(SlackAlert, SlackAlert.crossing_id == SlaCrossing.id)
            .join(Request, Request.id == SlaCrossing.request_id)
            .where(Request.number == parse_key(key)).order_by(SlaCrossing.id)
        ).scalars())
        return _views(store, session, crossings, moment) if crossings else []


def record_alert_place(store: Store, crossing_id: int, place: CardPlace, text: str) -> CardPlace:
    """Remember where the crossing's alert was posted; the first post recorded wins and is returned."""
    with store.unit_of_work() as uow:
        existing = uow.session.get(SlackAlert, crossing_id, with_for_update=True)
        if existing is not None:
            winner = CardPlace(existing.channel, existing.ts)
        else:
            crossing = uow.session.get(SlaCrossing, crossing_id)
            if crossing is None:
                raise NotFound(f"there is no SLA crossing {crossing_id}")
            uow.session.add(SlackAlert(crossing_id=crossing_id, request_id=crossing.request_id, channel=place.channel,
                                       ts=place.ts, text_sha256=text_digest(text), posted_at=uow.now,
                                       updated_at=uow.now))
            winner = place
        uow.commit()
        return winner


def record_alert_text(store: Store, crossing_id: int, text: str) -> None:
    """The alert now says ``text``."""
    with store.unit_of_work() as uow:
        row = uow.session.get(SlackAlert, crossing_id, with_for_update=True)
        if row is None:
            raise NotFound(f"the alert of SLA crossing {crossing_id} was never posted")
        row.text_sha256, row.updated_at = text_digest(text), uow.now
        uow.commit()


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _views(store: Store, session: Session, crossings: list[SlaCrossing], now: datetime) -> list[AlertView]:
    """One request's crossings (the callers never mix requests), drawn from its clocks at ``now``."""
    request = crossings[0].request
    events = sla_tracking.load_events(session, [request.id])[request.id]
    clocks = sla_tracking.current_clocks(store.sla_config, request, events, now)
    managers = tuple(sorted(
        a.slack_user_id for a in session.execute(select(Agent).where(Agent.active.is_(True))).scalars()
        if "manager" in a.role_set and a.slack_user_id
    ))
    card = session.execute(
        select(SlackCard).where(SlackCard.kind == "request", SlackCard.request_id == request.id)
    ).scalar_one_or_none()
    views = []
    for crossing in crossings:
        posted = session.get(SlackAlert, crossing.id)
        clock = clocks.get(crossing.target)
        state, met_at = _state(clock, crossing, request)
        views.append(AlertView(
            crossing_id=crossing.id, request_key=request.key, subject=request.subject, priority=request.priority,
            request_status=request.status, target=crossing.target, threshold=crossing.threshold,
            due_at=crossing.due_at, crossed_at=crossing.crossed_at, state=state, met_at=met_at,
            assignee=request.assignee.slack_user_id if request.assignee else None, managers=managers,
            card=CardPlace(card.channel, card.ts) if card is not None else None,
            place=CardPlace(posted.channel, posted.ts) if posted is not None else None,
            text_sha256=posted.text_sha256 if posted is not None else None,
        ))
    return views


def _state(clock: TargetClock | None, crossing: SlaCrossing,
           request: Request) -> tuple[str, datetime | None]:
    """Where the crossed target stands now: still running, paused, met (when), or ended (closed, a new cycle)."""
    if clock is None or clock.started_at != crossing.cycle_started_at:
        # A next-reply cycle that a reply closed (a new one may have begun since).
        if crossing.target == "next_reply" and request.first_response_at is not None:
            return "met", None
        return "ended", None
    if clock.state == "met":
        return "met", clock.met_at
    if request.status in (Status.RESOLVED.value, Status.CLOSED.value):
        return "ended", None  # resolved or closed without meeting this target (dismissed, merged)
    if request.status == Status.WAITING_ON_CUSTOMER.value or clock.state == "paused":
        return "paused", None
    return "running", None

