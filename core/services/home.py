"""What one agent's Slack App Home shows: their queue, the approvals they may decide, today's team figures. Reads only.

The Home tab is redrawn every time an agent opens it, so it is one read of a
fixed handful of queries whatever the size of the store: the agent, a page
of their queue and its count, a page of approval candidates (rarely more),
and :func:`core.metrics.compute_metrics` for today. Nothing here writes: looking at the Home tab is not a change.

Three rules keep the Home tab from ever telling an agent something the rest
of supportdesk contradicts:

- An approval is listed only if :mod:`core.authorization` would let this
  agent approve it now: the same checks :func:`core.services.approvals.decide_approval`
  runs at click time (approver role, own currency, within the limit, not on
  a request they asked about, opened or hold, a KYC-verified customer). SQL
  only narrows the candidates to the approver's currency and limit so one
  page is normally enough; the decision for each row is authorization's own.
- An item of the queue is "breached" by the rule of the metrics' open
  breaches (a running due time in the past).
- The team figures are :func:`compute_metrics` for today in the configured
  time zone, exactly what ``supportdesk metrics --json`` prints for that day.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session, joinedload
from sqlalchemy.sql.elements import ColumnElement

from core.authorization import Role, require_can_decide, require_role, require_verified_customer
from core.errors import PermissionDenied
from core.lifecycle import DONE_STATES
from core.metrics import MetricsReport, Period, Rate, compute_metrics, period_from_dates, whole_seconds
from core.models import Agent, Approval, Request, UTCDateTime
from core.store import Store
from core.views import AgentHome, AgentRef, QueueItem, Share, TeamToday, WaitingApproval

QUEUE_SHOWN = 20
APPROVALS_SHOWN = 20
# Candidates read per query; the authorization checks rarely turn any away,
# so the first page nearly always holds everything there is to show.
APPROVAL_PAGE = 100
_OPEN = Request.status.not_in([s.value for s in DONE_STATES])


def agent_home(store: Store, slack_user_id: str) -> AgentHome | None:
    """The Home tab of the active agent with this Slack user id; None for anyone not (or no longer) in the directory."""
    now = store.clock.now()
    today = now.astimezone(store.settings.tz).date()
    period = today_period(store, today)
    with store.read() as session:
        agent = _active_agent(session, slack_user_id)
        ref = AgentRef.of(agent)
        if agent is None or ref is None:
            return None
        queue, queue_total = _queue(session, agent, now)
        decides = _decides_approvals(agent)
        approvals, more = _approvals(session, agent) if decides else ((), False)
    report = compute_metrics(store, period, now=now)
    return AgentHome(agent=ref, as_of=now, queue=queue, queue_total=queue_total, decides_approvals=decides,
                     approvals=approvals, more_approvals=more, today=_team_today(report, today))


def today_period(store: Store, today: date) -> Period:
    """``today`` as a whole day in the configured time zone: what ``metrics --since today --until tomorrow`` reads."""
    return period_from_dates(today, today + timedelta(days=1), store.settings.tz, today)


def _active_agent(session: Session, slack_user_id: str) -> Agent | None:
    return session.execute(
        select(Agent).where(Agent.slack_user_id == (slack_user_id or "").strip(), Agent.active.is_(True))
    ).scalar_one_or_none()


# --- my queue ----------------------------------------------------------------------


def _earlier(first: ColumnElement[Any], second: ColumnElement[Any]) -> ColumnElement[Any]:
    """The earlier of two nullable moments, NULL only when both are (portable LEAST that skips NULLs)."""
    return case((first.is_(None), second), (second.is_(None), first), (first <= second, first), else_=second)


def next_due() -> ColumnElement[datetime]:
    """A request's earliest running SLA due time: the first response while missing, the next reply, the resolution.

    The same three targets the metrics count as open breaches once past.
    """
    first_response = case((Request.first_response_at.is_(None), Request.first_response_due_at), else_=sa.null())
    earliest = _earlier(_earlier(first_response, Request.next_reply_due_at), Request.resolution_due_at)
    return sa.type_coerce(earliest, UTCDateTime())


def _queue(session: Session, agent: Agent, now: datetime) -> tuple[tuple[QueueItem, ...], int]:
    """The agent's open requests, most urgent first, and how many there are.

    Earliest running due time first puts the breached ones first (their due
    time is past), the longest overdue at the top; requests without a running
    due time follow, oldest first.
    """
    mine = (Request.assignee_id == agent.id, _OPEN)
    due = next_due().label("next_due")
    rows = session.execute(
        select(Request, due)
        .options(joinedload(Request.customer))
        .where(*mine)
        .order_by(due.asc().nulls_last(), Request.created_at, Request.id)
        .limit(QUEUE_SHOWN)
    ).all()
    total = session.execute(select(func.count()).select_from(Request).where(*mine)).scalar_one()
    return tuple(_queue_item(request, due_at, now) for request, due_at in rows), int(total)


def _queue_item(request: Request, due_at: datetime | None, now: datetime) -> QueueItem:
    return QueueItem(
        key=request.key,
        subject=request.subject,
        status=request.status,
        priority=request.priority,
        customer_name=request.customer.name if request.customer else None,
        requester=request.requester_email,
        next_due_at=due_at,
        breached=due_at is not None and due_at < now,
        created_at=request.created_at,
    )


# --- approvals waiting for me ------------------------------------------------------


def _decides_approvals(agent: Agent) -> bool:
    """Whether the agent is an active approver: authorization's role check, asked once instead of per approval."""
    try:
        require_role(agent, Role.APPROVER, "decide approvals")
    except PermissionDenied:
        return False
    return True


def may_approve(agent: Agent, approval: Approval) -> bool:
    """Whether ``decide_approval(..., approve=True)`` by this agent would pass every rule now.

    Exactly the checks it runs, in its order, from :mod:`core.authorization`.
    """
    request = approval.request
    try:
        require_can_decide(agent, approval, request)
        require_verified_customer(request, request.customer, f"approve a {approval.kind.replace('_', '-')}")
    except PermissionDenied:
        return False
    return True


def _approvals(session: Session, agent: Agent) -> tuple[tuple[WaitingApproval, ...], bool]:
    """Pending approvals this agent may approve, oldest first, at most a page; and whether more are waiting.

    Reads candidates a page at a time (by id, so each page starts where the
    last ended) until the page is full or the candidates run out.
    """
    found: list[WaitingApproval] = []
    after = 0
    while True:
        page = _candidates(session, agent, after)
        for approval in page:
            if not may_approve(agent, approval):
                continue
            if len(found) == APPROVALS_SHOWN:
                return tuple(found), True
            found.append(_waiting(approval))
        if len(page) < APPROVAL_PAGE:
            return tuple(found), False
        after = page[-1].id


def _candidates(session: Session, agent: Agent, after: int) -> list[Approval]:
    """Pending approvals after id ``after`` in the agent's currency and within their limit, with what the checks read."""
    return list(session.execute(
        select(Approval)
        .options(joinedload(Approval.request).joinedload(Request.customer), joinedload(Approval.requested_by))
        .where(
            Approval.status == "pending",
            Approval.id > after,
            Approval.currency == agent.approval_currency,
            Approval.amount_minor <= agent.approval_limit_minor,
        )
        .order_by(Approval.id)
        .limit(APPROVAL_PAGE)
    ).scalars())


def _waiting(approval: Approval) -> WaitingApproval:
    return WaitingApproval(
        id=approval.id,
        kind=approval.kind,
        amount_minor=approval.amount_minor,
        currency=approval.currency,
        request_key=approval.request.key,
        request_subject=approval.request.subject,
        requested_by=approval.requested_by.slack_user_id,
        requested_by_name=approval.requested_by.name,
        requested_at=approval.requested_at,
    )


# --- today's team figures ----------------------------------------------------------


def _team_today(report: MetricsReport, day: date) -> TeamToday:
    """The figures the Home tab shows, taken from the metrics report as they are (rounded as its JSON is)."""
    overall = report.overall
    sla = overall.sla_compliance
    return TeamToday(
        day=day,
        timezone=report.timezone,
        since=report.period.since,
        until=report.period.until,
        opened=overall.opened,
        resolved=overall.resolution.wall.count,
        backlog=overall.backlog.total,
        first_responses=overall.first_response.wall.count,
        first_response_median_seconds=whole_seconds(overall.first_response.wall.median),
        first_response_in_sla=_share(sla.first_response),
        resolution_in_sla=_share(sla.resolution),
        open_breaches=sla.breached_requests,
    )


def _share(rate: Rate) -> Share:
    return Share(rate.numerator, rate.denominator, rate.to_json()["rate"])
