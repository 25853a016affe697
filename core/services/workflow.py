"""Moving a request through its lifecycle, and changing what it is about.

Each function is one verb and one transaction: lock the request, check the
actor and the lifecycle table, change the row, record exactly one event.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from core.authorization import describe, require_agent
from core.errors import InvalidInput, NotFound, TransitionRefused
from core.lifecycle import Action, Status, is_allowed, next_status
from core.models import Agent, Approval, Invoice, Request
from core.money import Money
from core.services.common import (
    agent_actor,
    check_category,
    check_disputed,
    check_priority,
    check_text,
    disputed_of,
    get_agent,
    get_customer,
    get_request,
    last_change,
    money_data,
    parse_key,
    refuse_if_closed,
    request_id_of,
)
from core.store import Store, UnitOfWork
from core.views import RequestView

_CODE_MAX = 64


def claim(store: Store, key: str, *, actor: str) -> RequestView:
    """Take a new request. Of two agents claiming at once, exactly one wins."""
    with store.unit_of_work() as uow:
        agent, request = _agent_and_request(uow, key, actor, "claim")
        if request.status == Status.ASSIGNED and request.assignee is not None:
            raise TransitionRefused(
                f"{request.key} was already claimed by {describe(request.assignee)}; it is assigned"
            )
        move(uow, request, Action.CLAIM, agent, "request.claimed", {"assignee": agent.slack_user_id})
        _set_assignee(request, agent, uow)
        return _commit(uow, request)


def assign(store: Store, key: str, *, to: str, actor: str) -> RequestView:
    """Give a request to an agent, or hand it over to another one."""
    with store.unit_of_work() as uow:
        agent, request = _agent_and_request(uow, key, actor, "assign")
        target = get_agent(uow.session, to)
        require_agent(target, f"be assigned {request.key}")
        if request.assignee_id == target.id:
            raise InvalidInput(f"{request.key} is already assigned to {describe(target)}")
        previous = request.assignee.slack_user_id if request.assignee else None
        kind = "request.assigned" if previous is None else "request.reassigned"
        move(uow, request, Action.ASSIGN, agent, kind, {"assignee": target.slack_user_id, "previous": previous})
        _set_assignee(request, target, uow)
        return _commit(uow, request)


def wait_on_customer(store: Store, key: str, *, actor: str) -> RequestView:
    """Stop the SLA clock until the customer answers."""
    with store.unit_of_work() as uow:
        agent, request = _agent_and_request(uow, key, actor, "wait on the customer")
        move(uow, request, Action.WAIT_ON_CUSTOMER, agent, "request.waiting_on_customer")
        return _commit(uow, request)


def customer_replied(store: Store, key: str, *, actor: str) -> RequestView:
    """Record that the customer answered by some other way than mail (a call, a chat)."""
    with store.unit_of_work() as uow:
        agent, request = _agent_and_request(uow, key, actor, "record a customer reply")
        if request.status not in (Status.WAITING_ON_CUSTOMER, Status.RESOLVED):
            raise TransitionRefused(
                f"{request.key} is {request.status}: a customer reply changes its state only when it is "
                "waiting_on_customer or resolved"
            )
        reopening = request.status == Status.RESOLVED
        move(uow, request, Action.CUSTOMER_REPLIED, agent, "request.customer_replied")
        if reopening:
            request.reopen_count += 1
            request.resolved_at = None
        return _commit(uow, request)


def resolve(store: Store, key: str, *, note: str, code: str | None = None, actor: str) -> RequestView:
    """Mark the request solved; refused while an approval is pending."""
    text = check_text(note, "the resolution note")
    code = _check_code(code)
    with store.unit_of_work() as uow:
        agent, request = _agent_and_request(uow, key, actor, "resolve")
        move(uow, request, Action.RESOLVE, agent, "request.resolved", {"note": text, "code": code})
        request.resolution_note, request.resolution_code = text, code
        request.resolved_at = uow.now
        return _commit(uow, request)


def reopen(store: Store, key: str, *, actor: str) -> RequestView:
    with store.unit_of_work() as uow:
        agent, request = _agent_and_request(uow, key, actor, "reopen")
        move(uow, request, Action.REOPEN, agent, "request.reopened")
        request.reopen_count += 1
        request.resolved_at = None
        return _commit(uow, request)


def close(store: Store, key: str, *, actor: str) -> RequestView:
    with store.unit_of_work() as uow:
        agent, request = _agent_and_request(uow, key, actor, "close")
        move(uow, request, Action.CLOSE, agent, "request.closed")
        request.closed_at = uow.now
        return _commit(uow, request)


def dismiss(store: Store, key: str, *, reason: str | None = None, actor: str) -> RequestView:
    """Close a request that is not one (a thank-you, a stray newsletter): no resolution, no mail to the sender."""
    reason = check_text(reason, "reason", limit=1000).strip() if reason else None
    with store.unit_of_work() as uow:
        agent, request = _agent_and_request(uow, key, actor, "dismiss")
        move(uow, request, Action.DISMISS, agent, "request.dismissed", {"reason": reason})
        request.closed_at = uow.now
        return _commit(uow, request)


def merge(store: Store, key: str, *, into: str, actor: str) -> RequestView:
    """Close ``key`` as a duplicate of ``into``; later mail to it lands on ``into``.

    Both rows are locked in id order so two opposite merges cannot deadlock.
    """
    if parse_key(key) == parse_key(into):
        raise InvalidInput(f"cannot merge {key} into itself")
    with store.unit_of_work() as uow:
        agent = get_agent(uow.session, actor)
        source_id, target_id = (request_id_of(uow, k) for k in (key, into))
        for request_id in sorted((source_id, target_id)):
            uow.lock_request(request_id)
        source, target = uow.session.get(Request, source_id), uow.session.get(Request, target_id)
        assert source is not None and target is not None
        require_agent(agent, f"merge {source.key}")
        refuse_if_closed(target, f"receive {source.key} in a merge")
        move(uow, source, Action.MERGE, agent, "request.merged", {"into": target.key})
        source.merged_into = target
        source.closed_at = uow.now
        target.updated_at = uow.now
        uow.record("request.merge_received", actor=agent_actor(agent), request=target, data={"from": source.key})
        return _commit(uow, source)


def set_priority(store: Store, key: str, priority: str, *, actor: str) -> RequestView:
    value = check_priority(priority)
    return _set_field(store, key, actor, "priority", value, "request.priority_changed")


def set_category(store: Store, key: str, category: str, *, actor: str) -> RequestView:
    value = check_category(category)
    return _set_field(store, key, actor, "category", value, "request.category_changed")


def link_customer(store: Store, key: str, customer_ref: str, *, actor: str) -> RequestView:
    """Say which customer a request is from (for unknown senders, say)."""
    with store.unit_of_work() as uow:
        agent, request = _agent_and_request(uow, key, actor, "link a customer")
        refuse_if_closed(request, "link a customer")
        customer = get_customer(uow.session, customer_ref)
        if request.customer_id == customer.id:
            raise InvalidInput(f"{request.key} is already linked to customer {customer.external_ref}")
        if request.invoice is not None and request.invoice.customer_id != customer.id:
            raise InvalidInput(
                f"{request.key} is linked to invoice {request.invoice.number} of another customer; "
                "link the right invoice first"
            )
        if _has_pending_approval(uow, request):
            raise TransitionRefused(f"{request.key} has a pending approval; its customer cannot change now")
        previous = request.customer.external_ref if request.customer else None
        request.customer = customer
        request.updated_at = uow.now
        uow.record(
            "request.customer_linked", actor=agent_actor(agent), request=request,
            data={"customer_ref": customer.external_ref, "previous": previous, "kyc_status": customer.kyc_status},
        )
        return _commit(uow, request)


def link_invoice(
    store: Store, key: str, invoice_number: str, *, disputed: Money | None = None, actor: str
) -> RequestView:
    """Link the invoice a request is about, and optionally the amount in dispute."""
    with store.unit_of_work() as uow:
        agent, request = _agent_and_request(uow, key, actor, "link an invoice")
        refuse_if_closed(request, "link an invoice")
        invoice = uow.session.execute(select(Invoice).where(Invoice.number == invoice_number.strip())).scalar_one_or_none()
        if invoice is None:
            raise NotFound(f"there is no invoice {invoice_number!r}")
        if request.customer is None:
            raise InvalidInput(f"{request.key} has no customer yet; link the customer before the invoice")
        if invoice.customer_id != request.customer_id:
            raise InvalidInput(
                f"invoice {invoice.number} belongs to another customer, not {request.customer.external_ref}"
            )
        # A disputed amount recorded earlier must fit the invoice now linked.
        check = disputed or disputed_of(request)
        if check is not None:
            check_disputed(check, invoice)
        request.invoice = invoice
        if disputed is not None:
            request.disputed_amount_minor, request.disputed_currency = disputed.minor, disputed.currency
        request.updated_at = uow.now
        uow.record(
            "request.invoice_linked", actor=agent_actor(agent), request=request,
            data={"invoice": invoice.number, "disputed_amount": money_data(disputed)},
        )
        return _commit(uow, request)


def _agent_and_request(uow: UnitOfWork, key: str, actor: str, doing: str) -> tuple[Agent, Request]:
    agent = get_agent(uow.session, actor)
    request = get_request(uow, key)
    require_agent(agent, f"{doing} {request.key}")
    return agent, request


def ensure_transition(uow: UnitOfWork, request: Request, action: Action) -> Status:
    """The state ``action`` leads to, or a refusal that says who changed the request last."""
    before = Status(request.status)
    # Who changed it last costs a query, so it is looked up only for a refusal.
    last = None if is_allowed(before, action) else last_change(uow.session, request)
    return next_status(request.key, before, action, last_change=last)


def move(
    uow: UnitOfWork, request: Request, action: Action, agent: Agent, kind: str, data: dict[str, Any] | None = None
) -> None:
    """Apply one lifecycle transition and record its single event."""
    transition(uow, request, action, agent_actor(agent), kind, data)


def transition(
    uow: UnitOfWork, request: Request, action: Action, actor: str, kind: str, data: dict[str, Any] | None = None
) -> None:
    """:func:`move` for any actor, the scheduler's housekeeping included."""
    before = Status(request.status)
    after = ensure_transition(uow, request, action)
    request.status = after.value
    request.updated_at = uow.now
    uow.record(kind, actor=actor, request=request,
               data={**(data or {}), "status": {"from": before.value, "to": after.value}})


def _set_assignee(request: Request, agent: Agent, uow: UnitOfWork) -> None:
    request.assignee = agent
    if request.first_assigned_at is None:
        request.first_assigned_at = uow.now


def _set_field(store: Store, key: str, actor: str, field: str, value: str, kind: str) -> RequestView:
    with store.unit_of_work() as uow:
        agent, request = _agent_and_request(uow, key, actor, f"change the {field} of")
        refuse_if_closed(request, f"change its {field}")
        previous = getattr(request, field)
        if previous == value:
            raise InvalidInput(f"{request.key} already has {field} {value}")
        setattr(request, field, value)
        request.updated_at = uow.now
        uow.record(kind, actor=agent_actor(agent), request=request, data={field: value, "previous": previous})
        return _commit(uow, request)


def _has_pending_approval(uow: UnitOfWork, request: Request) -> bool:
    return uow.session.execute(
        select(Approval.id).where(Approval.request_id == request.id, Approval.status == "pending").limit(1)
    ).first() is not None


def _check_code(code: str | None) -> str | None:
    if code is None or not code.strip():
        return None
    value = code.strip().lower()
    if len(value) > _CODE_MAX or not value.replace("_", "").replace("-", "").isalnum():
        raise InvalidInput(f"resolution code {code!r} must be a short word such as fixed, duplicate or refunded")
    return value


def _commit(uow: UnitOfWork, request: Request) -> RequestView:
    uow.commit()
    return RequestView.of(request)
