"""Opening requests and the messages on them: inbound mail, replies, internal notes."""

from __future__ import annotations

import re
from dataclasses import dataclass
from hashlib import sha256

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.authorization import require_agent
from core.errors import InvalidInput, NotFound
from core.lifecycle import Action, Status, next_status
from core.models import Agent, Attachment, Customer, Invoice, Message, Request
from core.money import Money
from core.services.common import (
    CHANNELS,
    agent_actor,
    check_category,
    check_disputed,
    check_email,
    check_priority,
    check_text,
    disputed_of,
    find_customer_by_address,
    get_agent,
    get_request,
    money_data,
    refuse_if_closed,
)
from core.store import Store, UnitOfWork
from core.reply_tokens import new_message_id, new_token
from core.views import MessageView, RequestView

MAX_SUBJECT = 998
_REPLY_PREFIX = re.compile(r"^\s*((re|fw|fwd|aw|sv|antw)\s*:\s*)+", re.IGNORECASE)


@dataclass(frozen=True)
class NewAttachment:
    filename: str
    content_type: str
    content: bytes
    is_inline: bool = False
    content_id: str | None = None


@dataclass(frozen=True)
class InboundMail:
    """A customer's message, already parsed by whichever front end received it."""

    from_address: str
    subject: str
    body_text: str
    message_id: str | None = None
    to_addresses: tuple[str, ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    attachments: tuple[NewAttachment, ...] = ()
    # What the e-mail gateway adds: the whole text when ``body_text`` is the
    # reply without its quoted history, the sender authentication verdict,
    # what it noticed, and whether a machine sent it.
    full_text: str | None = None
    auth_verdict: str | None = None
    auth_summary: str | None = None
    flags: tuple[str, ...] = ()
    is_automatic: bool = False


def open_request(
    store: Store,
    *,
    channel: str,
    mail: InboundMail,
    category: str | None = None,
    priority: str = "normal",
    actor: str | None = None,
    invoice_number: str | None = None,
    disputed: Money | None = None,
    link_customer: bool = True,
) -> RequestView:
    """Log a new request with its first message.

    ``actor`` is the Slack user id of the agent who typed it (channels slack
    and cli); for e-mail the customer is the actor. A message whose
    Message-ID is already stored returns the request it belongs to, unchanged,
    so a delivery repeated by a mail server is stored once.
    """
    if channel not in CHANNELS:
        raise InvalidInput(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
    requester = check_email(mail.from_address, "requester")
    subject = clean_subject(mail.subject)
    priority = check_priority(priority)
    with store.unit_of_work() as uow:
        existing = request_of_message(uow.session, mail.message_id)
        if existing is not None:
            return RequestView.of(existing)
        agent = _acting_agent(uow.session, channel, actor, "open a request")
        customer = find_customer_by_address(uow.session, requester) if link_customer else None
        invoice = _find_invoice(uow.session, invoice_number, customer, requester) if invoice_number else None
        if disputed is not None:
            check_disputed(disputed, invoice)
        if category is None:
            category = "billing_dispute" if invoice is not None or disputed is not None else "general"
        request = Request(
            subject=subject,
            channel=channel,
            category=check_category(category),
            priority=priority,
            requester_email=requester,
            customer=customer,
            opened_by=agent,
            invoice=invoice,
            disputed_amount_minor=disputed.minor if disputed else None,
            disputed_currency=disputed.currency if disputed else None,
        )
        log_new_request(uow, request, mail, agent)
        uow.commit()
        return RequestView.of(request)


def add_inbound_message(store: Store, key: str, mail: InboundMail, *, actor: str | None = None) -> RequestView:
    """A customer's reply on an existing request.

    It moves a request waiting on the customer back to assigned and reopens a
    resolved one. On a request merged into another it lands on the survivor;
    on a closed one it opens a new request that links back. Returns the
    request the message joined.
    """
    with store.unit_of_work() as uow:
        existing = request_of_message(uow.session, mail.message_id)
        if existing is not None:
            return RequestView.of(existing)
        agent = get_agent(uow.session, actor) if actor else None
        if agent is not None:
            require_agent(agent, "record a customer message")
        joined, _message = join_request(uow, get_request(uow, key), mail, agent)
        uow.commit()
        return RequestView.of(joined)


def join_request(
    uow: UnitOfWork, request: Request, mail: InboundMail, agent: Agent | None
) -> tuple[Request, Message]:
    """Put a customer's message on ``request`` inside the caller's transaction; returns where it landed.

    Merged requests forward to their survivor, a closed request gets a
    follow-up request, a resolved one reopens, one waiting on the customer
    goes back to assigned. Mail a machine sent (an out-of-office answer) is
    kept on the request but changes nothing and stops no clock.
    """
    request = _follow_merges(uow, request)
    if request.status == Status.CLOSED and not mail.is_automatic:
        return _open_follow_up(uow, request, mail, agent)
    message = _add_inbound(uow, request, mail, agent)
    actor = agent_actor(agent) if agent else f"customer:{message.from_address}"
    if mail.is_automatic:
        uow.record("message.automatic", actor=actor, request=request,
                   data={"from": message.from_address}, ids={"message_id": message})
        return request, message
    before = Status(request.status)
    after = next_status(request.key, before, Action.CUSTOMER_REPLIED)
    _apply_customer_reply(request, before, after, uow)
    uow.record(
        "request.customer_replied" if after != before else "message.inbound",
        actor=actor,
        request=request,
        data={"from": message.from_address, "status": {"from": before.value, "to": after.value}},
        ids={"message_id": message},
    )
    return request, message


def reply(store: Store, key: str, body: str, *, actor: str) -> MessageView:
    """A customer-visible reply; the e-mail outbox sends it.

    The Message-ID is made here, so the mail sent later (and any retry of it)
    carries the id the customer's answer will refer to.
    """
    text = check_text(body, "the reply")
    with store.unit_of_work() as uow:
        agent = get_agent(uow.session, actor)
        request = get_request(uow, key)
        require_agent(agent, f"reply on {request.key}")
        refuse_if_closed(request, "reply to the customer")
        last_inbound = uow.session.execute(
            select(Message)
            .where(Message.request_id == request.id, Message.direction == "inbound", Message.message_id.is_not(None))
            .order_by(Message.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        references = (last_inbound.references or "").split() + [last_inbound.message_id] if last_inbound else []
        message = Message(
            request=request,
            direction="outbound",
            message_id=new_message_id(token_of(request), store.settings.mail_domain),
            in_reply_to=last_inbound.message_id if last_inbound else None,
            references=" ".join(references[-20:]) or None,
            from_address=store.settings.support_addresses[0],
            to_addresses=request.requester_email,
            subject=reply_subject(request),
            body_text=text,
            author=agent,
            is_automatic=False,
            created_at=uow.now,
        )
        uow.session.add(message)
        if request.first_response_at is None:
            request.first_response_at = uow.now
        request.updated_at = uow.now
        uow.session.flush()
        uow.record(
            "message.outbound",
            actor=agent_actor(agent),
            request=request,
            data={"message_id": message.id, "rfc_message_id": message.message_id, "to": [request.requester_email]},
        )
        uow.commit()
        return MessageView.of(message)


def add_note(store: Store, key: str, body: str, *, actor: str) -> MessageView:
    """An internal note: never sent to the customer, allowed in every state."""
    text = check_text(body, "the note")
    with store.unit_of_work() as uow:
        agent = get_agent(uow.session, actor)
        request = get_request(uow, key)
        require_agent(agent, f"add a note to {request.key}")
        message = Message(
            request=request, direction="note", body_text=text, author=agent, is_automatic=False, created_at=uow.now
        )
        uow.session.add(message)
        request.updated_at = uow.now
        uow.session.flush()
        uow.record("message.note", actor=agent_actor(agent), request=request, data={"message_id": message.id})
        uow.commit()
        return MessageView.of(message)


def token_of(request: Request) -> str:
    """The request's reply token; requests logged before tokens existed get theirs from the migration."""
    assert request.reply_token, f"{request.key} has no reply token"
    return request.reply_token


def reply_subject(request: Request) -> str:
    base = _REPLY_PREFIX.sub("", request.subject).strip()
    tag = f"[{request.key}]"
    return f"Re: {base}" if tag in base else f"Re: {base} {tag}"


def clean_subject(subject: str) -> str:
    # CR/LF would let a subject become extra headers when it is mailed back.
    value = " ".join((subject or "").split())
    if not value:
        return "(no subject)"
    return value[:MAX_SUBJECT]


def _acting_agent(session: Session, channel: str, actor: str | None, doing: str) -> Agent | None:
    if channel == "email":
        return get_agent(session, actor) if actor else None
    if not actor:
        raise InvalidInput(f"a request opened via {channel} needs the agent who opens it (--as SLACK_USER_ID)")
    agent = get_agent(session, actor)
    require_agent(agent, doing)
    return agent


def request_of_message(session: Session, message_id: str | None) -> Request | None:
    if not message_id:
        return None
    return session.execute(
        select(Request).join(Message, Message.request_id == Request.id).where(Message.message_id == message_id)
    ).scalar_one_or_none()


def _find_invoice(session: Session, number: str, customer: Customer | None, requester: str) -> Invoice:
    invoice = session.execute(select(Invoice).where(Invoice.number == number.strip())).scalar_one_or_none()
    if invoice is None:
        raise NotFound(f"there is no invoice {number!r}")
    if customer is None:
        raise InvalidInput(
            f"invoice {invoice.number} cannot be linked: {requester} is not an address of any customer"
        )
    if invoice.customer_id != customer.id:
        raise InvalidInput(f"invoice {invoice.number} belongs to another customer, not {customer.external_ref}")
    return invoice


def _add_inbound(uow: UnitOfWork, request: Request, mail: InboundMail, agent: Agent | None) -> Message:
    """Add a customer's message to the session, unflushed: its id is known once the unit flushes.

    Events name it through ``ids`` (see :meth:`UnitOfWork.record`), so a unit
    that files a batch of mail inserts all its messages in one flush.
    """
    message = Message(
        request=request,
        direction="inbound",
        message_id=mail.message_id or None,
        in_reply_to=mail.in_reply_to,
        references=" ".join(mail.references) or None,
        from_address=check_email(mail.from_address, "sender"),
        to_addresses=",".join(mail.to_addresses) or None,
        subject=clean_subject(mail.subject),
        body_text=mail.body_text or "",
        full_text=mail.full_text if mail.full_text and mail.full_text != mail.body_text else None,
        auth_verdict=mail.auth_verdict,
        auth_summary=(mail.auth_summary or "")[:500] or None,
        flags=" ".join(mail.flags)[:500] or None,
        author=agent,
        is_automatic=mail.is_automatic,
        created_at=uow.now,
    )
    for item in mail.attachments:
        message.attachments.append(
            Attachment(
                filename=item.filename or "attachment",
                content_type=item.content_type or "application/octet-stream",
                size=len(item.content),
                sha256=sha256(item.content).hexdigest(),
                content=item.content,
                is_inline=item.is_inline,
                content_id=item.content_id,
            )
        )
    uow.session.add(message)
    return message


def _apply_customer_reply(request: Request, before: Status, after: Status, uow: UnitOfWork) -> None:
    request.status = after.value
    request.updated_at = uow.now
    if before == Status.RESOLVED:
        request.reopen_count += 1
        request.resolved_at = None


def _follow_merges(uow: UnitOfWork, request: Request) -> Request:
    """A merged request forwards its mail to the one it was merged into."""
    seen = {request.id}
    while request.merged_into_id is not None and request.merged_into_id not in seen:
        seen.add(request.merged_into_id)
        request = uow.lock_request(request.merged_into_id)
    return request


def _open_follow_up(
    uow: UnitOfWork, closed: Request, mail: InboundMail, agent: Agent | None
) -> tuple[Request, Message]:
    """A reply to a closed request becomes a new request that points back to it."""
    request = Request(
        subject=clean_subject(mail.subject),
        channel="email",
        category=closed.category,
        priority=closed.priority,
        requester_email=check_email(mail.from_address, "sender"),
        customer=closed.customer,
        follows_up=closed,
    )
    return request, log_new_request(uow, request, mail, agent)


def log_new_request(
    uow: UnitOfWork,
    request: Request,
    mail: InboundMail,
    agent: Agent | None,
    *,
    acknowledge: bool = True,
    extra: dict[str, object] | None = None,
) -> Message:
    """Number a new request, store its first message and record its one ``request.opened`` event.

    ``acknowledge`` False keeps the automatic acknowledgment from being
    mailed (machine mail, rate limits, released quarantine).
    """
    request.number = uow.next_request_number()
    request.reply_token = new_token()
    request.status = Status.NEW.value
    request.created_at = request.updated_at = uow.now
    uow.session.add(request)
    message = _add_inbound(uow, request, mail, agent)
    uow.record(
        "request.opened",
        actor=agent_actor(agent) if agent else f"customer:{request.requester_email}",
        request=request,
        data={
            "key": request.key,
            "channel": request.channel,
            "subject": request.subject,
            "requester": request.requester_email,
            "customer_ref": request.customer.external_ref if request.customer else None,
            "category": request.category,
            "priority": request.priority,
            "invoice": request.invoice.number if request.invoice else None,
            "disputed_amount": money_data(disputed_of(request)),
            "follows_up": request.follows_up.key if request.follows_up else None,
            "status": {"from": None, "to": Status.NEW.value},
            "acknowledge": acknowledge and request.channel == "email" and not mail.is_automatic,
            **({"flags": list(mail.flags)} if mail.flags else {}),
            **({"auth": mail.auth_verdict} if mail.auth_verdict else {}),
            **(extra or {}),
        },
        ids={"message_id": message},
    )
    return message
