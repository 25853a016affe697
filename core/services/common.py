"""Helpers the service functions share: finding rows, naming actors, validating values."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.errors import InvalidInput, NotFound, TransitionRefused
from core.lifecycle import Status
from core.models import Agent, Customer, CustomerAddress, Event, Invoice, Request
from core.money import Money, format_minor
from core.store import UnitOfWork
from core.views import ChangeView

PRIORITIES = ("urgent", "high", "normal", "low")
CHANNELS = ("email", "slack", "cli")
DEFAULT_CATEGORIES = ("billing_dispute", "technical", "account", "general")
_KEY = re.compile(r"^\s*SR-?(\d{1,12})\s*$", re.IGNORECASE)
_SLUG = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_EMAIL = re.compile(r"^[^@\s<>(),;:\"\[\]]+@[^@\s<>(),;:\"\[\]]+$")


AGENT_ACTOR_PREFIX = "agent:"
MAX_REQUEST_NUMBER = 2**31 - 1  # the numbers column is a 32-bit INTEGER


def parse_key(key: str) -> int:
    """``SR-12`` (any case) -> 12; a well-formed key beyond any stored number is simply not there."""
    match = _KEY.match(key or "")
    if not match:
        raise InvalidInput(f"{key!r} is not a request key like SR-12")
    number = int(match.group(1))
    if number > MAX_REQUEST_NUMBER:
        raise NotFound(f"there is no request SR-{number}")
    return number


def request_id_of(uow: UnitOfWork, key: str) -> int:
    """The id of the request named by ``key``, without locking it."""
    return request_id_in(uow.session, key)


def request_id_in(session: Session, key: str) -> int:
    """:func:`request_id_of` for any session, a read-only one included."""
    number = parse_key(key)
    request_id = session.execute(select(Request.id).where(Request.number == number)).scalar_one_or_none()
    if request_id is None:
        raise NotFound(f"there is no request SR-{number}")
    return request_id


def get_request(uow: UnitOfWork, key: str) -> Request:
    """The request named by ``key``, locked for the rest of the transaction."""
    number = parse_key(key)
    request = uow.lock_request_numbered(number)
    if request is None:
        raise NotFound(f"there is no request SR-{number}")
    return request


def disputed_of(request: Request) -> Money | None:
    """The amount in dispute recorded on a request, if any."""
    if request.disputed_amount_minor is None or request.disputed_currency is None:
        return None
    return Money(request.disputed_amount_minor, request.disputed_currency)


def get_agent(session: Session, slack_user_id: str) -> Agent:
    agent = session.execute(select(Agent).where(Agent.slack_user_id == (slack_user_id or "").strip())).scalar_one_or_none()
    if agent is None:
        raise NotFound(f"no agent has the Slack user id {slack_user_id!r}; add them with `supportdesk import agents`")
    return agent


def get_customer(session: Session, external_ref: str) -> Customer:
    customer = session.execute(select(Customer).where(Customer.external_ref == external_ref)).scalar_one_or_none()
    if customer is None:
        raise NotFound(f"there is no customer with reference {external_ref!r}")
    return customer


def find_customer_by_address(session: Session, address: str) -> Customer | None:
    """The customer that owns this exact address, or else its domain."""
    address = address.strip().lower()
    domain = address.rpartition("@")[2]
    rows = session.execute(
        select(CustomerAddress.kind, Customer)
        .join(Customer, Customer.id == CustomerAddress.customer_id)
        .where(
            ((CustomerAddress.kind == "email") & (CustomerAddress.value == address))
            | ((CustomerAddress.kind == "domain") & (CustomerAddress.value == domain))
        )
    ).all()
    by_kind = {kind: customer for kind, customer in rows}
    return by_kind.get("email") or by_kind.get("domain")


def agent_actor(agent: Agent) -> str:
    return f"{AGENT_ACTOR_PREFIX}{agent.slack_user_id}"


def latest_change(session: Session, request_id: int) -> ChangeView | None:
    """Who did what last: the request's latest audit event, with the agent's name when an agent did it."""
    row = session.execute(
        select(Event.kind, Event.actor, Event.created_at)
        .where(Event.request_id == request_id)
        .order_by(Event.seq.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    kind, actor, at = row
    name = None
    if actor.startswith(AGENT_ACTOR_PREFIX):
        name = session.execute(
            select(Agent.name).where(Agent.slack_user_id == actor.removeprefix(AGENT_ACTOR_PREFIX))
        ).scalar_one_or_none()
    return ChangeView(kind=kind, actor=actor, actor_name=name, at=at)


def last_change(session: Session, request: Request) -> str | None:
    """"by Alice (U1) at 2026-01-05 09:00:00 UTC (request.claimed)", from the request's latest event."""
    change = latest_change(session, request.id)
    if change is None:
        return None
    who = change.actor
    if change.actor_name is not None:
        who = f"{change.actor_name} ({change.actor.removeprefix(AGENT_ACTOR_PREFIX)})"
    return f"by {who} at {change.at.strftime('%Y-%m-%d %H:%M:%S')} UTC ({change.kind})"


def check_priority(priority: str) -> str:
    value = (priority or "").strip().lower()
    if value not in PRIORITIES:
        raise InvalidInput(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
    return value


def check_category(category: str) -> str:
    value = (category or "").strip().lower()
    if not _SLUG.match(value):
        raise InvalidInput(
            f"category {category!r} must be a lower-case word such as {', '.join(DEFAULT_CATEGORIES)}"
        )
    return value


def check_email(address: str, what: str = "address") -> str:
    value = (address or "").strip().lower()
    if not _EMAIL.match(value) or len(value) > 320:
        raise InvalidInput(f"{what} {address!r} is not an e-mail address")
    return value


def check_text(text: str | None, what: str, *, limit: int = 100_000) -> str:
    value = (text or "").strip()
    if not value:
        raise InvalidInput(f"{what} must not be empty")
    if len(value) > limit:
        raise InvalidInput(f"{what} is longer than {limit} characters")
    return value


def refuse_if_closed(request: Request, doing: str) -> None:
    if request.status == Status.CLOSED:
        merged = f" (merged into {request.merged_into.key})" if request.merged_into else ""
        raise TransitionRefused(f"{request.key} is closed{merged}: cannot {doing}")


def check_disputed(disputed: Money, invoice: Invoice | None) -> None:
    if disputed.minor <= 0:
        raise InvalidInput("the disputed amount must be more than zero")
    if invoice is None:
        return
    if disputed.currency != invoice.currency:
        raise InvalidInput(f"the disputed amount is in {disputed.currency} but invoice {invoice.number} is in {invoice.currency}")
    if disputed.minor > invoice.amount_minor:
        raise InvalidInput(
            f"the disputed amount {disputed} is more than invoice {invoice.number} "
            f"({format_minor(invoice.amount_minor, invoice.currency)} {invoice.currency})"
        )


def money_data(money: Money | None) -> dict[str, object] | None:
    return None if money is None else {"amount_minor": money.minor, "currency": money.currency}
