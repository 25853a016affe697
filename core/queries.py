"""Reads: listings and the full record of one request. Never writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import selectinload

from core.errors import InvalidInput, NotFound
from core.lifecycle import DONE_STATES, Status
from core.metrics import open_breaches
from core.models import Agent, Approval, Customer, Event, Invoice, Message, Request
from core.services.cards import ADJUSTMENT_WINDOW
from core.services.common import parse_key
from core.services.correspondence import reply_subject
from core.store import Store
from core.views import (
    AdjustmentLine,
    AgentRef,
    ApprovalView,
    CustomerRef,
    EventView,
    InvoiceRef,
    MessageView,
    RequestDetail,
    RequestView,
)

APPROVAL_STATUSES = ("pending", "approved", "rejected", "withdrawn")
DEFAULT_LIMIT = 200


@dataclass(frozen=True)
class RequestFilter:
    status: str | None = None
    assignee: str | None = None
    customer: str | None = None
    limit: int = DEFAULT_LIMIT


def request_view_options() -> tuple[Any, ...]:
    """The relationships a RequestView reads, loaded with the request (requests list, show and export)."""
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
    query = select(Request).options(*request_view_options()).order_by(Request.number.desc()).limit(where.limit)
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
            select(Request).options(*request_view_options()).where(Request.number == number)
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


def find_agent(store: Store, slack_user_id: str) -> AgentRef | None:
    """The active agent (any role) with this Slack user id, or None: the front ends' "who is this?"."""
    with store.read() as session:
        agent = session.execute(
            select(Agent).where(Agent.slack_user_id == (slack_user_id or "").strip(), Agent.active.is_(True))
        ).scalar_one_or_none()
        return AgentRef.of(agent) if agent is not None else None


def breached_requests(store: Store, limit: int = DEFAULT_LIMIT) -> list[RequestView]:
    """Open requests with at least one SLA target past due now, the longest overdue first.

    The metrics' rule for open breaches (:func:`core.metrics.open_breaches`).
    """
    candidates = open_breaches(store.clock.now())
    earliest = (
        select(candidates.c.request_id, func.min(candidates.c.due).label("due"))
        .group_by(candidates.c.request_id)
        .order_by(func.min(candidates.c.due), candidates.c.request_id)
        .limit(limit)
        .subquery("earliest")
    )
    with store.read() as session:
        rows = session.execute(
            select(Request).options(*request_view_options())
            .join(earliest, earliest.c.request_id == Request.id)
            .order_by(earliest.c.due, Request.id)
        ).scalars()
        return [RequestView.of(r) for r in rows]


def get_message(store: Store, message_id: int) -> tuple[str, MessageView]:
    """One stored message and the key of its request (what a Slack thread mirror needs)."""
    with store.read() as session:
        message = session.execute(
            select(Message)
            .options(selectinload(Message.attachments), selectinload(Message.author), selectinload(Message.request))
            .where(Message.id == message_id)
        ).scalar_one_or_none()
        if message is None:
            raise NotFound(f"there is no message {message_id}")
        return message.request.key, MessageView.of(message)


@dataclass(frozen=True)
class ReplyPreview:
    """What an agent sees before writing to the customer: recipients, the Subject line, the last thing they wrote."""

    key: str
    to: tuple[str, ...]
    subject: str
    last_customer_text: str | None


def reply_preview(store: Store, key: str) -> ReplyPreview:
    number = parse_key(key)
    with store.read() as session:
        request = session.execute(select(Request).where(Request.number == number)).scalar_one_or_none()
        if request is None:
            raise NotFound(f"there is no request SR-{number}")
        last = session.execute(
            select(Message.body_text)
            .where(Message.request_id == request.id, Message.direction == "inbound", Message.is_automatic.is_(False))
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        return ReplyPreview(request.key, (request.requester_email,), reply_subject(request), last)


@dataclass(frozen=True)
class CustomerSummary:
    """One customer at a glance: KYC, open requests and disputes, invoices, recent adjustments."""

    customer: CustomerRef
    open_requests: tuple[RequestView, ...]
    invoices: tuple[InvoiceRef, ...]
    adjustments: tuple[AdjustmentLine, ...]  # newest first, the last 90 days


ADJUSTMENT_DAYS = ADJUSTMENT_WINDOW.days


def customer_summary(store: Store, external_ref: str, limit: int = 20) -> CustomerSummary:
    """The customer named by ``external_ref`` (case as stored), for an agent about to talk money with them."""
    ref = (external_ref or "").strip()
    if not ref:
        raise InvalidInput("give a customer reference, like C-1001")
    with store.read() as session:
        customer = session.execute(select(Customer).where(Customer.external_ref == ref)).scalar_one_or_none()
        if customer is None:
            raise NotFound(f"there is no customer with reference {ref!r}")
        requests = session.execute(
            select(Request).options(*request_view_options())
            .where(Request.customer_id == customer.id, Request.status.not_in([s.value for s in DONE_STATES]))
            .order_by(Request.number.desc()).limit(limit)
        ).scalars()
        invoices = session.execute(
            select(Invoice).options(selectinload(Invoice.customer))
            .where(Invoice.customer_id == customer.id).order_by(Invoice.due_on.desc()).limit(limit)
        ).scalars()
        since = store.clock.now() - ADJUSTMENT_WINDOW
        adjustments = session.execute(
            select(Approval, Request.number).join(Request, Request.id == Approval.request_id)
            .where(Request.customer_id == customer.id, Approval.requested_at >= since)
            .order_by(Approval.requested_at.desc(), Approval.id.desc()).limit(limit)
        ).all()
        customer_ref = CustomerRef.of(customer)
        assert customer_ref is not None
        return CustomerSummary(
            customer=customer_ref,
            open_requests=tuple(RequestView.of(r) for r in requests),
            invoices=tuple(i for i in (InvoiceRef.of(inv) for inv in invoices) if i is not None),
            adjustments=tuple(
                AdjustmentLine(a.id, f"SR-{number}", a.kind, a.amount_minor, a.currency, a.status, a.requested_at,
                               a.decided_at)
                for a, number in adjustments
            ),
        )
