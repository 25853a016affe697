"""Tests of outgoing notifications, and what they share: a real SMTP sink on loopback.

The sink is aiosmtpd's ``Controller`` (its own thread and event loop) with a
handler that records every envelope, and can be told to answer RCPT or DATA
with a refusal, or to take its time before answering DATA.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy import select

from core import services
from core.models import OutboxMessage, Request
from core.services.outbox import AUTOMATIC_TOPICS, OutgoingEmail
from core.services.mail_intake import IncomingMail, RawMail, accept_raw_mail, file_inbound, pending_inbound_ids
from core.settings import HostPort, Settings
from core.store import Store
from core.views import RequestView

SUPPORT = "help@support.test"
DOMAIN = "support.test"
TOKEN = "0123456789abcdef"


@dataclass(frozen=True)
class Received:
    """One message the sink accepted (or, for ``attempts``, was offered)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: bool
    authenticated: bool

    @property
    def message(self) -> EmailMessage:
        return BytesParser(policy=policy.default).parsebytes(self.content)  # type: ignore[return-value]


@dataclass
class SinkHandler:
    """Records envelopes; ``rcpt_reply``/``data_reply`` set a refusal, ``data_delay`` slows DATA down."""

    rcpt_reply: str | None = None
    data_reply: str | None = None
    data_delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    attempts: list[Received] = field(default_factory=list)
    rcpt_commands: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:
        with self.lock:
            self.rcpt_commands.append(address)
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        item = Received(envelope.mail_from, tuple(envelope.rcpt_tos), envelope.content,
                        session.ssl is not None, bool(session.authenticated))
        with self.lock:
            self.attempts.append(item)
            if self.data_reply:
                return self.data_reply
            self.received.append(item)
        return "250 OK"

    def messages(self) -> list[EmailMessage]:
        with self.lock:
            return [r.message for r in self.received]


def free_port() -> int:
    """A loopback port nobody listens on (aiosmtpd's Controller cannot bind port 0)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_sink(port: int | None = None, handler: SinkHandler | None = None, **smtp_options: Any) -> Iterator[SinkHandler]:
    handler = handler or SinkHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port or free_port(), **smtp_options)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()


def mail_settings(store: Store, tmp_path: Path, port: int | None = None, **overrides: Any) -> Settings:
    """The test store's settings with our support address, and a relay on ``port`` (or a Maildir)."""
    return replace(
        store.settings,
        support_addresses=(SUPPORT,),
        outbound_smtp=HostPort("127.0.0.1", port) if port is not None else None,
        outgoing_maildir=tmp_path / "outgoing-mail",
        **overrides,
    )


def with_settings(store: Store, settings: Settings) -> Store:
    """The same database and clock, other settings."""
    return Store(store.engine, store.clock, settings)


def email_from(
    sender: str = "jane@acme.test",
    *,
    subject: str = "Charged twice",
    message_id: str | None = "<m1@acme.test>",
    references: tuple[str, ...] = (),
) -> services.InboundMail:
    return services.InboundMail(
        from_address=sender, subject=subject, body_text="Hello, I was charged twice for January.",
        message_id=message_id, in_reply_to=references[-1] if references else None, references=references,
    )


def open_by_email(store: Store, **mail: Any) -> RequestView:
    return services.open_request(store, channel="email", mail=email_from(**mail))


def token_of(store: Store, key: str) -> str:
    with store.read() as session:
        number = int(key.split("-")[1])
        token = session.execute(select(Request.reply_token).where(Request.number == number)).scalar_one()
        assert token
        return token


def outbox_rows(store: Store, topic: str | None = None) -> list[OutboxMessage]:
    with store.read() as session:
        query = select(OutboxMessage).where(OutboxMessage.channel == "email").order_by(OutboxMessage.id)
        if topic is not None:
            query = query.where(OutboxMessage.topic == topic)
        return list(session.execute(query).scalars())


def mark_failing(store: Store, address: str, bounced_message_id: str | None = None) -> None:
    """File a bounce of our mail to ``address`` the way the gateway does, so the address is marked failing."""
    bounced = bounced_message_id or f"<bounced.{token_of(store, 'SR-1')}@{DOMAIN}>"
    raw = f"From: MAILER-DAEMON@acme.test\r\nSubject: Undelivered Mail\r\n\r\n{address} {bounced}\r\n".encode()
    accept_raw_mail(store, [RawMail(raw=raw, envelope_from="", recipients=(SUPPORT,))])
    (inbound_id,) = pending_inbound_ids(store)
    incoming = IncomingMail(
        mail=services.InboundMail(from_address="mailer-daemon@acme.test", subject="Undelivered Mail", body_text=""),
        automatic="bounce", bounced_recipients=(address,), bounced_message_ids=(bounced,),
    )
    result = file_inbound(store, inbound_id, incoming)
    assert (result.outcome, result.reason) == ("quarantined", "bounce")


def sample_email(topic: str, **overrides: Any) -> OutgoingEmail:
    """A view of each kind as ``outgoing_email`` makes them, for the tests that need no database."""
    values: dict[str, Any] = dict(
        outbox_id=7,
        topic=topic,
        request_key="SR-12",
        request_subject="Charged twice",
        subject="Re: Charged twice [SR-12]",
        to_addresses=("jane@acme.test",),
        reply_token=TOKEN,
        customer_name="Acme Verified Ltd",
        message_id=f"<outbox-7.{TOKEN}@{DOMAIN}>" if topic != "reply" else f"<3f2a.{TOKEN}@{DOMAIN}>",
        in_reply_to="<m1@acme.test>",
        references=("<m1@acme.test>",),
        body_text="We have refunded the second charge.\nIt shows within five days." if topic == "reply" else None,
        author_name="Alice Agent" if topic == "reply" else None,
        resolution_note="Refunded EUR 20.00." if topic == "resolution_notice" else None,
        is_automatic=topic in AUTOMATIC_TOPICS,
        failing_addresses=(),
        date=datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc),
    )
    values.update(overrides)
    return OutgoingEmail(**values)
