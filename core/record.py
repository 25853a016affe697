"""The whole record of one request, read for an auditor: ``supportdesk requests export``.

Everything a finance reviewer needs to file about one request — its fields
and SLA due times, the customer and their KYC status now, the invoices it was
linked to, every message with its attachment list and how the mail was
filed, internal notes, adjustments with who decided and why, the timeline of
audit events — together with the chain data ``supportdesk audit verify``
checks: each event's sequence, previous hash and hash, the chain's head, and
whether the whole chain verifies at the moment of export.

Read-only and read in one transaction, so the timeline, the hashes and the
head describe one moment (PostgreSQL: REPEATABLE READ; SQLite: the WAL
snapshot of a deferred transaction). It reuses the frozen views and their
JSON from :mod:`core.views`, so a field is spelt here as ``requests show``
spells it. The JSON layout is a public interface (``format`` and
``version``; README "Exported record"): add fields, never rename or remove.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, defer, selectinload

from core.audit import VerifyResult, event_hash, verify_chain
from core.errors import NotFound
from core.event_text import summarize
from core.models import Agent, Approval, Attachment, AuditHead, Event, Invoice, Message, ReceivedMail, Request
# The same loading as `requests show`, so the request's fields are read the same way.
from core.queries import request_view_options
from core.services.common import AGENT_ACTOR_PREFIX, parse_key
from core.store import Store
from core.views import (
    ApprovalView,
    EventView,
    InvoiceRef,
    MessageView,
    QuarantinedMailView,
    RequestView,
    iso,
)

RECORD_FORMAT = "supportdesk.request_record"
RECORD_VERSION = 1
VERIFY_COMMAND = "supportdesk audit verify"
# How each event's hash is made (core.audit.event_hash), for a reviewer who re-checks it by hand.
HASH_RECIPE = (
    "hash = sha256(prev_hash + canonical_json({seq, request_id, actor, kind, data, created_at})); canonical "
    "JSON has sorted keys, no spaces and UTF-8 as is; data is the event's data in canonical JSON, as text; "
    "request_id is audit.request_row_id; created_at is as given (UTC, microseconds); the first event's prev_hash "
    "is 64 zeros"
)
# Events whose data names an invoice the request was linked to.
_INVOICE_EVENTS = ("request.opened", "request.invoice_linked")


def software_version() -> str:
    """``supportdesk 0.1.0``: which version made an export, for its footer."""
    try:
        return f"supportdesk {metadata.version('supportdesk')}"
    except metadata.PackageNotFoundError:  # running from a source tree that was never installed
        return "supportdesk (version unknown)"


@dataclass(frozen=True)
class SlaRecord:
    """The SLA policy chosen for the request and its stored due times (None while not set or paused)."""

    policy: str | None
    first_response_due_at: datetime | None
    next_reply_due_at: datetime | None
    resolution_due_at: datetime | None
    first_response_business_seconds: int | None
    resolution_business_seconds: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "first_response_due_at": iso(self.first_response_due_at),
            "next_reply_due_at": iso(self.next_reply_due_at),
            "resolution_due_at": iso(self.resolution_due_at),
            "first_response_business_seconds": self.first_response_business_seconds,
            "resolution_business_seconds": self.resolution_business_seconds,
        }


@dataclass(frozen=True)
class CustomerRecord:
    """The linked customer as the customer master has it at export time."""

    ref: str
    name: str
    kyc_status: str
    master_updated_at: datetime

    def to_json(self, as_of: datetime) -> dict[str, Any]:
        return {"ref": self.ref, "name": self.name, "kyc_status": self.kyc_status, "kyc_status_as_of": iso(as_of),
                "master_updated_at": iso(self.master_updated_at)}


@dataclass(frozen=True)
class InvoiceRecord:
    """An invoice the request is or was linked to; ``current`` for the one linked now."""

    invoice: InvoiceRef
    current: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.invoice.to_json(), "current": self.current}


@dataclass(frozen=True)
class MailFiling:
    """How a received mail became this message: when and how it arrived, how it was threaded, any quarantine."""

    inbound_mail_id: int
    received_at: datetime
    source: str
    raw_sha256: str
    size: int
    outcome: str | None
    matched_by: str | None
    # Why it was filed out of the ordinary: an automatic reply kept without changing anything, say.
    reason: str | None
    # Set when the mail sat in quarantine first and an agent released it.
    quarantine_reason: str | None
    released_at: datetime | None
    released_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "inbound_mail_id": self.inbound_mail_id,
            "received_at": iso(self.received_at),
            "source": self.source,
            "raw_sha256": self.raw_sha256,
            "size": self.size,
            "outcome": self.outcome,
            "matched_by": self.matched_by,
            "reason": self.reason,
            "quarantine_reason": self.quarantine_reason,
            "released_at": iso(self.released_at),
            "released_by": self.released_by,
        }


@dataclass(frozen=True)
class MessageRecord:
    """A message, with what ``requests show`` leaves out: names, the authentication detail, the filing."""

    message: MessageView
    author_name: str | None
    in_reply_to: str | None
    auth_summary: str | None
    filing: MailFiling | None

    @property
    def full_text(self) -> str:
        return self.message.full_text if self.message.full_text is not None else self.message.body_text

    def to_json(self) -> dict[str, Any]:
        return {
            **self.message.to_json(),
            "author_name": self.author_name,
            "in_reply_to": self.in_reply_to,
            "auth_summary": self.auth_summary,
            "filing": self.filing.to_json() if self.filing else None,
        }


@dataclass(frozen=True)
class ApprovalRecord:
    approval: ApprovalView
    requested_by_name: str
    decided_by_name: str | None

    @property
    def rejection_reason(self) -> str | None:
        return self.approval.decision_note if self.approval.status == "rejected" else None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.approval.to_json(),
            "requested_by_name": self.requested_by_name,
            "decided_by_name": self.decided_by_name,
            "rejection_reason": self.rejection_reason,
        }


@dataclass(frozen=True)
class TimelineEntry:
    """One audit event of the request, with a sentence for people and its own hash re-checked."""

    event: EventView
    actor_name: str | None
    summary: str
    # The stored hash matches the event's own contents and its stored prev_hash
    # (the links between events are what verify_chain walks).
    hash_ok: bool

    def to_json(self) -> dict[str, Any]:
        return {**self.event.to_json(), "actor_name": self.actor_name, "summary": self.summary,
                "hash_ok": self.hash_ok}


@dataclass(frozen=True)
class RequestRecord:
    """Everything about one request at ``exported_at``; see the module docstring."""

    exported_at: datetime
    software: str
    request: RequestView
    # The request's row id: the ``request_id`` each of its events' hashes covers.
    request_row_id: int
    merged_from: tuple[str, ...]
    sla: SlaRecord
    customer: CustomerRecord | None
    invoices: tuple[InvoiceRecord, ...]
    # Oldest first, every direction (inbound, outbound, note).
    messages: tuple[MessageRecord, ...]
    approvals: tuple[ApprovalRecord, ...]
    # Mail about this request that was held back (a bounce of our reply, say) and is still in quarantine.
    quarantined_mail: tuple[QuarantinedMailView, ...]
    timeline: tuple[TimelineEntry, ...]
    head_seq: int
    head_hash: str
    chain: VerifyResult

    @property
    def correspondence(self) -> tuple[MessageRecord, ...]:
        """The mail: what the customer sent and what we sent them."""
        return tuple(m for m in self.messages if m.message.direction != "note")

    @property
    def notes(self) -> tuple[MessageRecord, ...]:
        return tuple(m for m in self.messages if m.message.direction == "note")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "version": RECORD_VERSION,
            "exported_at": iso(self.exported_at),
            "exported_by": self.software,
            "request": {**self.request.to_json(), "merged_from": list(self.merged_from), "sla": self.sla.to_json()},
            "customer": self.customer.to_json(self.exported_at) if self.customer else None,
            "invoices": [i.to_json() for i in self.invoices],
            "messages": [m.to_json() for m in self.correspondence],
            "notes": [m.to_json() for m in self.notes],
            "approvals": [a.to_json() for a in self.approvals],
            "quarantined_mail": [q.to_json() for q in self.quarantined_mail],
            "timeline": [t.to_json() for t in self.timeline],
            "audit": {
                "request_row_id": self.request_row_id,
                "events": len(self.timeline),
                "head": {"seq": self.head_seq, "hash": self.head_hash},
                "chain": {
                    "ok": self.chain.ok, "checked": self.chain.checked, "tip_seq": self.chain.tip_seq,
                    "tip_hash": self.chain.tip_hash, "first_bad_seq": self.chain.first_bad_seq,
                    "problem": self.chain.problem,
                },
                "verify_command": VERIFY_COMMAND,
                "hash_recipe": HASH_RECIPE,
            },
        }


def read_request_record(store: Store, key: str) -> RequestRecord:
    """The record of the request named ``key``; raises :class:`NotFound` for an unknown key. Writes nothing."""
    number = parse_key(key)
    with store.read() as session:
        if not store.is_sqlite:
            # One snapshot for every statement below: the hashes, the head and the chain check agree.
            session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        request = session.execute(
            select(Request).options(*request_view_options()).where(Request.number == number)
        ).scalar_one_or_none()
        if request is None:
            raise NotFound(f"there is no request SR-{number}")
        exported_at = store.clock.now()
        events = list(session.execute(select(Event).where(Event.request_id == request.id).order_by(Event.seq))
                      .scalars())
        messages = list(session.execute(
            # The attachments' bytes stay in the store: the record lists them, it does not carry them.
            select(Message).options(selectinload(Message.attachments).defer(Attachment.content),
                                    selectinload(Message.author))
            .where(Message.request_id == request.id).order_by(Message.created_at, Message.id)
        ).scalars())
        approvals = list(session.execute(
            # Approval.request is the request above, already loaded.
            select(Approval).options(selectinload(Approval.requested_by), selectinload(Approval.decided_by))
            .where(Approval.request_id == request.id).order_by(Approval.id)
        ).scalars())
        names = _agent_names(session, events)
        head = session.get(AuditHead, 1)
        chain = verify_chain(session)
        return RequestRecord(
            exported_at=exported_at,
            software=software_version(),
            request=RequestView.of(request),
            request_row_id=request.id,
            merged_from=tuple(f"SR-{n}" for n in session.execute(
                select(Request.number).where(Request.merged_into_id == request.id).order_by(Request.number)
            ).scalars()),
            sla=SlaRecord(request.sla_policy, request.first_response_due_at, request.next_reply_due_at,
                          request.resolution_due_at, request.first_response_business_seconds,
                          request.resolution_business_seconds),
            customer=CustomerRecord(request.customer.external_ref, request.customer.name, request.customer.kyc_status,
                                    request.customer.updated_at) if request.customer else None,
            invoices=_invoices(session, request, events),
            messages=_messages(session, request, messages),
            approvals=tuple(
                ApprovalRecord(ApprovalView.of(a), a.requested_by.name, a.decided_by.name if a.decided_by else None)
                for a in approvals
            ),
            quarantined_mail=tuple(
                QuarantinedMailView.of(row, request.key) for row in session.execute(
                    select(ReceivedMail).options(defer(ReceivedMail.raw))
                    .where(ReceivedMail.request_id == request.id, ReceivedMail.status == "quarantined")
                    .order_by(ReceivedMail.id)
                ).scalars()
            ),
            timeline=tuple(_timeline_entry(event, names) for event in events),
            head_seq=head.last_seq if head else 0,
            head_hash=head.last_hash if head else "",
            chain=chain,
        )


def _agent_names(session: Session, events: list[Event]) -> dict[str, str]:
    """Slack user id -> name, for the agents named as actors of the events."""
    ids = {e.actor.removeprefix(AGENT_ACTOR_PREFIX) for e in events if e.actor.startswith(AGENT_ACTOR_PREFIX)}
    if not ids:
        return {}
    return dict(session.execute(select(Agent.slack_user_id, Agent.name).where(Agent.slack_user_id.in_(ids))).all())


def _timeline_entry(event: Event, names: dict[str, str]) -> TimelineEntry:
    view = EventView.of(event)
    recomputed = event_hash(event.prev_hash, seq=event.seq, request_id=event.request_id, actor=event.actor,
                            kind=event.kind, data=event.data, created_at=event.created_at)
    actor_name = names.get(event.actor.removeprefix(AGENT_ACTOR_PREFIX)) \
        if event.actor.startswith(AGENT_ACTOR_PREFIX) else None
    return TimelineEntry(view, actor_name, summarize(view.kind, view.data), recomputed == event.hash)


def _invoices(session: Session, request: Request, events: list[Event]) -> tuple[InvoiceRecord, ...]:
    """The invoice linked now first, then any linked earlier (named by the request's events), oldest link first."""
    numbers: list[str] = [request.invoice.number] if request.invoice else []
    for event in events:
        if event.kind in _INVOICE_EVENTS:
            number = json.loads(event.data).get("invoice")
            if isinstance(number, str) and number not in numbers:
                numbers.append(number)
    if not numbers:
        return ()
    found = {
        invoice.number: invoice for invoice in session.execute(
            select(Invoice).options(selectinload(Invoice.customer)).where(Invoice.number.in_(numbers))
        ).scalars()
    }
    current = request.invoice.number if request.invoice else None
    return tuple(
        InvoiceRecord(ref, number == current)
        for number in numbers if number in found
        for ref in (InvoiceRef.of(found[number]),) if ref is not None
    )


def _messages(session: Session, request: Request, messages: list[Message]) -> tuple[MessageRecord, ...]:
    filings = _filings(session, request)
    return tuple(
        MessageRecord(
            message=MessageView.of(m),
            author_name=m.author.name if m.author else None,
            in_reply_to=m.in_reply_to,
            auth_summary=m.auth_summary,
            filing=filings.get(m.id),
        )
        for m in messages
    )


def _filings(session: Session, request: Request) -> dict[int, MailFiling]:
    """Message row id -> how its mail was received and filed, for the messages that came in as mail.

    A released message's original quarantine reason is no longer on its row
    (filing it again overwrote it); the ``mail.released`` event recorded it,
    in the same transaction as ``released_at``, so it is found by kind and time.
    """
    rows = list(session.execute(
        select(ReceivedMail).options(defer(ReceivedMail.raw))
        .where(ReceivedMail.request_id == request.id, ReceivedMail.message_row_id.is_not(None))
    ).scalars())
    released_reasons: dict[int, str | None] = {}
    moments = {row.released_at for row in rows if row.released_at is not None}
    if moments:
        for data in session.execute(
            select(Event.data).where(Event.kind == "mail.released", Event.created_at.in_(moments))
        ).scalars():
            values = json.loads(data)
            released_reasons[int(values.get("inbound_mail", 0))] = values.get("reason")
    return {
        row.message_row_id: MailFiling(
            inbound_mail_id=row.id, received_at=row.received_at, source=row.source, raw_sha256=row.sha256,
            size=row.size, outcome=row.outcome, matched_by=row.matched_by, reason=row.reason,
            quarantine_reason=released_reasons.get(row.id) if row.released_at is not None else None,
            released_at=row.released_at, released_by=row.released_by,
        )
        for row in rows if row.message_row_id is not None
    }
