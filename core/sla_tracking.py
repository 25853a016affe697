"""Keeping a request's stored SLA columns true, and recording crossings once.

The unit of work calls :func:`refresh` for every request a transaction
touched, so no service can forget to move a due time. The timeline comes from
the request's own audit events (status changes, messages), which are the
record of what happened; the clocks are the pure functions of ``core.sla``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.lifecycle import Status
from core.models import Event, Request, SlaCrossing
from core.sla import Interval, Policy, SlaConfig, TargetClock, Timeline, clocks, next_check, thresholds

PAUSING = frozenset({Status.WAITING_ON_CUSTOMER.value, Status.RESOLVED.value, Status.CLOSED.value})
INBOUND_KINDS = frozenset({"message.inbound", "request.customer_replied"})
OUTBOUND_KINDS = frozenset({"message.outbound"})

EventRow = tuple[str, str, datetime]  # kind, data (JSON text), created_at


def build_timeline(request: Request, events: Sequence[EventRow]) -> Timeline:
    """Pauses and the next-reply start, read from the request's events in order."""
    pauses: list[Interval] = []
    paused_since: datetime | None = None
    answered_once = False
    unanswered_since: datetime | None = None
    last_cycle: tuple[datetime, datetime] | None = None
    for kind, data_text, at in events:
        data = json.loads(data_text)
        status = data.get("status") if isinstance(data, dict) else None
        if isinstance(status, dict):
            before, after = status.get("from"), status.get("to")
            if after in PAUSING and before not in PAUSING:
                paused_since = at
            elif before in PAUSING and after not in PAUSING and paused_since is not None:
                pauses.append((paused_since, at))
                paused_since = None
        if kind in OUTBOUND_KINDS:
            if unanswered_since is not None:
                last_cycle = (unanswered_since, at)
            answered_once, unanswered_since = True, None
        elif kind in INBOUND_KINDS and answered_once and unanswered_since is None:
            unanswered_since = at
    if paused_since is not None:
        pauses.append((paused_since, None))
    return Timeline(
        created_at=request.created_at,
        pauses=tuple(pauses),
        first_response_at=request.first_response_at,
        resolved_at=request.resolved_at,
        next_reply_started_at=unanswered_since,
        last_reply_cycle=last_cycle,
    )


def load_events(session: Session, request_ids: Iterable[int]) -> dict[int, list[EventRow]]:
    ids = list(request_ids)
    rows: dict[int, list[EventRow]] = defaultdict(list)
    if not ids:
        return rows
    for request_id, kind, data, created_at in session.execute(
        select(Event.request_id, Event.kind, Event.data, Event.created_at)
        .where(Event.request_id.in_(ids))
        .order_by(Event.request_id, Event.seq)
    ):
        rows[request_id].append((kind, data, created_at))
    return rows


def load_recorded(session: Session, request_ids: Iterable[int]) -> dict[int, set[tuple[str, str, datetime]]]:
    ids = list(request_ids)
    recorded: dict[int, set[tuple[str, str, datetime]]] = defaultdict(set)
    if not ids:
        return recorded
    for request_id, target, threshold, cycle in session.execute(
        select(SlaCrossing.request_id, SlaCrossing.target, SlaCrossing.threshold, SlaCrossing.cycle_started_at)
        .where(SlaCrossing.request_id.in_(ids))
    ):
        recorded[request_id].add((target, threshold, cycle))
    return recorded


def policy_of(config: SlaConfig, request: Request) -> Policy:
    return config.policy_for(request.category, request.priority)


def current_clocks(config: SlaConfig, request: Request, events: Sequence[EventRow],
                   now: datetime) -> dict[str, TargetClock]:
    return clocks(build_timeline(request, events), policy_of(config, request), now, config.warning_ratio)


def apply(request: Request, policy: Policy, all_clocks: dict[str, TargetClock],
          recorded: set[tuple[str, str, datetime]]) -> None:
    """Write the clocks into the request's indexed columns.

    Only the columns whose value changes are set: setting one, even to the
    value it has, marks the request changed, and the unit of work then runs
    a flush of its own for nothing (most changes move no due time).
    """
    first, resolution, following = (all_clocks["first_response"], all_clocks["resolution"],
                                    all_clocks.get("next_reply"))
    columns = {
        "sla_policy": policy.name,
        "first_response_due_at": first.due_at,
        "resolution_due_at": resolution.due_at,
        "next_reply_started_at": following.started_at if following else None,
        "next_reply_due_at": following.due_at if following else None,
        "first_response_business_seconds": round(first.elapsed_business_seconds) if first.met_at else None,
        "resolution_business_seconds": round(resolution.elapsed_business_seconds) if resolution.met_at else None,
        "sla_next_check_at": None if request.status == Status.CLOSED else next_check(all_clocks, recorded),
    }
    for column, value in columns.items():
        if getattr(request, column) != value:
            setattr(request, column, value)


def refresh(session: Session, config: SlaConfig, requests: Sequence[Request], now: datetime,
            pending: dict[int, list[EventRow]] | None = None) -> None:
    """Recompute the stored SLA columns of these requests (after their changes were flushed).

    ``pending`` holds the events this transaction is about to append, which
    the database does not have yet.
    """
    if not requests:
        return
    ids = [r.id for r in requests]
    events, recorded = load_events(session, ids), load_recorded(session, ids)
    # The clocks are a pure function of policy and timeline, and the requests a
    # batch of mail opens share both: each pair is computed once.
    computed: dict[tuple[Policy, Timeline], dict[str, TargetClock]] = {}
    for request in requests:
        history = events[request.id] + (pending or {}).get(request.id, [])
        policy, timeline = policy_of(config, request), build_timeline(request, history)
        all_clocks = computed.get((policy, timeline))
        if all_clocks is None:
            all_clocks = computed[policy, timeline] = clocks(timeline, policy, now, config.warning_ratio)
        apply(request, policy, all_clocks, recorded[request.id])


def due_crossings(all_clocks: dict[str, TargetClock], recorded: set[tuple[str, str, datetime]],
                  now: datetime) -> list[tuple[TargetClock, str, datetime]]:
    """Thresholds of running clocks reached by ``now`` and not recorded yet, oldest first."""
    found = [
        (c, name, moment)
        for c in all_clocks.values()
        for name, moment in thresholds(c)
        if moment <= now and (c.target, name, c.started_at) not in recorded
    ]
    return sorted(found, key=lambda item: item[2])
