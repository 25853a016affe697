"""Delivery state of the outbox: claiming due rows, marking them sent, retried or failed.

The outbox rows themselves are written by the unit of work together with
their cause (see ``core.store``); this module is the only writer of how far
their delivery got. Each function is one short transaction, so a delivery
worker never holds a database transaction open while it talks to a mail
relay or to Slack.

Claiming takes a *lease*: a claimed row gets ``attempts + 1`` and
``next_attempt_at = now + lease``. A worker that crashes mid-send leaves the
row pending, and it comes due again when the lease runs out; two workers
never hold the same row at once (PostgreSQL: ``FOR UPDATE SKIP LOCKED``;
SQLite: write transactions start with ``BEGIN IMMEDIATE`` and so queue).
Delivery is therefore at least once, which is why our e-mail Message-IDs are
fixed per row: a repeated send is recognisably the same mail.

The lease is short (:data:`LEASE_SECONDS`) so that rows a killed worker held
are soon due for the others, and a worker going through a long pass (Slack's
pace is about one message a second a channel) renews it on the rows still
ahead of it (:class:`PassLease`).

:func:`outgoing_email` reads everything one e-mail needs into a frozen view,
so the renderer in ``notifications`` never touches the database.

:func:`list_outbox` and :func:`retry_outbox_row` are the outbox as a person
sees it (``supportdesk outbox list`` and ``outbox retry``): what is waiting or
has failed and why, and a way to send a failed row again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.authorization import require_agent
from core.errors import InvalidInput, NotFound
from core.models import AddressHealth, Agent, Event, Message, OutboxMessage, Request
from core.reply_tokens import stable_message_id
from core.services.common import agent_actor, get_agent
from core.services.correspondence import reply_subject, token_of
from core.store import Store, UnitOfWork
from core.views import iso

EMAIL_TOPICS = ("acknowledgment", "reply", "resolution_notice", "waiting_reminder")
# Mail nobody typed; RFC 3834 asks such mail to say so (Auto-Submitted).
AUTOMATIC_TOPICS = frozenset({"acknowledgment", "resolution_notice", "waiting_reminder"})
FIRST_RETRY_SECONDS = 30
MAX_RETRY_SECONDS = 3600
MAX_ERROR_LENGTH = 2000
# How long a claimed row is a worker's alone: after a kill -9, how long its rows wait for another worker. It is
# renewed between the messages of a pass, so it must outlast the slowest single send: a Slack call with its
# retries and a Retry-After, or a relay answering each SMTP command just inside its 30 s timeout.
LEASE_SECONDS = 120
OUTBOX_STATUSES = ("pending", "sent", "failed")
OUTBOX_CHANNELS = ("email", "slack")


@dataclass(frozen=True)
class OutboxItem:
    """One claimed outbox row, as plain data."""

    id: int
    channel: str
    topic: str
    request_id: int | None
    payload: dict[str, Any]
    attempts: int


@dataclass(frozen=True)
class OutgoingEmail:
    """Everything needed to render and address one e-mail; values are as stored, not yet made header-safe.

    ``subject`` is the Subject line itself (the stored reply's, or
    ``Re: <request subject> [SR-n]`` for the automatic mail);
    ``request_subject`` is the request's own subject, for the text to echo.
    """

    outbox_id: int
    topic: str
    request_key: str
    request_subject: str
    subject: str
    to_addresses: tuple[str, ...]
    reply_token: str
    customer_name: str | None
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]
    body_text: str | None
    author_name: str | None
    resolution_note: str | None
    is_automatic: bool
    failing_addresses: tuple[str, ...]
    date: datetime

    @property
    def is_recipient_failing(self) -> bool:
        """Whether our mail has bounced from a recipient and nothing has come from it since."""
        return bool(self.failing_addresses)


@dataclass(frozen=True)
class OutboxRowView:
    """One outbox row as a person reads it (``supportdesk outbox list``); times are UTC."""

    id: int
    channel: str
    topic: str
    status: str
    request_key: str | None
    attempts: int
    created_at: datetime
    next_attempt_at: datetime
    sent_at: datetime | None
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "channel": self.channel,
            "topic": self.topic,
            "status": self.status,
            "request_key": self.request_key,
            "attempts": self.attempts,
            "created_at": iso(self.created_at),
            "next_attempt_at": iso(self.next_attempt_at),
            "sent_at": iso(self.sent_at),
            "last_error": self.last_error,
        }

    @classmethod
    def of(cls, row: OutboxMessage, request_key: str | None) -> OutboxRowView:
        """``request_key`` is the request's own key, used when the payload does not name one."""
        named = _payload_of(row).get("request_key")
        return cls(
            id=row.id,
            channel=row.channel,
            topic=row.topic,
            status=row.status,
            request_key=named if isinstance(named, str) and named else request_key,
            attempts=row.attempts,
            created_at=row.created_at,
            next_attempt_at=row.next_attempt_at,
            sent_at=row.sent_at,
            last_error=row.last_error,
        )


# --- claiming and marking -------------------------------------------------------------------


def claim_due(store: Store, channel: str, limit: int = 50, lease_seconds: int = LEASE_SECONDS) -> list[OutboxItem]:
    """Lease up to ``limit`` due rows of ``channel``, oldest first."""
    with store.unit_of_work() as uow:
        query = (
            select(OutboxMessage)
            .where(
                OutboxMessage.channel == channel,
                OutboxMessage.status == "pending",
                OutboxMessage.next_attempt_at <= uow.now,
            )
            .order_by(OutboxMessage.id)
            .limit(limit)
        )
        if not store.is_sqlite:
            query = query.with_for_update(skip_locked=True)
        rows = list(uow.session.execute(query).scalars())
        for row in rows:
            row.attempts += 1
            row.next_attempt_at = uow.now + timedelta(seconds=lease_seconds)
        items = [_item_of(row) for row in rows]
        uow.commit()
        return items


def extend_lease(store: Store, items: Sequence[OutboxItem], lease_seconds: int = LEASE_SECONDS) -> None:
    """Keep rows this worker still holds leased for ``lease_seconds`` from now (see :class:`PassLease`).

    A row whose attempt count moved on was claimed again by another worker
    after our lease ran out, and one no longer pending was settled: both are
    left alone.
    """
    if not items:
        return
    with store.unit_of_work() as uow:
        for item in items:
            row = _locked_row(uow, item.id)
            if row.status == "pending" and row.attempts == item.attempts:
                row.next_attempt_at = uow.now + timedelta(seconds=lease_seconds)
        uow.commit()


class PassLease:
    """When a worker halfway through a pass should renew the lease on the rows ahead of it.

    Wall-clock time on the worker's own monotonic clock: a pass is claimed,
    then every :meth:`due` that answers True is followed by one
    :func:`extend_lease` on the rows not yet tried, and :meth:`renewed`.
    """

    def __init__(self, lease_seconds: int = LEASE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = lease_seconds
        self._clock = clock
        self._since = clock()

    def due(self) -> bool:
        """Half the lease has gone by since the claim or the last renewal."""
        return self._clock() - self._since >= self._seconds / 2

    def renewed(self) -> None:
        self._since = self._clock()


def release(store: Store, items: Sequence[OutboxItem]) -> None:
    """Give back rows leased but not tried (the worker is stopping): due again at once, the attempt not counted.

    Without it a stopping worker had two bad choices: deliver its whole
    leased batch first (Slack's pace made that most of a minute), or leave
    the rows to wait out their lease before any other worker could take them.
    A row whose attempt count moved on was claimed again by another worker
    after our lease ran out: it is theirs now and left alone.
    """
    if not items:
        return
    with store.unit_of_work() as uow:
        for item in items:
            row = _locked_row(uow, item.id)
            if row.status != "pending" or row.attempts != item.attempts:
                continue
            row.attempts = max(0, row.attempts - 1)
            row.next_attempt_at = uow.now
        uow.commit()


def mark_sent(store: Store, outbox_id: int) -> None:
    """The relay (or Maildir) took it: never claimed again. Wins over any other worker's report."""
    with store.unit_of_work() as uow:
        row = _locked_row(uow, outbox_id)
        row.status = "sent"
        row.sent_at = uow.now
        row.last_error = None
        uow.commit()


def mark_retry(store: Store, outbox_id: int, error: str, delay_seconds: int) -> None:
    """Keep the row pending, due again after ``delay_seconds``, with the reason it did not go out."""
    with store.unit_of_work() as uow:
        row = _locked_row(uow, outbox_id)
        if row.status == "sent":
            return  # a worker whose lease ran out got it through meanwhile
        row.status = "pending"
        row.last_error = error[:MAX_ERROR_LENGTH]
        row.next_attempt_at = uow.now + timedelta(seconds=delay_seconds)
        uow.commit()


def mark_failed(store: Store, outbox_id: int, error: str) -> None:
    """Give up on the row; it stays in the outbox with its error for a person to look at."""
    with store.unit_of_work() as uow:
        row = _locked_row(uow, outbox_id)
        if row.status == "sent":
            return  # a worker whose lease ran out got it through meanwhile
        row.status = "failed"
        row.last_error = error[:MAX_ERROR_LENGTH]
        uow.commit()


def retry_delay(attempts: int) -> int:
    """Seconds to wait after failed attempt number ``attempts``: 30, 60, 120 ... at most an hour."""
    doublings = min(max(attempts, 1) - 1, 16)
    return min(FIRST_RETRY_SECONDS * 2**doublings, MAX_RETRY_SECONDS)


def _item_of(row: OutboxMessage) -> OutboxItem:
    return OutboxItem(
        id=row.id,
        channel=row.channel,
        topic=row.topic,
        request_id=row.request_id,
        payload=json.loads(row.payload or "{}"),
        attempts=row.attempts,
    )


def _locked_row(uow: UnitOfWork, outbox_id: int) -> OutboxMessage:
    row = uow.session.get(OutboxMessage, outbox_id, with_for_update=True)
    if row is None:
        raise NotFound(f"there is no outbox row {outbox_id}")
    return row


def _payload_of(row: OutboxMessage) -> dict[str, Any]:
    try:
        payload = json.loads(row.payload or "{}")
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


# --- the outbox as people see it --------------------------------------------------------------


def list_outbox(
    store: Store, *, status: str | None = None, channel: str | None = None, limit: int = 100
) -> list[OutboxRowView]:
    """Outbox rows, newest first.

    ``status`` is ``pending``, ``sent`` or ``failed``; ``None`` means every
    row not sent yet (pending and failed). ``channel`` is ``email`` or
    ``slack``; ``None`` means both.
    """
    if status is not None and status not in OUTBOX_STATUSES:
        raise InvalidInput(f"outbox status {status!r} is not one of {', '.join(OUTBOX_STATUSES)}")
    if channel is not None and channel not in OUTBOX_CHANNELS:
        raise InvalidInput(f"outbox channel {channel!r} is not one of {', '.join(OUTBOX_CHANNELS)}")
    if limit < 1:
        raise InvalidInput(f"the limit must be at least 1, not {limit}")
    query = select(OutboxMessage, Request.number).outerjoin(Request, Request.id == OutboxMessage.request_id)
    if status is None:
        query = query.where(OutboxMessage.status != "sent")
    else:
        query = query.where(OutboxMessage.status == status)
    if channel is not None:
        query = query.where(OutboxMessage.channel == channel)
    query = query.order_by(OutboxMessage.id.desc()).limit(limit)
    with store.read() as session:
        return [OutboxRowView.of(row, f"SR-{number}" if number is not None else None)
                for row, number in session.execute(query)]


def retry_outbox_row(store: Store, outbox_id: int, *, actor: str) -> OutboxRowView:
    """Send a row again: it becomes pending, due now, with a fresh count of attempts.

    Only a ``failed`` row, or a ``pending`` one waiting for a later attempt,
    can be retried; a sent row, or a pending one that is due already, is
    refused. ``last_error`` stays until the next attempt replaces it.
    ``actor`` is the Slack user id of the agent asking, as for every action;
    the ``outbox.retried`` audit event names them.
    """
    with store.unit_of_work() as uow:
        agent = get_agent(uow.session, actor)
        require_agent(agent, "retry outbox rows")
        row = _locked_row(uow, outbox_id)
        if row.status == "sent":
            raise InvalidInput(
                f"outbox row {outbox_id} was sent at {iso(row.sent_at)}; only a failed or waiting row can be retried")
        if row.status == "pending" and row.next_attempt_at <= uow.now:
            raise InvalidInput(
                f"outbox row {outbox_id} is pending and due already; the delivery worker sends it on its next round")
        request = uow.lock_request(row.request_id) if row.request_id is not None else None
        uow.record(
            "outbox.retried",
            actor=agent_actor(agent),
            request=request,
            data={"outbox_id": row.id, "channel": row.channel, "topic": row.topic},
        )
        row.status = "pending"
        row.attempts = 0
        row.next_attempt_at = uow.now
        view = OutboxRowView.of(row, request.key if request is not None else None)
        uow.commit()
        return view


# --- the e-mail view ------------------------------------------------------------------------


def outgoing_email(store: Store, item: OutboxItem) -> OutgoingEmail:
    """Read what the mail for ``item`` says and where it goes.

    Raises :class:`NotFound` or :class:`InvalidInput` when the row cannot
    become a mail (its request or reply is gone, an unknown topic): the
    caller gives up on such a row rather than retrying it.
    """
    if item.topic not in EMAIL_TOPICS:
        raise InvalidInput(f"outbox row {item.id}: no e-mail is made for topic {item.topic!r}")
    with store.read() as session:
        request = _request_of(session, item)
        if item.topic == "reply":
            return _reply_email(store, session, item, request)
        return _automatic_email(store, session, item, request)


def _reply_email(store: Store, session: Session, item: OutboxItem, request: Request) -> OutgoingEmail:
    """A reply goes out exactly as ``reply()`` stored it: its Message-ID, threading headers, subject, recipients."""
    message = _outbound_message(session, item, request)
    to_addresses = _split_addresses(message.to_addresses) or (request.requester_email,)
    author: Agent | None = message.author
    return OutgoingEmail(
        outbox_id=item.id,
        topic=item.topic,
        request_key=request.key,
        request_subject=request.subject,
        subject=message.subject or reply_subject(request),
        to_addresses=to_addresses,
        reply_token=token_of(request),
        customer_name=request.customer.name if request.customer else None,
        message_id=message.message_id or "",
        in_reply_to=message.in_reply_to,
        references=tuple((message.references or "").split()),
        body_text=message.body_text,
        author_name=author.name if author else None,
        resolution_note=None,
        is_automatic=False,
        failing_addresses=_failing(session, to_addresses),
        date=store.clock.now(),
    )


def _automatic_email(store: Store, session: Session, item: OutboxItem, request: Request) -> OutgoingEmail:
    """An acknowledgment answers the first customer mail; a resolution notice and a reminder the latest one."""
    token = token_of(request)
    parent = _inbound_message(session, request, latest=item.topic != "acknowledgment")
    to_addresses = (request.requester_email,)
    return OutgoingEmail(
        outbox_id=item.id,
        topic=item.topic,
        request_key=request.key,
        request_subject=request.subject,
        subject=reply_subject(request),
        to_addresses=to_addresses,
        reply_token=token,
        customer_name=request.customer.name if request.customer else None,
        # Fixed by the row, so a retried send is recognisably the same mail.
        message_id=stable_message_id(token, store.settings.mail_domain, f"outbox-{item.id}"),
        in_reply_to=parent.message_id if parent else None,
        references=_references_after(parent),
        body_text=None,
        author_name=None,
        resolution_note=_resolution_note(session, item, request) if item.topic == "resolution_notice" else None,
        is_automatic=True,
        failing_addresses=_failing(session, to_addresses),
        date=store.clock.now(),
    )


def _request_of(session: Session, item: OutboxItem) -> Request:
    request = session.get(Request, item.request_id) if item.request_id is not None else None
    if request is None:
        raise NotFound(f"outbox row {item.id}: its request ({item.payload.get('request_key')}) does not exist")
    return request


def _outbound_message(session: Session, item: OutboxItem, request: Request) -> Message:
    message_row_id = item.payload.get("message_id")
    message = session.get(Message, message_row_id) if isinstance(message_row_id, int) else None
    if message is None or message.request_id != request.id or message.direction != "outbound":
        raise NotFound(f"outbox row {item.id}: the reply it should send ({message_row_id!r}) is not on {request.key}")
    if not message.message_id:
        raise InvalidInput(f"outbox row {item.id}: the reply on {request.key} has no Message-ID")
    return message


def _inbound_message(session: Session, request: Request, *, latest: bool) -> Message | None:
    """The first (or latest) customer mail on the request that has a Message-ID to answer."""
    order = Message.id.desc() if latest else Message.id.asc()
    return session.execute(
        select(Message)
        .where(Message.request_id == request.id, Message.direction == "inbound", Message.message_id.is_not(None))
        .order_by(order)
        .limit(1)
    ).scalar_one_or_none()


def _references_after(parent: Message | None) -> tuple[str, ...]:
    """RFC 5322 §3.6.4: the parent's References followed by the parent's Message-ID."""
    if parent is None or not parent.message_id:
        return ()
    return (*(parent.references or "").split(), parent.message_id)


def _resolution_note(session: Session, item: OutboxItem, request: Request) -> str | None:
    """The note of the resolution that queued this notice, not of a later one."""
    event_seq = session.execute(select(OutboxMessage.event_seq).where(OutboxMessage.id == item.id)).scalar_one_or_none()
    event = session.get(Event, event_seq) if event_seq is not None else None
    if event is not None and event.kind == "request.resolved":
        note = json.loads(event.data).get("note")
        if isinstance(note, str) and note:
            return note
    return request.resolution_note


def _split_addresses(value: str | None) -> tuple[str, ...]:
    return tuple(a.strip() for a in (value or "").split(",") if a.strip())


def _failing(session: Session, addresses: tuple[str, ...]) -> tuple[str, ...]:
    lowered = [a.strip().lower() for a in addresses]
    failing = set(
        session.execute(
            select(AddressHealth.address).where(AddressHealth.address.in_(lowered), AddressHealth.failing.is_(True))
        ).scalars()
    )
    return tuple(a for a in lowered if a in failing)
