"""Financial adjustments: asking for one, and deciding it.

Every rule is checked again when the decision is made, inside the same
transaction that records it: role, limit, not one's own request, KYC. The
approval row is locked, so an approve racing a reject gives one decision and
the loser is told who decided first.
"""

from __future__ import annotations

from sqlalchemy import select

from core.authorization import describe, require_agent, require_can_decide, require_verified_customer
from core.errors import Conflict, InvalidInput, NotFound
from core.lifecycle import Action
from core.models import Approval
from core.money import Money
from core.services.common import check_text, get_agent, get_request, money_data
from core.services.workflow import ensure_transition, move
from core.store import Store
from core.views import ApprovalView

KINDS = ("credit", "refund", "write_off")


def request_approval(store: Store, key: str, *, kind: str, amount: Money, reason: str, actor: str) -> ApprovalView:
    """Ask an approver to agree to a credit, refund or write-off on this request."""
    kind = (kind or "").strip().lower().replace("-", "_")
    if kind not in KINDS:
        raise InvalidInput(f"adjustment kind {kind!r} is not one of {', '.join(KINDS)}")
    if amount.minor <= 0:
        raise InvalidInput("the adjustment amount must be more than zero")
    why = check_text(reason, "the reason")
    with store.unit_of_work() as uow:
        agent = get_agent(uow.session, actor)
        request = get_request(uow, key)
        require_agent(agent, f"ask for an approval on {request.key}")
        require_verified_customer(request, request.customer, f"ask for a {kind.replace('_', '-')}")
        if request.invoice is not None and request.invoice.currency != amount.currency:
            raise InvalidInput(
                f"the adjustment is in {amount.currency} but invoice {request.invoice.number} is in "
                f"{request.invoice.currency}"
            )
        ensure_transition(uow, request, Action.REQUEST_APPROVAL)
        approval = Approval(
            request=request,
            kind=kind,
            amount_minor=amount.minor,
            currency=amount.currency,
            reason=why,
            status="pending",
            requested_by=agent,
            requested_at=uow.now,
        )
        uow.session.add(approval)
        uow.session.flush()
        move(uow, request, Action.REQUEST_APPROVAL, agent, "approval.requested",
             {"approval_id": approval.id, "kind": kind, "amount": money_data(amount), "reason": why})
        uow.commit()
        return ApprovalView.of(approval)


def decide_approval(
    store: Store, approval_id: int, *, approve: bool, note: str | None = None, actor: str
) -> ApprovalView:
    """Approve or reject; a rejection needs a reason, an approval a KYC-verified customer."""
    note = (note or "").strip() or None
    if not approve and note is None:
        raise InvalidInput("a rejection needs a reason")
    with store.unit_of_work() as uow:
        request_id = uow.session.execute(
            select(Approval.request_id).where(Approval.id == approval_id)
        ).scalar_one_or_none()
        if request_id is None:
            raise NotFound(f"there is no approval {approval_id}")
        request = uow.lock_request(request_id)
        approval = uow.session.execute(
            select(Approval).where(Approval.id == approval_id).with_for_update()
        ).scalar_one()
        if approval.status != "pending":
            who = describe(approval.decided_by) if approval.decided_by else "somebody"
            when = approval.decided_at.strftime("%Y-%m-%d %H:%M:%S UTC") if approval.decided_at else "earlier"
            raise Conflict(f"approval {approval.id} on {request.key} was already {approval.status} by {who} at {when}")
        approver = get_agent(uow.session, actor)
        require_can_decide(approver, approval, request)
        if approve:
            # Only approving moves money; a rejection must stay possible when
            # KYC lapsed meanwhile, or the request could never leave pending_approval.
            require_verified_customer(request, request.customer, f"approve a {approval.kind.replace('_', '-')}")
        action, kind = (Action.APPROVE, "approval.approved") if approve else (Action.REJECT, "approval.rejected")
        move(uow, request, action, approver, kind, {
            "approval_id": approval.id,
            "kind": approval.kind,
            "amount": money_data(Money(approval.amount_minor, approval.currency)),
            "note": note,
        })
        approval.status = "approved" if approve else "rejected"
        approval.decided_by = approver
        approval.decided_at = uow.now
        approval.decision_note = note
        uow.commit()
        return ApprovalView.of(approval)
