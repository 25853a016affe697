"""Reads: listings and the full record of one request. Never writes."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from core.errors import InvalidInput, NotFound
from core.lifecycle import Status
from core.models import Agent, Approval, Customer, Event, Message, Request
from core.services.common import parse_key
from core.store import Store
from core.views import AgentRef, ApprovalView, EventView, MessageView, RequestDetail, RequestView

APPROVAL_STATUSES = ("pending", "approved", "rejected", "withdrawn")
DEFAULT_LIMIT = 200


@dataclass(frozen=True)
class RequestFilter:
    status: str | None = None
    assignee: str | None = None
    customer: str | None = None
    limit: int = DEFAULT_LIMIT


def _request_options():  # type: ignore[no-untyped-def]
    return (
        selectinload(Request.customer),
        selectinload(Request.assignee),
        selectinload(Request.opened_by),
        selectinload(Request.invoice),
        selectinload(Request.merged_into),
        selectinload(Request.follows_up),
    )


def list_requests(store: Store, where: RequestFilter = RequestFilter()) -> list[RequestView]:
    """Newest first. ``status`` may be a state, ``open`` (not resolved or closed) or ``all``."""
    query = select(Request).options(*_request_options()).order_by(Request.number.desc()).limit(where.limit)
    if where.status and where.status != "all":
        if where.status == "open":
            query = query.where(Request.status.not_in([Status.RESOLVED.value, Status.CLOSED.value]))
        else:
            try:
                query = query.where(Request.status == Status(where.status).value)
            except ValueError:
                states = ", ".join(s.value for s in Status)
                raise InvalidInput(f"status {where.status!r} is not one of open, all, {states}") from None
    with store.read() as session:
        if where.assignee:
            if where.assignee == "none":
                query = query.where(Request.assignee_id.is_(None))
            else:
                agent_id = session.execute(select(Agent.id).where(Agent.slack_user_id == where.assignee)).scalar()
                if agent_id is None:
                    raise NotFound(f"no agent has the Slack user id {where.assignee!r}")
                query = query.where(Request.assignee_id == agent_id)
        if where.customer:
            customer_id = session.execute(select(Customer.id).where(Customer.external_ref == where.customer)).scalar()
            if customer_id is None:
                raise NotFound(f"there is no customer with reference {where.customer!r}")
            query = query.where(Request.customer_id == customer_id)
        return [RequestView.of(r) for r in session.execute(query).scalars()]


def get_request_detail(store: Store, key: str) -> RequestDetail:
    number = parse_key(key)
    with store.read() as session:
        request = session.execute(
            select(Request).options(*_request_options()).where(Request.number == number)
        ).scalar_one_or_none()
        if request is None:
            raise NotFound(f"there is no request SR-{number}")
        messages = session.execute(
            select(Message)
            .options(selectinload(Message.attachments), selectinload(Message.author))
            .where(Message.request_id == request.id)
            .order_by(Message.created_at, Message.id)
        ).scalars()
        approvals = session.execute(
            select(Approval)
            .options(selectinload(Approval.requested_by), selectinload(Approval.decided_by))
            .where(Approval.request_id == request.id)
            .order_by(Approval.id)
        ).scalars()
        events = session.execute(select(Event).where(Event.request_id == request.id).order_by(Event.seq)).scalars()
        merged_from = session.execute(
            select(Request.number).where(Request.merged_into_id == request.id).order_by(Request.number)
        ).scalars()
        return RequestDetail(
            request=RequestView.of(request),
            messages=tuple(MessageView.of(m) for m in messages),
            approvals=tuple(ApprovalView.of(a) for a in approvals),
            events=tuple(EventView.of(e) for e in events),
            merged_from=tuple(f"SR-{n}" for n in merged_from),
        )


def list_approvals(store: Store, status: str | None = "pending", limit: int = DEFAULT_LIMIT) -> list[ApprovalView]:
    query = (
        select(Approval)
        .options(selectinload(Approval.request), selectinload(Approval.requested_by), selectinload(Approval.decided_by))
        .order_by(Approval.id.desc())
        .limit(limit)
    )
    if status and status != "all":
        if status not in APPROVAL_STATUSES:
            raise InvalidInput(f"approval status {status!r} is not one of all, {', '.join(APPROVAL_STATUSES)}")
        query = query.where(Approval.status == status)
    with store.read() as session:
        return [ApprovalView.of(a) for a in session.execute(query).scalars()]


def list_agents(store: Store) -> list[AgentRef]:
    with store.read() as session:
        agents = session.execute(select(Agent).where(Agent.active.is_(True)).order_by(Agent.name)).scalars()
        return [ref for ref in (AgentRef.of(a) for a in agents) if ref is not None]
