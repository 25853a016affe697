"""What a Slack card shows about one request or one approval. Reads only.

Cards are redrawn after every change, from whichever front end made it, so
each is one read transaction of a fixed handful of queries (never one per
message, event or adjustment) that returns a frozen view; the bot draws the
view without going back to the store. Nothing here writes or records events:
looking at a card is not a change.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session, joinedload

from core.errors import NotFound
from core.lifecycle import PAUSED_STATES, Status
from core.models import Approval, Invoice, Message, Request
from core.services.common import latest_change, parse_key
from core.store import Store
from core.views import AdjustmentLine, ApprovalCard, CustomerRef, InvoiceRef, RequestCard

# The evidence window of DESIGN §1 / issue 5: the customer's adjustments in
# the 90 days before an approval was asked for.
ADJUSTMENT_WINDOW = timedelta(days=90)
# Rows of that window loaded for a card; the card counts the rest.
ADJUSTMENT_PAGE = 50


def request_card(store: Store, key: str) -> RequestCard:
    """The triage card of request ``key``: the request, its first mail's verdict, its clocks and its last change."""
    number = parse_key(key)
    with store.read() as session:
        request = session.execute(
            select(Request)
            .options(
                joinedload(Request.customer),
                joinedload(Request.assignee),
                joinedload(Request.invoice).joinedload(Invoice.customer),
                joinedload(Request.merged_into),
                joinedload(Request.follows_up),
            )
            .where(Request.number == number)
        ).scalar_one_or_none()
        if request is None:
            raise NotFound(f"there is no request SR-{number}")
        verdict, flags = _first_inbound(session, request.id)
        return RequestCard(
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
            invoice=InvoiceRef.of(request.invoice),
            disputed_amount_minor=request.disputed_amount_minor,
            disputed_currency=request.disputed_currency,
            sender_auth=verdict,
            sender_flags=flags,
            first_response_due_at=request.first_response_due_at,
            first_response_at=request.first_response_at,
            next_reply_due_at=request.next_reply_due_at,
            resolution_due_at=request.resolution_due_at,
            resolved_at=request.resolved_at,
            closed_at=request.closed_at,
            sla_paused=Status(request.status) in PAUSED_STATES,
            pending_approvals=_pending_approvals(session, request.id),
            merged_into=request.merged_into.key if request.merged_into else None,
            follows_up=request.follows_up.key if request.follows_up else None,
            resolution_note=request.resolution_note,
            reopen_count=request.reopen_count,
            created_at=request.created_at,
            updated_at=request.updated_at,
            last_change=latest_change(session, request.id),
        )


def approval_card(store: Store, approval_id: int) -> ApprovalCard:
    """The approval card: the approval, its request, invoice, KYC status and the customer's recent adjustments."""
    with store.read() as session:
        approval = session.execute(
            select(Approval)
            .options(
                joinedload(Approval.requested_by),
                joinedload(Approval.decided_by),
                joinedload(Approval.request).joinedload(Request.customer),
                joinedload(Approval.request).joinedload(Request.invoice).joinedload(Invoice.customer),
            )
            .where(Approval.id == approval_id)
        ).scalar_one_or_none()
        if approval is None:
            raise NotFound(f"there is no approval {approval_id}")
        request = approval.request
        since = approval.requested_at - ADJUSTMENT_WINDOW
        lines, count = _recent_adjustments(session, approval, since)
        return ApprovalCard(
            id=approval.id,
            kind=approval.kind,
            amount_minor=approval.amount_minor,
            currency=approval.currency,
            reason=approval.reason,
            status=approval.status,
            requested_by=approval.requested_by.slack_user_id,
            requested_by_name=approval.requested_by.name,
            requested_at=approval.requested_at,
            decided_by=approval.decided_by.slack_user_id if approval.decided_by else None,
            decided_by_name=approval.decided_by.name if approval.decided_by else None,
            decided_at=approval.decided_at,
            decision_note=approval.decision_note,
            request_key=request.key,
            request_subject=request.subject,
            customer=CustomerRef.of(request.customer),
            invoice=InvoiceRef.of(request.invoice),
            disputed_amount_minor=request.disputed_amount_minor,
            disputed_currency=request.disputed_currency,
            adjustments_since=since,
            recent_adjustments=lines,
            recent_adjustment_count=count,
        )


def _first_inbound(session: Session, request_id: int) -> tuple[str | None, tuple[str, ...]]:
    """The sender-authentication verdict and flags of the mail that opened the request.

    The first message is the one that says who the requester is; later mail
    on the thread does not change whether the request itself was trustworthy.
    """
    row = session.execute(
        select(Message.auth_verdict, Message.flags)
        .where(Message.request_id == request_id, Message.direction == "inbound")
        .order_by(Message.created_at, Message.id)
        .limit(1)
    ).first()
    if row is None:
        return None, ()
    verdict, flags = row
    return verdict, tuple((flags or "").split())


def _pending_approvals(session: Session, request_id: int) -> int:
    return session.execute(
        select(func.count()).select_from(Approval).where(Approval.request_id == request_id, Approval.status == "pending")
    ).scalar_one()




def _recent_adjustments(
    session: Session, approval: Approval, since: datetime
) -> tuple[tuple[AdjustmentLine, ...], int]:
    """The customer's adjustments asked for in the window before ``approval``, newest first, and their number.

    "Before" is by request time, ties broken by id, so the evidence on a card
    stays what it was when the approver was asked, however often it is redrawn.
    """
    customer_id = approval.request.customer_id
    if customer_id is None:
        return (), 0
    earlier = and_(
        Request.customer_id == customer_id,
        Approval.requested_at >= since,
        or_(
            Approval.requested_at < approval.requested_at,
            and_(Approval.requested_at == approval.requested_at, Approval.id < approval.id),
        ),
    )
    rows = session.execute(
        select(Approval.id, Request.number, Approval.kind, Approval.amount_minor, Approval.currency, Approval.status,
               Approval.requested_at, Approval.decided_at)
        .join(Request, Request.id == Approval.request_id)
        .where(earlier)
        .order_by(Approval.requested_at.desc(), Approval.id.desc())
        .limit(ADJUSTMENT_PAGE)
    ).all()
    lines = tuple(
        AdjustmentLine(approval_id=id_, request_key=f"SR-{number}", kind=kind, amount_minor=amount, currency=currency,
                       status=status, requested_at=requested_at, decided_at=decided_at)
        for id_, number, kind, amount, currency, status, requested_at, decided_at in rows
    )
    if len(lines) < ADJUSTMENT_PAGE:
        return lines, len(lines)
    count = session.execute(
        select(func.count()).select_from(Approval).join(Request, Request.id == Approval.request_id).where(earlier)
    ).scalar_one()
    return lines, count
