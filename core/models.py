"""The tables, as SQLAlchemy 2.0 typed models.

The schema itself is made only by the Alembic migrations in
``core/migrations``; a test checks that these models and the migrations agree.
Live ORM objects never leave ``core``: services return frozen views.
"""

from __future__ import annotations

from datetime import date, datetime, timezone

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    SQLite has no time zones, so values are stored there as naive UTC; on
    PostgreSQL they are ``timestamptz``. Either way the application sees aware
    UTC datetimes, which the audit hash depends on.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:  # type: ignore[override]
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:  # type: ignore[override]
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Customer(Base):
    __tablename__ = "customers"
    __table_args__ = (
        CheckConstraint("kyc_status IN ('verified', 'pending', 'failed', 'unknown')", name="kyc_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    external_ref: Mapped[str] = mapped_column(String(120), unique=True)
    name: Mapped[str] = mapped_column(String(300))
    kyc_status: Mapped[str] = mapped_column(String(16), default="unknown")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    addresses: Mapped[list[CustomerAddress]] = relationship(
        back_populates="customer", cascade="all, delete-orphan", order_by="CustomerAddress.id"
    )


class CustomerAddress(Base):
    """An e-mail address or a whole domain that identifies a customer's mail."""

    __tablename__ = "customer_addresses"
    __table_args__ = (
        UniqueConstraint("kind", "value", name="uq_customer_addresses_kind_value"),
        CheckConstraint("kind IN ('email', 'domain')", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    value: Mapped[str] = mapped_column(String(320))

    customer: Mapped[Customer] = relationship(back_populates="addresses")


class Invoice(Base):
    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    issued_on: Mapped[date] = mapped_column(Date)
    due_on: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    customer: Mapped[Customer] = relationship()


class Agent(Base):
    """A person who works in supportdesk, known by Slack user id and e-mail."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slack_user_id: Mapped[str] = mapped_column(String(32), unique=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    # Space-separated subset of: agent approver manager admin.
    roles: Mapped[str] = mapped_column(String(64))
    approval_limit_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    approval_currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    @property
    def role_set(self) -> frozenset[str]:
        return frozenset(self.roles.split())


class Request(Base):
    __tablename__ = "requests"
    __table_args__ = (
        CheckConstraint(
            "status IN ('new', 'assigned', 'waiting_on_customer', 'pending_approval', 'resolved', 'closed')",
            name="status",
        ),
        CheckConstraint("priority IN ('urgent', 'high', 'normal', 'low')", name="priority"),
        CheckConstraint("channel IN ('email', 'slack', 'cli')", name="channel"),
        CheckConstraint("disputed_amount_minor IS NULL OR disputed_amount_minor >= 0", name="disputed_amount"),
        Index("ix_requests_status_created_at", "status", "created_at"),
        # Metrics (core/metrics.py) select requests by the moment something
        # happened in a period, and find open SLA breaches by due time instead
        # of scanning the whole backlog. The status rides along in the breach
        # indexes, so counting open breaches never reads the table.
        Index("ix_requests_first_response_open", "first_response_at", "first_response_due_at", "status"),
        Index("ix_requests_first_assigned_at", "first_assigned_at"),
        Index("ix_requests_status_resolution_due_at", "status", "resolution_due_at"),
        Index("ix_requests_next_reply_due_at_status", "next_reply_due_at", "status"),
        Index("ix_requests_status_disputed", "status", "disputed_currency", "disputed_amount_minor"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    subject: Mapped[str] = mapped_column(String(998))
    channel: Mapped[str] = mapped_column(String(8))
    category: Mapped[str] = mapped_column(String(64))
    priority: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(24))
    requester_email: Mapped[str] = mapped_column(String(320), index=True)
    customer_id: Mapped[int | None] = mapped_column(ForeignKey("customers.id"), index=True, nullable=True)
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), index=True, nullable=True)
    # The agent who logged it for the customer (Slack, command line); null for mail.
    opened_by_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), nullable=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id"), index=True, nullable=True)
    disputed_amount_minor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    disputed_currency: Mapped[str | None] = mapped_column(String(3), nullable=True)
    resolution_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    resolution_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), nullable=True)
    # A customer reply to a closed request opens a new one that points back here.
    follows_up_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), nullable=True)
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    first_assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    first_response_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # SLA: the policy chosen, the due time of each target (frozen once met),
    # the start of the current next-reply clock, business seconds to first
    # response and to resolution (for metrics), and the earliest moment a
    # warning or breach is due to be recorded: the sweep's index.
    sla_policy: Mapped[str | None] = mapped_column(String(120), nullable=True)
    first_response_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_reply_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_reply_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    resolution_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    first_response_business_seconds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    resolution_business_seconds: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sla_next_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True, nullable=True)
    # Unguessable: in our reply addresses and Message-IDs, so a customer's
    # answer finds its request even when the mail client drops the headers.
    reply_token: Mapped[str | None] = mapped_column(String(32), unique=True, nullable=True)
    # Compare-and-set guard: every UPDATE checks and bumps it.
    version: Mapped[int] = mapped_column(Integer, default=1)

    customer: Mapped[Customer | None] = relationship()
    assignee: Mapped[Agent | None] = relationship(foreign_keys=[assignee_id])
    opened_by: Mapped[Agent | None] = relationship(foreign_keys=[opened_by_id])
    invoice: Mapped[Invoice | None] = relationship()
    merged_into: Mapped[Request | None] = relationship(foreign_keys=[merged_into_id], remote_side=[id])
    follows_up: Mapped[Request | None] = relationship(foreign_keys=[follows_up_id], remote_side=[id])

    __mapper_args__ = {"version_id_col": version}

    @property
    def key(self) -> str:
        return f"SR-{self.number}"


class Message(Base):
    """One piece of correspondence: inbound mail, an outbound reply or an internal note."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("direction IN ('inbound', 'outbound', 'note')", name="direction"),
        Index("ix_messages_request_id_created_at", "request_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"))
    direction: Mapped[str] = mapped_column(String(8))
    # RFC 5322 Message-ID with its angle brackets; notes have none.
    message_id: Mapped[str | None] = mapped_column(String(998), unique=True, nullable=True)
    in_reply_to: Mapped[str | None] = mapped_column(Text, nullable=True)
    references: Mapped[str | None] = mapped_column(Text, nullable=True)
    from_address: Mapped[str | None] = mapped_column(String(320), nullable=True)
    to_addresses: Mapped[str | None] = mapped_column(Text, nullable=True)
    subject: Mapped[str | None] = mapped_column(String(998), nullable=True)
    # For mail: the new part of the message, quoted history removed ...
    body_text: Mapped[str] = mapped_column(Text)
    # ... and the whole text as received, when it differs.
    full_text: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Sender authentication from the trusted upstream: pass, fail or none.
    auth_verdict: Mapped[str | None] = mapped_column(String(8), nullable=True)
    auth_summary: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # What the gateway noticed, space-separated codes: unknown_sender, unverified_sender, invoice_not_found ...
    flags: Mapped[str | None] = mapped_column(String(500), nullable=True)
    author_agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), nullable=True)
    # True for the acknowledgment and other mail nobody typed.
    is_automatic: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    request: Mapped[Request] = relationship()
    author: Mapped[Agent | None] = relationship()
    attachments: Mapped[list[Attachment]] = relationship(
        back_populates="message", cascade="all, delete-orphan", order_by="Attachment.id"
    )


class Attachment(Base):
    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(500))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    is_inline: Mapped[bool] = mapped_column(default=False)
    # For inline images: the Content-ID the HTML body refers to (cid:...).
    content_id: Mapped[str | None] = mapped_column(String(998), nullable=True)

    message: Mapped[Message] = relationship(back_populates="attachments")


class Approval(Base):
    """A proposed financial adjustment and, once decided, who decided and why."""

    __tablename__ = "approvals"
    __table_args__ = (
        CheckConstraint("kind IN ('credit', 'refund', 'write_off')", name="kind"),
        CheckConstraint("status IN ('pending', 'approved', 'rejected', 'withdrawn')", name="status"),
        CheckConstraint("amount_minor > 0", name="amount_positive"),
        Index("ix_approvals_status", "status"),
        # Metrics: adjustments decided in a period.
        Index("ix_approvals_decided_at", "decided_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    requested_by_id: Mapped[int] = mapped_column(ForeignKey("agents.id"))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    decided_by_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decision_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)

    request: Mapped[Request] = relationship()
    requested_by: Mapped[Agent] = relationship(foreign_keys=[requested_by_id])
    decided_by: Mapped[Agent | None] = relationship(foreign_keys=[decided_by_id])

    __mapper_args__ = {"version_id_col": version}


class Event(Base):
    """One entry of the append-only, hash-chained audit trail.

    ``seq`` is assigned from :class:`AuditHead`, not by the database, so the
    chain has no gaps and a deleted row shows as one.
    """

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_request_id_seq", "request_id", "seq"),
        # Metrics count what happened in a period by kind (resolutions, reopens).
        Index("ix_events_kind_created_at", "kind", "created_at"),
        # Metrics: the backlog at a past moment replays only the events since then.
        Index("ix_events_created_at", "created_at"),
    )

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), nullable=True)
    actor: Mapped[str] = mapped_column(String(400))
    kind: Mapped[str] = mapped_column(String(64), index=True)
    # Canonical JSON text, stored verbatim so the hash can be recomputed byte for byte.
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditHead(Base):
    """The single row that holds the chain's tip; writers lock it to append."""

    __tablename__ = "audit_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_seq: Mapped[int] = mapped_column(BigInteger)
    last_hash: Mapped[str] = mapped_column(String(64))


class SlaCrossing(Base):
    """A warning or breach of one SLA target, recorded exactly once per clock cycle.

    ``cycle_started_at`` tells next-reply cycles apart (each customer reply
    starts a new one); first response and resolution have one cycle.
    """

    __tablename__ = "sla_crossings"
    __table_args__ = (
        UniqueConstraint("request_id", "target", "threshold", "cycle_started_at", name="uq_sla_crossings_once"),
        CheckConstraint("target IN ('first_response', 'next_reply', 'resolution')", name="target"),
        CheckConstraint("threshold IN ('warning', 'breach')", name="threshold"),
        Index("ix_sla_crossings_recorded_at", "recorded_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), index=True)
    target: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[str] = mapped_column(String(8))
    cycle_started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    crossed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)

    request: Mapped[Request] = relationship()


class Counter(Base):
    """Gapless counters, e.g. request numbers; incremented under a row lock."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class OutboxMessage(Base):
    """A notification to deliver, written in the same transaction as its cause.

    The delivery workers (Slack, e-mail) read pending rows, deliver them and
    mark them sent; a crash between commit and delivery loses nothing.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint("channel IN ('email', 'slack')", name="channel"),
        CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status"),
        Index("ix_outbox_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    channel: Mapped[str] = mapped_column(String(8))
    topic: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), index=True, nullable=True)
    event_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(8), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ReceivedMail(Base):
    """One message as the gateway received it, byte for byte, before anything else.

    Committed before the SMTP ``250``; the processor files it afterwards
    (opens or joins a request, or quarantines it with a reason code), so a
    crash or a parser failure after acceptance never loses it. The raw bytes'
    SHA-256 is unique: a delivery repeated by the sending server is stored once.
    """

    __tablename__ = "inbound_mail"
    __table_args__ = (
        CheckConstraint("status IN ('received', 'processed', 'quarantined')", name="status"),
        CheckConstraint("source IN ('smtp', 'ingest')", name="source"),
        Index("ix_inbound_mail_status_id", "status", "id"),
        # The quarantine counted by reason (/metrics) from the index alone, never the raw bytes beside it.
        Index("ix_inbound_mail_status_reason", "status", "reason"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    size: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(8))
    # The SMTP envelope: "" is the null sender (bounces); NULL when unknown (an ingested file).
    envelope_from: Mapped[str | None] = mapped_column(Text, nullable=True)
    recipients: Mapped[str] = mapped_column(Text, default="")  # one address per line
    peer: Mapped[str | None] = mapped_column(String(255), nullable=True)
    helo: Mapped[str | None] = mapped_column(String(255), nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(12), default="received")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True, nullable=True)
    # opened, joined, duplicate or quarantined; how it was threaded; why it is not a normal request.
    outcome: Mapped[str | None] = mapped_column(String(12), nullable=True)
    matched_by: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), index=True, nullable=True)
    message_row_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), nullable=True)
    # A summary read at filing time, for the quarantine list.
    message_id: Mapped[str | None] = mapped_column(String(998), index=True, nullable=True)
    from_address: Mapped[str | None] = mapped_column(String(320), nullable=True)
    subject: Mapped[str | None] = mapped_column(String(998), nullable=True)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    released_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AddressHealth(Base):
    """Addresses our mail bounced from: automatic mail to them is held back.

    A bounce of our own mail marks the address failing; the next message
    that address sends us clears it.
    """

    __tablename__ = "address_health"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    failing: Mapped[bool] = mapped_column(default=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    first_failed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_failed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SlackCard(Base):
    """Where a request's triage card or an approval's card was posted, so every change updates it in place.

    Kept apart from ``requests`` and ``approvals``: recording a post must not
    bump their version and turn an agent's concurrent click into a conflict.
    """

    __tablename__ = "slack_cards"
    __table_args__ = (
        CheckConstraint("kind IN ('request', 'approval')", name="kind"),
        CheckConstraint(
            "(kind = 'request' AND request_id IS NOT NULL AND approval_id IS NULL)"
            " OR (kind = 'approval' AND approval_id IS NOT NULL)",
            name="subject",
        ),
        # One triage card per request.
        Index("uq_slack_cards_request_card", "request_id", unique=True,
              sqlite_where=text("kind = 'request'"), postgresql_where=text("kind = 'request'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    request_id: Mapped[int | None] = mapped_column(ForeignKey("requests.id"), index=True, nullable=True)
    approval_id: Mapped[int | None] = mapped_column(ForeignKey("approvals.id"), unique=True, nullable=True)
    channel: Mapped[str] = mapped_column(String(32))
    ts: Mapped[str] = mapped_column(String(32))
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SlackEvent(Base):
    """Events API deliveries already handled, by ``event_id``: Slack retries, and any instance may get the retry."""

    __tablename__ = "slack_events"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class Digest(Base):
    """A daily digest or weekly summary as it was rendered and sent: one per kind and period.

    The unique key is what makes a digest once-only across restarts and
    across several ``serve`` processes; keeping the rendering makes a
    re-send repeat the figures that were sent, not today's. ``slack_*``
    record how far posting got, so a retried delivery does not post twice.
    """

    __tablename__ = "digests"
    __table_args__ = (
        UniqueConstraint("kind", "period", name="uq_digests_kind_period"),
        CheckConstraint("kind IN ('daily', 'weekly')", name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    period: Mapped[str] = mapped_column(String(16))  # 2026-12-05, or 2026-W49
    since: Mapped[datetime] = mapped_column(UTCDateTime)
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    figures: Mapped[str] = mapped_column(Text)  # the figures as JSON, for the record and for tests
    slack_text: Mapped[str] = mapped_column(Text)
    email_subject: Mapped[str] = mapped_column(Text)
    email_text: Mapped[str] = mapped_column(Text)
    chart_png: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(64))
    slack_channel: Mapped[str | None] = mapped_column(String(32), nullable=True)
    slack_ts: Mapped[str | None] = mapped_column(String(32), nullable=True)
    chart_file_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class SlackAlert(Base):
    """Where the alert for one SLA crossing was posted, and what it said last, so it is updated, never re-posted."""

    __tablename__ = "slack_alerts"

    crossing_id: Mapped[int] = mapped_column(ForeignKey("sla_crossings.id"), primary_key=True, autoincrement=False)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    ts: Mapped[str] = mapped_column(String(32))
    text_sha256: Mapped[str] = mapped_column(String(64))
    posted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
