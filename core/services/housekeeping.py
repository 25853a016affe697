"""The scheduler's housekeeping: closing requests resolved long ago, and reminding customers we wait for.

Each request is handled in its own transaction with its own event, like any
other change, and each is decided again under the request's lock, so an
agent reopening a request at the same moment wins and nothing is closed or
reminded twice.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from sqlalchemy import exists, select

from core.lifecycle import Action, Status
from core.models import Event, Request
from core.store import Store
from core.services.workflow import transition
from core.views import iso

SYSTEM_ACTOR = "system:scheduler"
BATCH = 200


def close_resolved(store: Store, *, after_days: int, now: datetime | None = None, limit: int = BATCH) -> list[str]:
    """Close up to ``limit`` requests resolved at least ``after_days`` days ago; their keys.

    A customer reply to a resolved request reopens it; to a closed one it
    opens a new request. Closing therefore ends the window in which a reply
    still counts as "this did not fix it".
    """
    moment = now or store.clock.now()
    cutoff = moment - timedelta(days=after_days)
    with store.read() as session:
        ids = list(session.execute(
            # No ORDER BY: the rows come through the status index and the query stops at ``limit``,
            # instead of sorting every resolved request of the store first.
            select(Request.id).where(Request.status == Status.RESOLVED.value, Request.resolved_at <= cutoff)
            .limit(limit)
        ).scalars())
    closed = []
    for request_id in ids:
        with store.unit_of_work() as uow:
            request = uow.lock_request(request_id)
            if request.status != Status.RESOLVED.value or request.resolved_at is None or request.resolved_at > cutoff:
                continue  # reopened, or resolved again, since it was picked
            transition(uow, request, Action.CLOSE, SYSTEM_ACTOR, "request.closed",
                       {"automatic": True, "resolved_at": iso(request.resolved_at), "after_days": after_days})
            request.closed_at = uow.now
            uow.commit()
            closed.append(request.key)
    return closed


def remind_waiting(store: Store, *, after_days: int, now: datetime | None = None, limit: int = BATCH) -> list[str]:
    """Remind the customer of each request waiting on them for ``after_days`` days, once per wait; the keys.

    "Waiting" is in ``waiting_on_customer`` with no change to the request
    for that long. The reminder is a ``request.reminded`` event, whose e-mail
    the outbox sends; a request is reminded again only after it has stopped
    waiting and started again.
    """
    moment = now or store.clock.now()
    cutoff = moment - timedelta(days=after_days)
    with store.read() as session:
        reminded_since_change = exists().where(
            Event.request_id == Request.id, Event.kind == "request.reminded", Event.created_at >= Request.updated_at)
        ids = list(session.execute(
            select(Request.id).where(Request.status == Status.WAITING_ON_CUSTOMER.value, Request.updated_at <= cutoff,
                                     ~reminded_since_change)
            .order_by(Request.updated_at, Request.id).limit(limit)
        ).scalars())
    reminded = []
    for request_id in ids:
        with store.unit_of_work() as uow:
            request = uow.lock_request(request_id)
            if request.status != Status.WAITING_ON_CUSTOMER.value:
                continue
            since, already = _waiting_since(uow.session, request.id)
            if already or since is None or since > cutoff:
                continue
            uow.record("request.reminded", actor=SYSTEM_ACTOR, request=request,
                       data={"waiting_since": iso(since), "after_days": after_days})
            uow.commit()
            reminded.append(request.key)
    return reminded


def _waiting_since(session: object, request_id: int) -> tuple[datetime | None, bool]:
    """When the request's current wait began, and whether it was reminded since."""
    events = session.execute(  # type: ignore[attr-defined]
        select(Event.kind, Event.data, Event.created_at).where(Event.request_id == request_id)
        .order_by(Event.seq.desc()).limit(200)
    ).all()
    reminded = False
    for kind, data, created_at in events:
        if kind == "request.reminded":
            reminded = True
            continue
        status = json.loads(data).get("status")
        if isinstance(status, dict) and status.get("to") == Status.WAITING_ON_CUSTOMER.value:
            return created_at, reminded
    return None, reminded
