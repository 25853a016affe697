"""The e-mail gateway's side of the store: accept raw mail, file it, quarantine it.

Acceptance stands between the end of SMTP DATA and the ``250``, so it is one
INSERT per message, batched, with no parsing and no audit event: the raw
bytes are immutable evidence, keyed by their SHA-256, and a delivery the
sending server repeats is stored once. Filing happens afterwards, one message
per transaction: it opens or joins a request, or quarantines the message with
a reason code, and marks the raw row filed in the same commit, so a crash at
any point files every message exactly once.

The gateway (``intake``) reads the bytes; this module decides, with the store
at hand, what they mean: which request a reply belongs to, which customer
wrote, whether an invoice number is theirs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.authorization import require_agent
from core.errors import InvalidInput, NotFound, TransitionRefused
from core.models import AddressHealth, Customer, Invoice, Message, ReceivedMail, Request
from core.money import Money
from core.reply_tokens import (
    is_postmaster,
    support_domains,
    token_in_address,
    token_in_message_id,
)
from core.services.common import agent_actor, check_disputed, find_customer_by_address, get_agent
from core.services.correspondence import (
    InboundMail,
    clean_subject,
    join_request,
    log_new_request,
    request_of_message,
)
from core.store import Store, UnitOfWork, translate_store_errors
from core.views import QuarantinedMailView

SYSTEM_ACTOR = "system:mail-gateway"
MAX_FILING_ATTEMPTS = 5

# Why a message did not open or join a normal request.
QUARANTINE_REASONS = {
    "loop": "it carries our own loop header or comes from our own address",
    "bounce": "a delivery failure report",
    "auto_reply": "an automatic reply (out of office, auto-responder, read receipt)",
    "list_mail": "mailing-list or bulk mail",
    "null_sender": "sent with an empty envelope sender, as only machines do",
    "mailer_daemon": "sent by a mailer daemon or postmaster",
    "too_many_hops": "it passed through too many mail servers, likely a loop",
    "postmaster": "addressed to postmaster only",
    "no_sender": "it has no usable sender address",
    "rate_limited": "its sender opened too many requests in the last hour",
    "unparseable": "the message could not be read; the raw bytes are kept",
    "processing_failed": "filing it failed repeatedly; the raw bytes are kept",
}


@dataclass(frozen=True)
class RawMail:
    """One message as received: bytes and envelope, nothing interpreted."""

    raw: bytes
    envelope_from: str | None  # "" is the null sender; None when unknown (a file)
    recipients: tuple[str, ...]
    peer: str | None = None
    helo: str | None = None
    source: str = "smtp"


@dataclass(frozen=True)
class StoredRawMail:
    id: int
    raw: bytes
    envelope_from: str | None
    recipients: tuple[str, ...]
    status: str
    released: bool


@dataclass(frozen=True)
class IncomingMail:
    """What the gateway read from one stored raw message."""

    mail: InboundMail
    automatic: str | None = None  # a machine-mail reason code, see QUARANTINE_REASONS
    bounced_recipients: tuple[str, ...] = ()
    bounced_message_ids: tuple[str, ...] = ()
    subject_keys: tuple[int, ...] = ()
    invoice_numbers: tuple[str, ...] = ()
    amounts: tuple[Money, ...] = ()


@dataclass(frozen=True)
class FilingResult:
    inbound_id: int
    outcome: str  # opened, joined, duplicate, quarantined; in_progress while another processor files it
    request_key: str | None = None
    reason: str | None = None
    matched_by: str | None = None


def accept_raw_mail(store: Store, items: Sequence[RawMail]) -> int:
    """Commit ``items`` in one transaction; returns how many were new.

    A message whose exact bytes are already stored is a no-op, so a sending
    server that retries after a lost ``250`` gets ``250`` again and the
    message is still stored once.
    """
    if not items:
        return 0
    now = store.clock.now()
    unique: dict[str, RawMail] = {}
    for item in items:
        unique.setdefault(hashlib.sha256(item.raw).hexdigest(), item)
    rows = [
        {
            "sha256": digest,
            "raw": item.raw,
            "size": len(item.raw),
            "source": item.source,
            "envelope_from": item.envelope_from,
            "recipients": "\n".join(item.recipients),
            "peer": (item.peer or "")[:255] or None,
            "helo": (item.helo or "")[:255] or None,
            "received_at": now,
            "status": "received",
            "attempts": 0,
        }
        for digest, item in unique.items()
    ]
    insert = sqlite_insert if store.is_sqlite else pg_insert
    statement = insert(ReceivedMail).on_conflict_do_nothing(index_elements=["sha256"]).returning(ReceivedMail.id)
    with translate_store_errors(), store.engine.begin() as connection:
        return len(connection.execute(statement, rows).all())


def pending_inbound_ids(store: Store, limit: int = 100, after_id: int = 0) -> list[int]:
    """Raw messages not filed yet, oldest first."""
    with store.read() as session:
        return list(
            session.execute(
                select(ReceivedMail.id)
                .where(ReceivedMail.status == "received", ReceivedMail.id > after_id)
                .order_by(ReceivedMail.id)
                .limit(limit)
            ).scalars()
        )


def load_inbound(store: Store, inbound_id: int) -> StoredRawMail:
    with store.read() as session:
        row = session.get(ReceivedMail, inbound_id)
        if row is None:
            raise NotFound(f"there is no received mail {inbound_id}")
        return StoredRawMail(
            id=row.id,
            raw=row.raw,
            envelope_from=row.envelope_from,
            recipients=tuple(r for r in row.recipients.split("\n") if r),
            status=row.status,
            released=row.released_at is not None,
        )


def file_inbound(store: Store, inbound_id: int, incoming: IncomingMail) -> FilingResult:
    """Open or join a request for a received message, or quarantine it; mark it filed. One transaction.

    A message filed already (another processor was quicker) is left as it
    is and its earlier result returned.
    """
    with store.unit_of_work() as uow:
        row = _claim(uow, inbound_id)
        if row is None:
            return _earlier_result(uow, inbound_id)
        result = _file(uow, row, incoming)
        row.processed_at = uow.now
        uow.commit()
        return result


def quarantine_unreadable(store: Store, inbound_id: int, reason: str, error: str) -> FilingResult:
    """Set a message aside whose bytes could not be read (``unparseable``), with the raw kept."""
    with store.unit_of_work() as uow:
        row = _claim(uow, inbound_id)
        if row is None:
            return _earlier_result(uow, inbound_id)
        row.last_error = error[:2000]
        result = _quarantine(uow, row, reason, None)
        row.processed_at = uow.now
        uow.commit()
        return result


def record_filing_failure(store: Store, inbound_id: int, error: str) -> bool:
    """Count a failed attempt at filing; after :data:`MAX_FILING_ATTEMPTS` the message is quarantined.

    Returns True when it was quarantined. One poison message must never
    hold up the mail behind it, and must never be dropped either.
    """
    with store.unit_of_work() as uow:
        row = _claim(uow, inbound_id)
        if row is None:
            return False
        row.attempts += 1
        row.last_error = error[:2000]
        quarantined = row.attempts >= MAX_FILING_ATTEMPTS
        if quarantined:
            _quarantine(uow, row, "processing_failed", None)
            row.processed_at = uow.now
        uow.commit()
        return quarantined


def list_quarantine(store: Store, *, include_released: bool = False, limit: int = 500) -> list[QuarantinedMailView]:
    """Messages set aside, newest first, each with its reason code."""
    with store.read() as session:
        query = select(ReceivedMail, Request.number).outerjoin(Request, Request.id == ReceivedMail.request_id)
        if include_released:
            query = query.where((ReceivedMail.outcome == "quarantined") | ReceivedMail.released_at.is_not(None))
        else:
            query = query.where(ReceivedMail.status == "quarantined")
        rows = session.execute(query.order_by(ReceivedMail.id.desc()).limit(limit)).all()
        return [QuarantinedMailView.of(row, f"SR-{number}" if number else None) for row, number in rows]


def release_quarantined(store: Store, inbound_id: int, *, actor: str) -> QuarantinedMailView:
    """An agent says a quarantined message is real customer mail: file it again, without the checks that held it.

    The message is filed like any other (duplicates are still caught) but
    never acknowledged automatically, since a machine may have sent it.
    """
    with store.unit_of_work() as uow:
        agent = get_agent(uow.session, actor)
        require_agent(agent, "release quarantined mail")
        row = uow.session.execute(
            select(ReceivedMail).where(ReceivedMail.id == inbound_id).with_for_update()
        ).scalar_one_or_none()
        if row is None:
            raise NotFound(f"there is no quarantined mail {inbound_id}")
        if row.status != "quarantined":
            raise TransitionRefused(f"mail {inbound_id} is not in quarantine (it was {row.outcome or row.status})")
        uow.record(
            "mail.released",
            actor=agent_actor(agent),
            request=None,
            data={"inbound_mail": row.id, "reason": row.reason, "sha256": row.sha256},
        )
        row.status = "received"
        row.released_at = uow.now
        row.released_by = agent.slack_user_id
        row.attempts = 0
        uow.commit()
        return QuarantinedMailView.of(row, None)


def address_is_failing(store: Store, address: str) -> bool:
    with store.read() as session:
        health = session.get(AddressHealth, address.strip().lower())
        return bool(health and health.failing)


# --- filing -------------------------------------------------------------------------------------


def _claim(uow: UnitOfWork, inbound_id: int) -> ReceivedMail | None:
    """The raw row, locked, if it still waits to be filed (SKIP LOCKED: several processors may run)."""
    query = select(ReceivedMail).where(ReceivedMail.id == inbound_id, ReceivedMail.status == "received")
    if not uow.store.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    return uow.session.execute(query).scalar_one_or_none()


def _earlier_result(uow: UnitOfWork, inbound_id: int) -> FilingResult:
    """What became of a message this call could not claim; ``in_progress`` while another processor holds it."""
    row = uow.session.get(ReceivedMail, inbound_id)
    if row is None:
        raise NotFound(f"there is no received mail {inbound_id}")
    if row.status == "received":
        return FilingResult(row.id, "in_progress")
    key = None
    if row.request_id is not None:
        key = uow.session.get(Request, row.request_id).key  # type: ignore[union-attr]
    return FilingResult(row.id, row.outcome or row.status, key, row.reason, row.matched_by)


def _file(uow: UnitOfWork, row: ReceivedMail, incoming: IncomingMail) -> FilingResult:
    settings = uow.store.settings
    mail = incoming.mail
    released = row.released_at is not None
    sender = (mail.from_address or row.envelope_from or "").strip().lower()
    row.message_id = (mail.message_id or "")[:998] or None
    row.from_address = sender[:320] or None
    row.subject = " ".join((mail.subject or "").split())[:998] or None

    existing = request_of_message(uow.session, mail.message_id)
    if existing is not None:
        return _finish(row, "duplicate", existing, reason="duplicate_message_id")

    if not released:
        held = _held_back(uow, row, incoming, sender)
        if held is not None:
            reason, related = held
            return _quarantine(uow, row, reason, related)

    mail = replace(mail, from_address=sender)
    request, matched_by = _thread(uow, row, incoming, sender)
    automatic = incoming.automatic is not None and not released
    if request is not None:
        mail = replace(mail, is_automatic=automatic)
        landed, message = join_request(uow, request, mail, None)
        if not automatic:
            _clear_failing(uow, sender)
        return _finish(row, "joined", landed, matched_by=matched_by, reason=incoming.automatic if automatic else None,
                       message=message)
    if automatic:
        return _quarantine(uow, row, incoming.automatic or "auto_reply", None)
    if not released and _recent_requests(uow, sender) >= settings.new_requests_per_sender_hour:
        return _quarantine(uow, row, "rate_limited", None)
    request, message = _open(uow, row, incoming, mail, sender, released)
    _clear_failing(uow, sender)
    return _finish(row, "opened", request, message=message)


def _held_back(
    uow: UnitOfWork, row: ReceivedMail, incoming: IncomingMail, sender: str
) -> tuple[str, Request | None] | None:
    """Why a message must not reach a request as customer mail, checked before threading."""
    settings = uow.store.settings
    if incoming.automatic == "loop" or sender in settings.support_addresses:
        return "loop", None
    if incoming.automatic == "bounce":
        return "bounce", _note_bounce(uow, incoming)
    recipients = [r for r in row.recipients.split("\n") if r]
    if recipients and all(is_postmaster(r, settings.support_addresses) for r in recipients):
        return "postmaster", None
    if not sender or "@" not in sender:
        return "no_sender", None
    return None


def _note_bounce(uow: UnitOfWork, incoming: IncomingMail) -> Request | None:
    """Mark the addresses our own mail bounced from; a bounce of somebody else's mail changes nothing."""
    domains = support_domains(uow.store.settings.support_addresses)
    tokens = [t for t in (token_in_message_id(m, domains) for m in incoming.bounced_message_ids) if t]
    if not tokens:
        return None
    request = uow.session.execute(select(Request).where(Request.reply_token == tokens[0])).scalar_one_or_none()
    for address in incoming.bounced_recipients:
        address = address.strip().lower()[:320]
        health = uow.session.get(AddressHealth, address)
        if health is None:
            health = AddressHealth(address=address, failures=0, first_failed_at=uow.now)
            uow.session.add(health)
        health.failing = True
        health.failures = (health.failures or 0) + 1
        health.last_failed_at = uow.now
        health.cleared_at = None
        health.last_reason = f"our mail {', '.join(incoming.bounced_message_ids[:3])} bounced"[:1000]
        uow.record("mail.address_failing", actor=SYSTEM_ACTOR, request=None,
                   data={"address": address, "request": request.key if request else None})
    return request


def _clear_failing(uow: UnitOfWork, sender: str) -> None:
    health = uow.session.get(AddressHealth, sender)
    if health is not None and health.failing:
        health.failing = False
        health.cleared_at = uow.now


def _thread(
    uow: UnitOfWork, row: ReceivedMail, incoming: IncomingMail, sender: str
) -> tuple[Request | None, str | None]:
    """The request this message answers, and how we know: reply token, header, or a trusted subject tag."""
    settings = uow.store.settings
    mail = incoming.mail
    session = uow.session
    addresses = [r for r in row.recipients.split("\n") if r] + list(mail.to_addresses)
    for address in addresses:
        token = token_in_address(address, settings.support_addresses)
        if token is not None:
            request = _by_token(uow, token)
            if request is not None:
                return request, "reply_token"
    ids = [i for i in (mail.in_reply_to, *reversed(mail.references)) if i]
    domains = support_domains(settings.support_addresses)
    for message_id in ids:
        token = token_in_message_id(message_id, domains)
        request = _by_token(uow, token) if token else None
        if request is None:
            request = request_of_message(session, message_id)
        if request is not None:
            return uow.lock_request(request.id), "header"
    for number in incoming.subject_keys:
        request = session.execute(select(Request).where(Request.number == number)).scalar_one_or_none()
        if request is not None and _may_use_tag(uow, request, sender):
            return uow.lock_request(request.id), "subject_tag"
    return None, None


def _by_token(uow: UnitOfWork, token: str) -> Request | None:
    request_id = uow.session.execute(select(Request.id).where(Request.reply_token == token)).scalar_one_or_none()
    return uow.lock_request(request_id) if request_id is not None else None


def _may_use_tag(uow: UnitOfWork, request: Request, sender: str) -> bool:
    """A ``[SR-12]`` tag is easy to type: trust it only from the requester or the same customer."""
    if sender == request.requester_email:
        return True
    if request.customer_id is None:
        return False
    customer = find_customer_by_address(uow.session, sender)
    return customer is not None and customer.id == request.customer_id


def _recent_requests(uow: UnitOfWork, sender: str) -> int:
    since = uow.now - timedelta(hours=1)
    return uow.session.execute(
        select(func.count())
        .select_from(Request)
        .where(Request.requester_email == sender, Request.channel == "email", Request.created_at >= since)
    ).scalar_one()


def _open(
    uow: UnitOfWork, row: ReceivedMail, incoming: IncomingMail, mail: InboundMail, sender: str, released: bool
) -> tuple[Request, Message]:
    """A new request: customer by address then domain, invoice and disputed amount if they are the customer's."""
    flags: list[str] = list(mail.flags)
    extra: dict[str, object] = {"inbound_mail": row.id}
    customer = find_customer_by_address(uow.session, sender)
    if customer is None:
        flags.append("unknown_sender")
    elif customer.kyc_status == "verified" and mail.auth_verdict != "pass":
        # A forged From: must never reach a verified customer's money.
        flags.append("unverified_sender")
        extra["candidate_customer"] = customer.external_ref
        customer = None
    invoice, disputed = _finance(uow, incoming, customer, flags, extra)
    request = Request(
        subject=clean_subject(mail.subject),
        channel="email",
        category="billing_dispute" if invoice is not None else "general",
        priority="normal",
        requester_email=sender,
        customer=customer,
        invoice=invoice,
        disputed_amount_minor=disputed.minor if disputed else None,
        disputed_currency=disputed.currency if disputed else None,
    )
    if released:
        extra["released_by"] = row.released_by
    acknowledge = (
        not released
        and _recent_requests(uow, sender) < uow.store.settings.acks_per_sender_hour
        and not _is_failing(uow, sender)
    )
    mail = replace(mail, flags=tuple(dict.fromkeys(flags)))
    message = log_new_request(uow, request, mail, None, acknowledge=acknowledge, extra=extra)
    return request, message


def _finance(
    uow: UnitOfWork,
    incoming: IncomingMail,
    customer: Customer | None,
    flags: list[str],
    extra: dict[str, object],
) -> tuple[Invoice | None, Money | None]:
    """The first invoice number that is this customer's, and an amount in its currency that fits it."""
    invoice: Invoice | None = None
    unmatched: list[str] = []
    for number in incoming.invoice_numbers:
        found = uow.session.execute(select(Invoice).where(Invoice.number == number)).scalar_one_or_none()
        if found is not None and customer is not None and found.customer_id == customer.id and invoice is None:
            invoice = found
        elif found is None or customer is None or found.customer_id != customer.id:
            unmatched.append(number)
    if unmatched:
        flags.append("invoice_not_found")
        extra["unmatched_invoices"] = unmatched[:10]
    if invoice is None:
        return None, None
    for amount in incoming.amounts:
        try:
            check_disputed(amount, invoice)
        except InvalidInput:
            continue
        return invoice, amount
    if incoming.amounts:
        flags.append("amount_not_used")
    return invoice, None


def _is_failing(uow: UnitOfWork, address: str) -> bool:
    health = uow.session.get(AddressHealth, address)
    return bool(health and health.failing)


def _quarantine(uow: UnitOfWork, row: ReceivedMail, reason: str, related: Request | None) -> FilingResult:
    uow.record(
        "mail.quarantined",
        actor=SYSTEM_ACTOR,
        request=None,
        data={
            "inbound_mail": row.id,
            "reason": reason,
            "sha256": row.sha256,
            "from": row.from_address,
            "related_request": related.key if related else None,
        },
    )
    row.status = "quarantined"
    row.outcome = "quarantined"
    row.reason = reason
    row.request_id = related.id if related else None
    return FilingResult(row.id, "quarantined", related.key if related else None, reason)


def _finish(
    row: ReceivedMail,
    outcome: str,
    request: Request,
    *,
    reason: str | None = None,
    matched_by: str | None = None,
    message: Message | None = None,
) -> FilingResult:
    row.status = "processed"
    row.outcome = outcome
    row.reason = reason
    row.matched_by = matched_by
    row.request_id = request.id
    row.message_row_id = message.id if message is not None else None
    return FilingResult(row.id, outcome, request.key, reason, matched_by)

