"""The e-mail gateway's side of the store: accept raw mail, file it, quarantine it.

Acceptance stands between the end of SMTP DATA and the ``250``, so it is one
INSERT per message, batched, with no parsing and no audit event: the raw
bytes are immutable evidence, keyed by their SHA-256, and a delivery the
sending server repeats is stored once. Filing happens afterwards: it opens or
joins a request, or quarantines the message with a reason code, and marks the
raw row filed in the same commit, so a crash at any point files every message
exactly once. :func:`file_inbound` files one message per transaction;
:func:`file_inbound_batch` files many in one (one flush, one commit, one
append to the audit chain); a batch that fails is rolled back whole, and the
caller files its messages one at a time so that the one at fault is found.

The gateway (``intake``) reads the bytes; this module decides, with the store
at hand, what they mean: which request a reply belongs to, which customer
wrote, whether an invoice number is theirs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session, defer

from core.authorization import require_agent
from core.errors import ConnectionLost, InvalidInput, NotFound, TransitionRefused
from core.models import AddressHealth, Customer, CustomerAddress, Invoice, Message, ReceivedMail, Request
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

log = logging.getLogger(__name__)

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
    # opened, joined, duplicate, quarantined; in_progress while another processor files it
    outcome: str
    request_key: str | None = None
    reason: str | None = None
    matched_by: str | None = None


# Acceptance runs before every 250, so it is as lean as the driver allows: on
# SQLite one plain statement run with the driver's own executemany (through
# SQLAlchemy the same commit cost three times the CPU, and that CPU is the
# listener's: it holds the GIL the SMTP sessions wait for); on PostgreSQL one
# statement per batch size, made once.
_ACCEPT_COLUMNS = ("sha256", "raw", "size", "source", "envelope_from", "recipients", "peer", "helo", "received_at")


def _accept_sql(count: int, placeholder: str) -> str:
    """The INSERT of ``count`` new rows (already stored bytes are skipped) in the driver's placeholders."""
    row = "(" + ", ".join([placeholder] * len(_ACCEPT_COLUMNS)) + ", 'received', 0)"
    return (f"INSERT INTO inbound_mail ({', '.join(_ACCEPT_COLUMNS)}, status, attempts)"
            f" VALUES {', '.join([row] * count)} ON CONFLICT (sha256) DO NOTHING")


_ACCEPT_SQLITE = _accept_sql(1, "?")  # run with executemany


@functools.lru_cache(maxsize=256)
def _accept_on_postgresql_sql(count: int) -> str:
    """All the rows of a group commit in one statement, made once per batch size."""
    return _accept_sql(count, "%s")


def accept_raw_mail(store: Store, items: Sequence[RawMail]) -> int:
    """Commit ``items`` in one transaction; returns how many were new.

    A message whose exact bytes are already stored is a no-op, so a sending
    server that retries after a lost ``250`` gets ``250`` again and the
    message is still stored once.
    """
    if not items:
        return 0
    unique = _by_digest(items)
    if store.is_sqlite:
        # The timestamp as the ORM stores it (SQLite has no timestamp type of its own).
        received_at = _sqlite_timestamp(store.engine.dialect)(store.clock.now())
        return _accept_on_sqlite(store, _accept_rows(unique, received_at))
    return _accept_on_postgresql(store, _accept_rows(unique, store.clock.now()))


def _by_digest(items: Sequence[RawMail]) -> dict[str, RawMail]:
    """Each distinct message once, keyed by the SHA-256 of its bytes."""
    unique: dict[str, RawMail] = {}
    for item in items:
        unique.setdefault(hashlib.sha256(item.raw).hexdigest(), item)
    return unique


def _accept_rows(unique: dict[str, RawMail], received_at: Any) -> list[tuple[Any, ...]]:
    """The values of each new row, in the order of _ACCEPT_COLUMNS."""
    return [
        (digest, item.raw, len(item.raw), item.source, item.envelope_from, "\n".join(item.recipients),
         (item.peer or "")[:255] or None, (item.helo or "")[:255] or None, received_at)
        for digest, item in unique.items()
    ]


@functools.lru_cache(maxsize=None)
def _sqlite_timestamp(dialect: Any) -> Callable[[datetime], Any]:
    """The received_at column's own bind processor, made once rather than before every 250."""
    return ReceivedMail.__table__.c.received_at.type.bind_processor(dialect) or (lambda value: value)


def _accept_on_sqlite(store: Store, values: list[tuple[Any, ...]]) -> int:
    """One transaction through the driver."""
    with translate_store_errors():
        connection = store.engine.raw_connection()
        try:
            cursor = connection.cursor()
            cursor.execute("BEGIN IMMEDIATE")  # as every write transaction here: take the lock first
            cursor.executemany(_ACCEPT_SQLITE, values)
            count = cursor.rowcount
            cursor.execute("COMMIT")
            return count
        finally:
            connection.close()  # back to the pool, which rolls back a transaction left open by an error


def _accept_on_postgresql(store: Store, rows: list[tuple[Any, ...]]) -> int:
    """Every row in one statement, committed on its own, through the driver.

    One statement is all or nothing like a transaction, and in autocommit it
    is one round trip to the server where BEGIN, INSERT and COMMIT were three.
    """
    statement, values = _postgresql_insert(rows)
    with translate_store_errors():
        connection = store.engine.raw_connection()
        driver = connection.driver_connection
        try:
            driver.autocommit = True
            try:
                return driver.execute(statement, values).rowcount
            finally:
                if not driver.broken:
                    driver.autocommit = False
        except Exception as exc:
            if not driver.broken:  # the statement failed, the connection did not
                raise
            connection.invalidate()  # never back into the pool: the next commit opens a new one
            raise _connection_lost(exc) from exc
        finally:
            connection.close()


def _postgresql_insert(rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]]:
    """The one INSERT of ``rows`` and its parameters, in the driver's order."""
    return _accept_on_postgresql_sql(len(rows)), [value for row in rows for value in row]


def _connection_lost(error: Exception) -> ConnectionLost:
    return ConnectionLost(f"the connection to the database was lost ({error.__class__.__name__}); try again shortly")


class PostgresAcceptance:
    """:func:`accept_raw_mail` on PostgreSQL, awaited on the event loop: the SMTP listener's commit.

    At one SMTP connection every message waits for its whole commit. Made
    on a thread, the commit cost two thread wake-ups on top of the database's
    answer (the message handed to the thread, the result handed back to the
    loop): about 0.09 ms of a lone message's 0.42 ms. psycopg's asynchronous
    connection waits for the server's answer in the loop's own selector
    instead, and its Python work is what the thread did, under the same GIL.

    It holds one connection, in autocommit (one statement, one round trip),
    for as long as it lives, and never pings it: a connection lost since the
    last commit is found by the next one, which fails with
    :class:`ConnectionLost` and lets it go; the caller may commit the same
    batch again at once (the next commit opens a new connection; the same
    bytes stored twice are stored once). A database that refuses
    connections is :class:`StoreUnavailable`. Commits must not overlap: the
    caller awaits one before it starts the next.
    """

    def __init__(self, store: Store) -> None:
        if store.is_sqlite:
            raise ValueError("PostgresAcceptance needs a PostgreSQL store")
        self._store = store
        self._connection: Any = None  # psycopg.AsyncConnection, imported only where PostgreSQL is used

    async def accept(self, items: Sequence[RawMail]) -> int:
        """Commit ``items`` in one statement; returns how many were new (as :func:`accept_raw_mail`)."""
        if not items:
            return 0
        statement, values = _postgresql_insert(_accept_rows(_by_digest(items), self._store.clock.now()))
        with translate_store_errors():
            connection = self._connection or await self._connect()
            try:
                cursor = await connection.execute(statement, values)
            except Exception as exc:
                if not connection.broken:  # the statement failed, the connection did not
                    raise
                await self._let_go()
                raise _connection_lost(exc) from exc
            return int(cursor.rowcount)

    async def close(self) -> None:
        await self._let_go()

    async def _connect(self) -> Any:
        import psycopg  # here: a store on SQLite never loads the PostgreSQL driver

        engine = self._store.engine
        args, params = engine.dialect.create_connect_args(engine.url)
        self._connection = await psycopg.AsyncConnection.connect(*args, autocommit=True, **params)
        return self._connection

    async def _let_go(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close()
            except Exception:  # noqa: BLE001 - closing a connection already lost has nothing left to tell
                log.debug("closing the acceptance connection failed", exc_info=True)


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


def pending_inbound(store: Store, limit: int = 100, after_id: int = 0) -> list[tuple[int, int]]:
    """Raw messages not filed yet, oldest first, as (id, size): enough to cut batches by bytes before loading."""
    with store.read() as session:
        return [
            (inbound_id, size)
            for inbound_id, size in session.execute(
                select(ReceivedMail.id, ReceivedMail.size)
                .where(ReceivedMail.status == "received", ReceivedMail.id > after_id)
                .order_by(ReceivedMail.id)
                .limit(limit)
            )
        ]


def load_inbound(store: Store, inbound_id: int) -> StoredRawMail:
    with store.read() as session:
        row = session.get(ReceivedMail, inbound_id)
        if row is None:
            raise NotFound(f"there is no received mail {inbound_id}")
        return _stored(row)


def load_inbound_many(store: Store, inbound_ids: Sequence[int]) -> list[StoredRawMail]:
    """Several raw messages in one query, in id order; ids that do not exist are left out."""
    if not inbound_ids:
        return []
    with store.read() as session:
        rows = session.execute(
            select(ReceivedMail).where(ReceivedMail.id.in_(list(inbound_ids))).order_by(ReceivedMail.id)
        ).scalars()
        return [_stored(row) for row in rows]


def _stored(row: ReceivedMail) -> StoredRawMail:
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
        filed = _file(uow, row, incoming, _Lookups(uow))
        uow.session.flush()  # the ids of the request and message the raw row points to
        filed.link(row)
        row.processed_at = uow.now
        uow.commit()
        return filed.result


def file_inbound_batch(store: Store, items: Sequence[tuple[int, IncomingMail]]) -> list[FilingResult]:
    """File many received messages in one transaction; one result per item, in order.

    Each message is filed exactly as :func:`file_inbound` would, in the
    order given, but the unit flushes its new rows once (the ORM's work per
    flush, not the rows, is what costs), commits once and appends every event
    to the chain at once: a commit (an fsync on SQLite) and a flush per
    message are what made filing slow.

    Any failure rolls the whole batch back and is raised, so the batch
    changed nothing; the caller then files its messages one at a time with
    :func:`file_inbound`, and the one at fault is counted alone. That costs a
    batch's worth of single transactions when a message fails, which is rare,
    instead of a SAVEPOINT for every message. A database that is unavailable
    raises :class:`StoreUnavailable`.
    """
    if not items:
        return []
    with store.unit_of_work() as uow:
        claimed = _claim_many(uow, [inbound_id for inbound_id, _ in items])
        batch = _Batch(uow, claimed, items)
        results = [batch.file(inbound_id, incoming) for inbound_id, incoming in items]
        batch.mark_filed()
        uow.commit()
        return results


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


def _claim_many(uow: UnitOfWork, inbound_ids: list[int]) -> dict[int, ReceivedMail]:
    """:func:`_claim` for a batch, in one query.

    The raw bytes are not needed to file a message and are left unloaded.
    The rows are detached from the session: filing writes their columns in
    Python, and :meth:`_Batch.mark_filed` writes them all in one UPDATE at
    the end, instead of one flush per message.
    """
    query = (
        select(ReceivedMail)
        .where(ReceivedMail.id.in_(inbound_ids), ReceivedMail.status == "received")
        .options(defer(ReceivedMail.raw))
    )
    if not uow.store.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    rows = {row.id: row for row in uow.session.execute(query).scalars()}
    for row in rows.values():
        uow.session.expunge(row)
    return rows


# Columns of a raw row that filing writes; all of them go into the batch's one UPDATE.
_FILED_COLUMNS = ("message_id", "from_address", "subject", "status", "outcome", "reason", "matched_by",
                  "request_id", "message_row_id", "processed_at")


_RECENT_REQUESTS = (
    select(func.count())
    .select_from(Request)
    .where(Request.requester_email == bindparam("sender"), Request.channel == "email",
           Request.created_at >= bindparam("since"))
)


class _Lookups:
    """The questions filing asks the store about each message, asked one at a time (one message per unit)."""

    def __init__(self, uow: UnitOfWork) -> None:
        self.uow = uow

    def request_of_message(self, message_id: str | None) -> Request | None:
        return request_of_message(self.uow.session, message_id)

    def request_answered(self, message_id: str) -> Request | None:
        """The request of the stored message ``message_id`` (one this mail refers to), locked."""
        request = request_of_message(self.uow.session, message_id)
        return self.uow.lock_request(request.id) if request is not None else None

    def recent_requests(self, sender: str) -> int:
        """Requests the sender opened by mail in the last hour (rate limit and acknowledgments).

        Counted without a flush, which a batch does once at its end: the
        database's count plus the requests this unit added and has not
        flushed, as many as a flush first would have counted.
        """
        since = self.uow.now - timedelta(hours=1)
        session = self.uow.session
        with session.no_autoflush:
            stored = session.execute(_RECENT_REQUESTS, {"sender": sender, "since": since}).scalar_one()
        return stored + sum(
            1 for added in session.new
            if isinstance(added, Request)
            and added.requester_email == sender and added.channel == "email" and added.created_at >= since
        )

    def health(self, address: str) -> AddressHealth | None:
        return self.uow.session.get(AddressHealth, address)

    def customer(self, address: str) -> Customer | None:
        return find_customer_by_address(self.uow.session, address)

    def added_health(self, health: AddressHealth) -> None:
        """A bounce created this address's row."""


class _BatchLookups(_Lookups):
    """The same answers for a batch, read for all its messages at once and kept true as it files them.

    Message-IDs (its own, In-Reply-To, References), address health, recent
    requests and the customer per sender are selected once; what a message
    filed in this batch adds is noted as it is filed (filing never adds
    customers). The requests of messages filed in this batch are kept as
    objects: they may not be flushed yet, so they have no id to look up.

    On SQLite, whose write transaction keeps every other writer out from its
    start, the requests of the stored messages are loaded too, in the same
    query, so threading a reply to one (:meth:`UnitOfWork.lock_request`)
    reads nothing more. PostgreSQL reads each under its row lock instead: a
    request read before it is locked could be stale.
    """

    def __init__(self, uow: UnitOfWork, items: Sequence[tuple[int, IncomingMail]], senders: set[str]) -> None:
        super().__init__(uow)
        session = uow.session
        wanted = {i for _, incoming in items for i in _message_ids_of(incoming.mail) if i}
        self._stored: dict[str, int] = {}  # Message-ID -> request id, of messages stored before the batch
        self._filed: dict[str, Request] = {}  # Message-ID -> request, of messages filed in this batch
        self._loaded: list[Request] = []  # held here: the session's identity map keeps objects only weakly
        for chunk in _chunks(sorted(wanted)):
            if uow.store.is_sqlite:
                for message_id, request in session.execute(
                    select(Message.message_id, Request)
                    .join(Request, Request.id == Message.request_id)
                    .where(Message.message_id.in_(chunk))
                ):
                    self._stored[message_id] = request.id
                    self._loaded.append(request)
                continue
            self._stored.update(
                (message_id, request_id)
                for message_id, request_id in session.execute(
                    select(Message.message_id, Message.request_id).where(Message.message_id.in_(chunk))
                )
            )
        self._health: dict[str, AddressHealth | None] = dict.fromkeys(senders)
        self._recent: dict[str, int] = dict.fromkeys(senders, 0)
        since = uow.now - timedelta(hours=1)
        for chunk in _chunks(sorted(senders)):
            self._health.update((h.address, h) for h in session.execute(
                select(AddressHealth).where(AddressHealth.address.in_(chunk))).scalars())
            self._recent.update((sender, count) for sender, count in session.execute(
                select(Request.requester_email, func.count())
                .where(Request.requester_email.in_(chunk), Request.channel == "email", Request.created_at >= since)
                .group_by(Request.requester_email)
            ))
        self._customers = _CustomersOf(session, senders)

    def request_of_message(self, message_id: str | None) -> Request | None:
        if not message_id:
            return None
        if message_id in self._filed:
            return self._filed[message_id]
        request_id = self._stored.get(message_id)
        return self.uow.session.get(Request, request_id) if request_id is not None else None

    def request_answered(self, message_id: str) -> Request | None:
        if message_id in self._filed:  # opened or locked earlier in this transaction
            return self._filed[message_id]
        request_id = self._stored.get(message_id)
        return self.uow.lock_request(request_id) if request_id is not None else None

    def recent_requests(self, sender: str) -> int:
        if sender not in self._recent:
            self._recent[sender] = super().recent_requests(sender)
        return self._recent[sender]

    def health(self, address: str) -> AddressHealth | None:
        if address not in self._health:
            self._health[address] = super().health(address)
        return self._health[address]

    def customer(self, address: str) -> Customer | None:
        found = self._customers.get(address)
        return super().customer(address) if found is False else found

    def added_health(self, health: AddressHealth) -> None:
        self._health[health.address] = health

    def filed(self, incoming: IncomingMail, row: ReceivedMail, filed: _Filed) -> None:
        """Note what a message that was just filed added: its Message-ID, and maybe a request of its sender."""
        if row.outcome not in ("opened", "joined"):
            return
        if incoming.mail.message_id and filed.request is not None:
            self._filed[incoming.mail.message_id] = filed.request
        sender = _sender(incoming, row)
        if row.outcome == "opened" and sender in self._recent:
            self._recent[sender] += 1
        else:
            self._recent.pop(sender, None)  # a reply to a closed request may have opened a follow-up: ask again


class _CustomersOf:
    """:func:`find_customer_by_address` for many senders in two queries: the exact address wins over its domain.

    Addresses and domains are unique per kind, so each maps to one customer.
    """

    def __init__(self, session: Session, senders: set[str]) -> None:
        self._senders = {a.strip().lower() for a in senders}
        self._by_kind: dict[str, dict[str, Customer]] = {"email": {}, "domain": {}}
        values = {"email": self._senders, "domain": {_domain(a) for a in self._senders}}
        for kind, wanted in values.items():
            for chunk in _chunks(sorted(wanted)):
                self._by_kind[kind].update(
                    (value, customer)
                    for value, customer in session.execute(
                        select(CustomerAddress.value, Customer)
                        .join(Customer, Customer.id == CustomerAddress.customer_id)
                        .where(CustomerAddress.kind == kind, CustomerAddress.value.in_(chunk))
                    )
                )

    def get(self, address: str) -> Customer | None | Literal[False]:
        """The customer, None for nobody's address, False when ``address`` was not one of the senders."""
        address = address.strip().lower()
        if address not in self._senders:
            return False
        return self._by_kind["email"].get(address) or self._by_kind["domain"].get(_domain(address))


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


def _message_ids_of(mail: InboundMail) -> tuple[str | None, ...]:
    return (mail.message_id, mail.in_reply_to, *mail.references)


def _chunks(values: list[str], size: int = 500) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


@dataclass(frozen=True)
class _Filed:
    """How a message was filed, with the request and message it opened or joined (none for a quarantine).

    New rows get their ids when the unit flushes, which a batch does once at
    its end: :meth:`link` then points the raw row at them.
    """

    result: FilingResult
    request: Request | None = None
    message: Message | None = None

    def link(self, row: ReceivedMail) -> None:
        """Write the ids into the raw row; call after a flush. A quarantine set its related request itself."""
        if self.request is not None:
            row.request_id = self.request.id
            row.message_row_id = self.message.id if self.message is not None else None


class _Batch:
    """One unit of work filing many messages, flushed once at the end (:meth:`mark_filed`)."""

    def __init__(self, uow: UnitOfWork, claimed: dict[int, ReceivedMail],
                 items: Sequence[tuple[int, IncomingMail]]) -> None:
        self.uow = uow
        self.claimed = claimed
        senders = {_sender(incoming, claimed[i]) for i, incoming in items if i in claimed}
        self.lookups = _BatchLookups(uow, items, senders - {""})
        self.done: dict[int, FilingResult] = {}
        self.filed: list[tuple[ReceivedMail, _Filed]] = []

    def file(self, inbound_id: int, incoming: IncomingMail) -> FilingResult:
        """File one message; if it raises, the batch fails as a whole (see :func:`file_inbound_batch`)."""
        if inbound_id in self.done:  # listed twice: filed already, as file_inbound would find it
            return self.done[inbound_id]
        row = self.claimed.pop(inbound_id, None)
        if row is None:  # another processor has it or had it
            return _earlier_result(self.uow, inbound_id)
        filed = _file(self.uow, row, incoming, self.lookups)
        row.processed_at = self.uow.now
        self.filed.append((row, filed))
        self.lookups.filed(incoming, row, filed)
        self.done[inbound_id] = filed.result
        return filed.result

    def mark_filed(self) -> None:
        """Flush the batch's new rows, then write the raw rows' columns in one UPDATE.

        The raw rows are detached (see :func:`_claim_many`), so the flush
        leaves them alone and gives the requests and messages they point to
        their ids.
        """
        if not self.filed:
            return
        self.uow.session.flush()
        for row, filed in self.filed:
            filed.link(row)
        self.uow.session.execute(
            update(ReceivedMail),
            [{"id": row.id, **{name: getattr(row, name) for name in _FILED_COLUMNS}} for row, _ in self.filed],
        )


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


def _sender(incoming: IncomingMail, row: ReceivedMail) -> str:
    return (incoming.mail.from_address or row.envelope_from or "").strip().lower()


def _file(uow: UnitOfWork, row: ReceivedMail, incoming: IncomingMail, lookups: _Lookups) -> _Filed:
    settings = uow.store.settings
    mail = incoming.mail
    released = row.released_at is not None
    sender = _sender(incoming, row)
    row.message_id = (mail.message_id or "")[:998] or None
    row.from_address = sender[:320] or None
    row.subject = " ".join((mail.subject or "").split())[:998] or None

    existing = lookups.request_of_message(mail.message_id)
    if existing is not None:
        return _finish(row, "duplicate", existing, reason="duplicate_message_id")

    if not released:
        held = _held_back(uow, row, incoming, sender, lookups)
        if held is not None:
            reason, related = held
            return _Filed(_quarantine(uow, row, reason, related))

    mail = replace(mail, from_address=sender)
    request, matched_by = _thread(uow, row, incoming, sender, lookups)
    automatic = incoming.automatic is not None and not released
    if request is not None:
        mail = replace(mail, is_automatic=automatic)
        landed, message = join_request(uow, request, mail, None)
        if not automatic:
            _clear(lookups.health(sender), uow.now)
        return _finish(row, "joined", landed, matched_by=matched_by, reason=incoming.automatic if automatic else None,
                       message=message)
    if automatic:
        return _Filed(_quarantine(uow, row, incoming.automatic or "auto_reply", None))
    recent = None if released else lookups.recent_requests(sender)  # counted once: opening is what adds one
    if recent is not None and recent >= settings.new_requests_per_sender_hour:
        return _Filed(_quarantine(uow, row, "rate_limited", None))
    health = lookups.health(sender)  # read once: it decides the acknowledgment, then is cleared
    request, message = _open(uow, row, incoming, mail, sender, recent, health, lookups)
    _clear(health, uow.now)
    return _finish(row, "opened", request, message=message)


def _held_back(
    uow: UnitOfWork, row: ReceivedMail, incoming: IncomingMail, sender: str, lookups: _Lookups
) -> tuple[str, Request | None] | None:
    """Why a message must not reach a request as customer mail, checked before threading."""
    settings = uow.store.settings
    if incoming.automatic == "loop" or sender in settings.support_addresses:
        return "loop", None
    if incoming.automatic == "bounce":
        return "bounce", _note_bounce(uow, incoming, lookups)
    recipients = [r for r in row.recipients.split("\n") if r]
    if recipients and all(is_postmaster(r, settings.support_addresses) for r in recipients):
        return "postmaster", None
    if not sender or "@" not in sender:
        return "no_sender", None
    return None


def _note_bounce(uow: UnitOfWork, incoming: IncomingMail, lookups: _Lookups) -> Request | None:
    """Mark the addresses our own mail bounced from; a bounce of somebody else's mail changes nothing."""
    domains = support_domains(uow.store.settings.support_addresses)
    tokens = [t for t in (token_in_message_id(m, domains) for m in incoming.bounced_message_ids) if t]
    if not tokens:
        return None
    request = uow.session.execute(select(Request).where(Request.reply_token == tokens[0])).scalar_one_or_none()
    for address in incoming.bounced_recipients:
        address = address.strip().lower()[:320]
        health = lookups.health(address)
        if health is None:
            health = AddressHealth(address=address, failures=0, first_failed_at=uow.now)
            uow.session.add(health)
            lookups.added_health(health)
        health.failing = True
        health.failures = (health.failures or 0) + 1
        health.last_failed_at = uow.now
        health.cleared_at = None
        health.last_reason = f"our mail {', '.join(incoming.bounced_message_ids[:3])} bounced"[:1000]
        uow.record("mail.address_failing", actor=SYSTEM_ACTOR, request=None,
                   data={"address": address, "request": request.key if request else None})
    return request


def _clear(health: AddressHealth | None, now: datetime) -> None:
    """The address wrote to us, so it receives mail again."""
    if health is not None and health.failing:
        health.failing = False
        health.cleared_at = now


def _thread(
    uow: UnitOfWork, row: ReceivedMail, incoming: IncomingMail, sender: str, lookups: _Lookups
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
        request = _by_token(uow, token) if token else None  # locked already
        if request is not None:
            return request, "header"
        request = lookups.request_answered(message_id)
        if request is not None:
            return request, "header"
    for number in incoming.subject_keys:
        request = session.execute(select(Request).where(Request.number == number)).scalar_one_or_none()
        if request is not None and _may_use_tag(request, sender, lookups):
            return uow.lock_request(request.id), "subject_tag"
    return None, None


def _by_token(uow: UnitOfWork, token: str) -> Request | None:
    """The request with this reply token, locked.

    Without autoflush: the token of a request opened earlier in the same
    unit has not been mailed to anybody yet, so no mail can carry it, and a
    batch need not flush for every reply that does carry one.
    """
    with uow.session.no_autoflush:
        request_id = uow.session.execute(_BY_TOKEN, {"token": token}).scalar_one_or_none()
    return uow.lock_request(request_id) if request_id is not None else None


_BY_TOKEN = select(Request.id).where(Request.reply_token == bindparam("token"))


def _may_use_tag(request: Request, sender: str, lookups: _Lookups) -> bool:
    """A ``[SR-12]`` tag is easy to type: trust it only from the requester or the same customer."""
    if sender == request.requester_email:
        return True
    if request.customer_id is None:
        return False
    customer = lookups.customer(sender)
    return customer is not None and customer.id == request.customer_id


def _open(
    uow: UnitOfWork,
    row: ReceivedMail,
    incoming: IncomingMail,
    mail: InboundMail,
    sender: str,
    recent: int | None,
    health: AddressHealth | None,
    lookups: _Lookups,
) -> tuple[Request, Message]:
    """A new request: customer by address then domain, invoice and disputed amount if they are the customer's.

    ``recent`` is the sender's requests of the last hour, None for released
    mail (never acknowledged); ``health`` is the sender's address health.
    """
    released = recent is None
    flags: list[str] = list(mail.flags)
    extra: dict[str, object] = {"inbound_mail": row.id}
    customer = lookups.customer(sender)
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
        recent is not None
        and row.source == "smtp"  # ingested mail was written long ago: its senders are not told "received" now
        and recent < uow.store.settings.acks_per_sender_hour
        and not (health is not None and health.failing)
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
        # Without a customer no invoice can be theirs: every number is unmatched, so none is looked up.
        found = None if customer is None else _invoice(uow, number)
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


def _invoice(uow: UnitOfWork, number: str) -> Invoice | None:
    return uow.session.execute(select(Invoice).where(Invoice.number == number)).scalar_one_or_none()


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
) -> _Filed:
    """Mark the raw row filed; its request and message ids follow with :meth:`_Filed.link` after a flush."""
    row.status = "processed"
    row.outcome = outcome
    row.reason = reason
    row.matched_by = matched_by
    return _Filed(FilingResult(row.id, outcome, request.key, reason, matched_by), request, message)

