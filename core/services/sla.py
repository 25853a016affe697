"""SLA services: the sweep that records warnings and breaches once, and the explanation of a clock.

The sweep reads only requests whose ``sla_next_check_at`` has come (an index
range scan), so its cost follows the number of requests crossing a threshold,
not the size of the backlog.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from core import sla_tracking
from core.errors import NotFound
from core.models import Request, SlaCrossing
from core.services.common import parse_key
from core.sla import Policy, TargetClock, running_intervals
from core.store import Store
from core.views import iso

SWEEP_BATCH = 500
# A crossing found this soon after business hours ended is still alerted at once (see alert_moment).
ALERT_GRACE = timedelta(minutes=5)
# Every batch moves each request's next check past ``now``, so batches end;
# the bound only guards against a bug turning that into a loop.
MAX_BATCHES = 10_000


@dataclass(frozen=True)
class CrossingView:
    request_key: str
    target: str
    threshold: str
    due_at: datetime
    crossed_at: datetime
    cycle_started_at: datetime
    assignee: str | None
    priority: str

    def to_json(self) -> dict[str, Any]:
        return {
            "request_key": self.request_key, "target": self.target, "threshold": self.threshold,
            "due_at": iso(self.due_at), "crossed_at": iso(self.crossed_at),
            "cycle_started_at": iso(self.cycle_started_at), "assignee": self.assignee, "priority": self.priority,
        }


def sweep(store: Store, now: datetime | None = None, *, batch: int = SWEEP_BATCH) -> list[CrossingView]:
    """Record, exactly once per request, target, threshold and cycle, every crossing due by ``now``.

    Rows are locked with SKIP LOCKED on PostgreSQL, so two sweeps at once
    share the work instead of recording twice; the unique constraint on
    ``sla_crossings`` is the last line of defence.
    """
    moment = now or store.clock.now()
    found: list[CrossingView] = []
    for _ in range(MAX_BATCHES):
        with store.unit_of_work() as uow:
            requests = list(uow.session.execute(
                select(Request)
                .where(Request.sla_next_check_at <= moment)
                .order_by(Request.sla_next_check_at)
                .limit(batch)
                .options(selectinload(Request.assignee))  # named in every crossing: one query, not one each
                .with_for_update(skip_locked=True)
            ).scalars())
            if not requests:
                return found
            ids = [r.id for r in requests]
            events, recorded = sla_tracking.load_events(uow.session, ids), sla_tracking.load_recorded(uow.session, ids)
            for request in requests:
                clocks = sla_tracking.current_clocks(store.sla_config, request, events[request.id], moment)
                done = recorded[request.id]
                policy = sla_tracking.policy_of(store.sla_config, request)
                for clock_, threshold, at in sla_tracking.due_crossings(clocks, done, moment):
                    crossing = SlaCrossing(
                        request=request, target=clock_.target, threshold=threshold,
                        cycle_started_at=clock_.started_at, due_at=clock_.due_at or at, crossed_at=at,
                        recorded_at=uow.now,
                    )
                    uow.session.add(crossing)
                    done.add((clock_.target, threshold, clock_.started_at))
                    uow.record(
                        "sla.warning" if threshold == "warning" else "sla.breached",
                        actor="system:sla", request=request,
                        data={"target": clock_.target, "threshold": threshold, "crossed_at": iso(at),
                              "due_at": iso(clock_.due_at), "policy": request.sla_policy,
                              "alert_at": iso(alert_moment(policy, at, uow.now))},
                        ids={"crossing_id": crossing},
                    )
                    found.append(CrossingView(
                        request.key, clock_.target, threshold, clock_.due_at or at, at, clock_.started_at,
                        request.assignee.slack_user_id if request.assignee else None, request.priority,
                    ))
                # Recording a crossing changes no clock: only the next check moves.
                sla_tracking.apply(request, policy, clocks, done)
                uow.sla_is_fresh(request)
            uow.commit()
        if len(requests) < batch:
            return found
    return found


def alert_moment(policy: Policy, crossed_at: datetime, recorded_at: datetime) -> datetime:
    """When the alert for a crossing may go out. Pure.

    At once for a 24×7 policy (urgent requests, as configured). For a
    business-hours policy, at once if the calendar was open at any moment of
    the last :data:`ALERT_GRACE` before the sweep found it (a due time at
    17:00 found by the 17:00:30 sweep is still told that evening), and
    otherwise at the start of the next business period: a sweep that
    catches up at night, after a restart, holds its alerts for the morning.
    """
    calendar = policy.calendar
    if calendar.always_open:
        return recorded_at
    window_start = max(crossed_at, recorded_at - ALERT_GRACE) - timedelta(seconds=1)
    if calendar.next_open_moment(window_start) <= recorded_at:
        return recorded_at
    return calendar.next_open_moment(recorded_at)


@dataclass(frozen=True)
class TargetExplanation:
    clock: TargetClock
    counted: tuple[tuple[datetime, datetime], ...]  # business intervals that counted
    wall_since_start_seconds: float


@dataclass(frozen=True)
class SlaExplanation:
    key: str
    status: str
    priority: str
    category: str
    policy: Policy
    now: datetime
    targets: tuple[TargetExplanation, ...]

    def to_json(self) -> dict[str, Any]:
        calendar = self.policy.calendar
        return {
            "key": self.key,
            "status": self.status,
            "policy": {
                "name": self.policy.name, "why": self.policy.why,
                "first_response_seconds": self.policy.first_response, "next_reply_seconds": self.policy.next_reply,
                "resolution_seconds": self.policy.resolution,
                "calendar": {"name": calendar.name, "timezone": str(calendar.tz), "hours": calendar.describe_hours(),
                             "holidays": sorted(d.isoformat() for d in calendar.holidays)},
            },
            "now": iso(self.now),
            "targets": [
                {
                    "target": t.clock.target, "state": t.clock.state, "started_at": iso(t.clock.started_at),
                    "target_seconds": t.clock.target_seconds,
                    "business_seconds": round(t.clock.elapsed_business_seconds),
                    "running_wall_seconds": round(t.clock.elapsed_wall_seconds),
                    "wall_seconds": round(t.wall_since_start_seconds),
                    "warn_at": iso(t.clock.warn_at), "due_at": iso(t.clock.due_at), "met_at": iso(t.clock.met_at),
                    "pauses": [{"from": iso(a), "to": iso(b)} for a, b in t.clock.pauses],
                    "counted": [{"from": iso(a), "to": iso(b)} for a, b in t.counted],
                }
                for t in self.targets
            ],
        }


def explain(store: Store, key: str, now: datetime | None = None) -> SlaExplanation:
    """Why a request's clocks say what they say: policy, calendar, pauses, counted intervals, due times."""
    number = parse_key(key)
    moment = now or store.clock.now()
    with store.read() as session:
        request = session.execute(select(Request).where(Request.number == number)).scalar_one_or_none()
        if request is None:
            raise NotFound(f"there is no request SR-{number}")
        events = sla_tracking.load_events(session, [request.id])[request.id]
        policy = sla_tracking.policy_of(store.sla_config, request)
        clocks = sla_tracking.current_clocks(store.sla_config, request, events, moment)
        targets = []
        for name in ("first_response", "next_reply", "resolution"):
            if name not in clocks:
                continue
            c = clocks[name]
            end = c.met_at or moment
            counted = tuple(
                interval
                for lo, hi in running_intervals(c.started_at, end, c.pauses)
                for interval in policy.calendar.open_intervals(lo, hi)
            )
            targets.append(TargetExplanation(c, counted, max(0.0, (end - c.started_at).total_seconds())))
        return SlaExplanation(request.key, request.status, request.priority, request.category, policy, moment,
                              tuple(targets))

