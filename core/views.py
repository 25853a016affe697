"""Frozen views of the store, and their stable JSON.

Services and queries return these instead of live ORM objects, so a front end
can never lazy-load outside a transaction or write behind the service layer.
The JSON field names are a public interface documented in the README: add
fields, never rename or remove them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from core.audit import format_timestamp
from core.models import Agent, Approval, Attachment, Customer, Event, Invoice, Message, ReceivedMail, Request


def iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC to the second, always the same width: 2026-01-05T09:00:00Z."""
    return None if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def money_json(minor: int | None, currency: str | None) -> dict[str, Any] | None:
    if minor is None or currency is None:
        return None
    return {"amount_minor": minor, "currency": currency}


@dataclass(frozen=True)
class CustomerRef:
    external_ref: str
    name: str
    kyc_status: str

    @classmethod
    def of(cls, customer: Customer | None) -> CustomerRef | None:
        if customer is None:
            return None
        return cls(customer.external_ref, customer.name, customer.kyc_status)

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.external_ref, "name": self.name, "kyc_status": self.kyc_status}


@dataclass(frozen=True)
class InvoiceRef:
    number: str
    customer_ref: str
    amount_minor: int
    currency: str
    issued_on: date
    due_on: date
    status: str

    @classmethod
    def of(cls, invoice: Invoice | None) -> InvoiceRef | None:
        if invoice is None:
            return None
        return cls(
            invoice.number, invoice.customer.external_ref, invoice.amount_minor, invoice.currency,
            invoice.issued_on, invoice.due_on, invoice.status,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "customer_ref": self.customer_ref,
            "amount": money_json(self.amount_minor, self.currency),
            "issued_on": self.issued_on.isoformat(),
            "due_on": self.due_on.isoformat(),
            "status": self.status,
        }


@dataclass(frozen=True)
class AgentRef:
    slack_user_id: str
    name: str
    email: str
    roles: tuple[str, ...]
    approval_limit_minor: int
    approval_currency: str | None

    @classmethod
    def of(cls, agent: Agent | None) -> AgentRef | None:
        if agent is None:
            return None
        return cls(
            agent.slack_user_id, agent.name, agent.email, tuple(sorted(agent.role_set)),
            agent.approval_limit_minor, agent.approval_currency,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "slack_user_id": self.slack_user_id,
            "name": self.name,
            "email": self.email,
            "roles": list(self.roles),
            "approval_limit": money_json(self.approval_limit_minor, self.approval_currency)
            if self.approval_limit_minor else None,
        }


@dataclass(frozen=True)
class RequestView:
    key: str
    subject: str
    status: str
    channel: str
    category: str
    priority: str
    requester: str
    customer: CustomerRef | None
    assignee: str | None
    assignee_name: str | None
    opened_by: str | None
    invoice: InvoiceRef | None
    disputed_amount_minor: int | None
    disputed_currency: str | None
    resolution_note: str | None
    resolution_code: str | None
    reopen_count: int
    merged_into: str | None
    follows_up: str | None
    created_at: datetime
    updated_at: datetime
    first_assigned_at: datetime | None
    first_response_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None

    @classmethod
    def of(cls, request: Request) -> RequestView:
        return cls(
            key=request.key,
            subject=request.subject,
            status=request.status,
            channel=request.channel,
            category=request.category,
            priority=request.priority,
            requester=request.requester_email,
            customer=CustomerRef.of(request.customer),
            assignee=request.assignee.slack_user_id if request.assignee else None,
            assignee_name=request.assignee.name if request.assignee else None,
            opened_by=request.opened_by.slack_user_id if request.opened_by else None,
            invoice=InvoiceRef.of(request.invoice),
            disputed_amount_minor=request.disputed_amount_minor,
            disputed_currency=request.disputed_currency,
            resolution_note=request.resolution_note,
            resolution_code=request.resolution_code,
            reopen_count=request.reopen_count,
            merged_into=request.merged_into.key if request.merged_into else None,
            follows_up=request.follows_up.key if request.follows_up else None,
            created_at=request.created_at,
            updated_at=request.updated_at,
            first_assigned_at=request.first_assigned_at,
            first_response_at=request.first_response_at,
            resolved_at=request.resolved_at,
            closed_at=request.closed_at,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "subject": self.subject,
            "status": self.status,
            "channel": self.channel,
            "category": self.category,
            "priority": self.priority,
            "requester": self.requester,
            "customer": self.customer.to_json() if self.customer else None,
            "assignee": self.assignee,
            "assignee_name": self.assignee_name,
            "opened_by": self.opened_by,
            "invoice": self.invoice.to_json() if self.invoice else None,
            "disputed_amount": money_json(self.disputed_amount_minor, self.disputed_currency),
            "resolution_note": self.resolution_note,
            "resolution_code": self.resolution_code,
            "reopen_count": self.reopen_count,
            "merged_into": self.merged_into,
            "follows_up": self.follows_up,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "first_assigned_at": iso(self.first_assigned_at),
            "first_response_at": iso(self.first_response_at),
            "resolved_at": iso(self.resolved_at),
            "closed_at": iso(self.closed_at),
        }


@dataclass(frozen=True)
class AttachmentView:
    id: int
    filename: str
    content_type: str
    size: int
    sha256: str
    is_inline: bool

    @classmethod
    def of(cls, attachment: Attachment) -> AttachmentView:
        return cls(attachment.id, attachment.filename, attachment.content_type, attachment.size, attachment.sha256,
                   attachment.is_inline)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "filename": self.filename, "content_type": self.content_type,
            "size": self.size, "sha256": self.sha256, "inline": self.is_inline,
        }


@dataclass(frozen=True)
class QuarantinedMailView:
    """A received message that did not open or join a normal request, and why."""

    id: int
    received_at: datetime
    reason: str | None
    from_address: str | None
    envelope_from: str | None
    subject: str | None
    message_id: str | None
    size: int
    related_request: str | None
    last_error: str | None
    released_by: str | None

    @classmethod
    def of(cls, row: ReceivedMail, related_request: str | None) -> QuarantinedMailView:
        return cls(row.id, row.received_at, row.reason, row.from_address, row.envelope_from, row.subject,
                   row.message_id, row.size, related_request, row.last_error, row.released_by)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": iso(self.received_at),
            "reason": self.reason,
            "from": self.from_address,
            "envelope_from": self.envelope_from,
            "subject": self.subject,
            "message_id": self.message_id,
            "size": self.size,
            "related_request": self.related_request,
            "error": self.last_error,
            "released_by": self.released_by,
        }


@dataclass(frozen=True)
class MessageView:
    id: int
    direction: str
    message_id: str | None
    from_address: str | None
    to_addresses: tuple[str, ...]
    subject: str | None
    body_text: str
    author: str | None
    is_automatic: bool
    created_at: datetime
    attachments: tuple[AttachmentView, ...]
    full_text: str | None = None
    auth_verdict: str | None = None
    flags: tuple[str, ...] = ()

    @classmethod
    def of(cls, message: Message) -> MessageView:
        return cls(
            id=message.id,
            direction=message.direction,
            message_id=message.message_id,
            from_address=message.from_address,
            to_addresses=tuple(a for a in (message.to_addresses or "").split(",") if a),
            subject=message.subject,
            body_text=message.body_text,
            author=message.author.slack_user_id if message.author else None,
            is_automatic=message.is_automatic,
            created_at=message.created_at,
            attachments=tuple(AttachmentView.of(a) for a in message.attachments),
            full_text=message.full_text,
            auth_verdict=message.auth_verdict,
            flags=tuple((message.flags or "").split()),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "direction": self.direction,
            "message_id": self.message_id,
            "from": self.from_address,
            "to": list(self.to_addresses),
            "subject": self.subject,
            "body": self.body_text,
            "author": self.author,
            "automatic": self.is_automatic,
            "created_at": iso(self.created_at),
            "attachments": [a.to_json() for a in self.attachments],
            "full_body": self.full_text if self.full_text is not None else self.body_text,
            "auth": self.auth_verdict,
            "flags": list(self.flags),
        }


@dataclass(frozen=True)
class ApprovalView:
    id: int
    request_key: str
    kind: str
    amount_minor: int
    currency: str
    reason: str
    status: str
    requested_by: str
    requested_at: datetime
    decided_by: str | None
    decided_at: datetime | None
    decision_note: str | None

    @classmethod
    def of(cls, approval: Approval) -> ApprovalView:
        return cls(
            id=approval.id,
            request_key=approval.request.key,
            kind=approval.kind,
            amount_minor=approval.amount_minor,
            currency=approval.currency,
            reason=approval.reason,
            status=approval.status,
            requested_by=approval.requested_by.slack_user_id,
            requested_at=approval.requested_at,
            decided_by=approval.decided_by.slack_user_id if approval.decided_by else None,
            decided_at=approval.decided_at,
            decision_note=approval.decision_note,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "request_key": self.request_key,
            "kind": self.kind,
            "amount": money_json(self.amount_minor, self.currency),
            "reason": self.reason,
            "status": self.status,
            "requested_by": self.requested_by,
            "requested_at": iso(self.requested_at),
            "decided_by": self.decided_by,
            "decided_at": iso(self.decided_at),
            "decision_note": self.decision_note,
        }


@dataclass(frozen=True)
class EventView:
    seq: int
    kind: str
    actor: str
    data: dict[str, Any]
    created_at: datetime
    hash: str
    prev_hash: str

    @classmethod
    def of(cls, event: Event) -> EventView:
        return cls(event.seq, event.kind, event.actor, json.loads(event.data), event.created_at, event.hash,
                   event.prev_hash)

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "kind": self.kind,
            "actor": self.actor,
            "data": self.data,
            # Full precision: the exact value the hash covers.
            "created_at": format_timestamp(self.created_at),
            "hash": self.hash,
            "prev_hash": self.prev_hash,
        }


@dataclass(frozen=True)
class RequestDetail:
    request: RequestView
    messages: tuple[MessageView, ...]
    approvals: tuple[ApprovalView, ...]
    events: tuple[EventView, ...]
    merged_from: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            **self.request.to_json(),
            "merged_from": list(self.merged_from),
            "messages": [m.to_json() for m in self.messages],
            "approvals": [a.to_json() for a in self.approvals],
            "events": [e.to_json() for e in self.events],
        }


@dataclass(frozen=True)
class ImportResult:
    kind: str
    rows: int
    created: int
    updated: int
    unchanged: int

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "rows": self.rows, "created": self.created, "updated": self.updated,
                "unchanged": self.unchanged}


# --- What the Slack cards show ------------------------------------------------
#
# A card is redrawn after every change from every front end, so each card is
# read in one transaction into one of these, and the bot draws it without
# going back to the store. No JSON here: these are not a public interface.


@dataclass(frozen=True)
class ChangeView:
    """The latest event on a request: what happened, who did it and when ("claimed by Alice")."""

    kind: str
    # As recorded: ``agent:U123``, ``customer:jane@example.com`` or ``system:sla``.
    actor: str
    # The agent's name when the actor is an agent we know; None otherwise.
    actor_name: str | None
    at: datetime


@dataclass(frozen=True)
class RequestCard:
    """Everything the triage card of one request shows."""

    key: str
    subject: str
    status: str
    channel: str
    category: str
    priority: str
    requester: str
    customer: CustomerRef | None
    assignee: str | None
    assignee_name: str | None
    invoice: InvoiceRef | None
    disputed_amount_minor: int | None
    disputed_currency: str | None
    # Of the request's first inbound message: pass, fail or none from the
    # gateway, None when nobody mailed it (opened in Slack or on the command line).
    sender_auth: str | None
    sender_flags: tuple[str, ...]
    # The stored SLA due times (None while a paused clock has not reached them),
    # and the moments that met the first-response and resolution targets.
    first_response_due_at: datetime | None
    first_response_at: datetime | None
    next_reply_due_at: datetime | None
    resolution_due_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    sla_paused: bool
    pending_approvals: int
    merged_into: str | None
    follows_up: str | None
    resolution_note: str | None
    reopen_count: int
    created_at: datetime
    updated_at: datetime
    last_change: ChangeView | None


@dataclass(frozen=True)
class AdjustmentLine:
    """One earlier adjustment of the same customer, as evidence for an approver."""

    approval_id: int
    request_key: str
    kind: str
    amount_minor: int
    currency: str
    status: str
    requested_at: datetime
    decided_at: datetime | None


@dataclass(frozen=True)
class ApprovalCard:
    """An approval with the evidence an approver needs to decide it."""

    id: int
    kind: str
    amount_minor: int
    currency: str
    reason: str
    status: str
    requested_by: str
    requested_by_name: str
    requested_at: datetime
    decided_by: str | None
    decided_by_name: str | None
    decided_at: datetime | None
    decision_note: str | None
    request_key: str
    request_subject: str
    customer: CustomerRef | None
    invoice: InvoiceRef | None
    disputed_amount_minor: int | None
    disputed_currency: str | None
    # The customer's other adjustments requested from ``adjustments_since`` up
    # to this one (earlier, or at the same moment with a smaller id), newest
    # first; at most a page of them, and how many there are in all.
    adjustments_since: datetime
    recent_adjustments: tuple[AdjustmentLine, ...]
    recent_adjustment_count: int


# --- What an agent's Slack App Home shows -----------------------------------
#
# Read in one go when the agent opens the Home tab, drawn by the bot without
# going back to the store. Not a public interface: no JSON.


@dataclass(frozen=True)
class QueueItem:
    """One open request in an agent's queue, with the SLA moment that makes it urgent."""

    key: str
    subject: str
    status: str
    priority: str
    # The linked customer's name; None when the request is not linked to one.
    customer_name: str | None
    requester: str
    # The earliest SLA due time still running: the first response while it is
    # missing, the next reply, the resolution. None while the clock is paused
    # (waiting on the customer) or when no target applies.
    next_due_at: datetime | None
    # ``next_due_at`` has passed: the same rule as the open breaches of the metrics.
    breached: bool
    created_at: datetime


@dataclass(frozen=True)
class WaitingApproval:
    """A pending approval the agent may decide now, and what it is about."""

    id: int
    kind: str
    amount_minor: int
    currency: str
    request_key: str
    request_subject: str
    requested_by: str
    requested_by_name: str
    requested_at: datetime


@dataclass(frozen=True)
class Share:
    """A rate as ``supportdesk metrics --json`` prints it: ``rate`` to 4 decimals, None with nothing to divide."""

    numerator: int
    denominator: int
    rate: float | None


@dataclass(frozen=True)
class TeamToday:
    """Today's team figures: the period ``[since, until)`` is today in ``timezone``, up to now."""

    day: date
    timezone: str
    since: datetime
    until: datetime
    # Requests opened today: their ``request.opened`` events in the period.
    opened: int
    # The rest are compute_metrics' own numbers for the period.
    resolved: int
    backlog: int
    first_responses: int
    first_response_median_seconds: int | None
    first_response_in_sla: Share
    resolution_in_sla: Share
    open_breaches: int


@dataclass(frozen=True)
class AgentHome:
    """Everything one agent's Home tab shows, as of ``as_of``."""

    agent: AgentRef
    as_of: datetime
    # Most urgent first, at most a page; ``queue_total`` counts them all.
    queue: tuple[QueueItem, ...]
    queue_total: int
    # Whether the agent holds the approver role at all (else the section says so).
    decides_approvals: bool
    # Oldest first, at most a page; ``more_approvals`` when others are waiting too.
    approvals: tuple[WaitingApproval, ...]
    more_approvals: bool
    today: TeamToday
