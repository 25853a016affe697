"""The store: engine, clock and settings, and the unit of work.

A :class:`UnitOfWork` is one transaction. Service functions change rows,
:meth:`UnitOfWork.record` the events that describe the change, and
:meth:`UnitOfWork.commit` appends those events to the audit chain, writes
their outbox rows and commits everything at once. Leaving the ``with`` block
without committing rolls back, so a refusal halfway leaves the store as it was.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, insert, select, text, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from core.audit import PendingEvent, append_events, canonical_json
from core.clock import Clock, SystemClock
from core.db import make_engine, make_session_factory, read_engine
from core.errors import Conflict, ConnectionLost, StoreBusy, StoreUnavailable
from core.models import Counter, OutboxMessage, Request
from core.notification_policy import outbox_for
from core import sla_tracking
from core.settings import Settings
from core.sla import SlaConfig, load_sla_config

log = logging.getLogger(__name__)

# Built once: a request is locked for every reply filed, and building the statement cost more than running it
# (PostgreSQL; SQLite renders no FOR UPDATE).
_LOCK_REQUEST = select(Request).where(Request.id == bindparam("request_id")).with_for_update()
_REQUEST_NUMBERED = select(Request).where(Request.number == bindparam("number"))
_LOCK_REQUEST_NUMBERED = _REQUEST_NUMBERED.with_for_update()
# Request numbers, see UnitOfWork.next_request_number. Plain statements, built once: through the ORM the
# UPDATE cost ten times what it does itself.
_COUNTERS = Counter.__table__
_TAKE_REQUEST_NUMBER = (
    update(_COUNTERS).where(_COUNTERS.c.name == "request").values(value=_COUNTERS.c.value + 1)
    .returning(_COUNTERS.c.value)
)
_SET_LAST_REQUEST_NUMBER = update(_COUNTERS).where(_COUNTERS.c.name == "request").values(value=bindparam("last"))
# Outbox rows are plain rows too (an ORM bulk INSERT translated every dict through the mapper first).
_INSERT_OUTBOX = insert(OutboxMessage.__table__)


@dataclass
class Store:
    """What every service function needs; built once at start-up."""

    engine: Engine
    clock: Clock = field(default_factory=SystemClock)
    settings: Settings = field(default_factory=Settings)
    sla_config: SlaConfig = field(init=False, repr=False)
    _writes: sessionmaker[Session] = field(init=False, repr=False)
    _reads: sessionmaker[Session] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.sla_config = load_sla_config(self.settings.extra.get("sla") or {}, self.settings.timezone)
        self._writes = make_session_factory(self.engine)
        self._reads = make_session_factory(read_engine(self.engine))

    @classmethod
    def open(cls, settings: Settings, clock: Clock | None = None) -> Store:
        return cls(make_engine(settings.database_url), clock or SystemClock(), settings)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @property
    def slack_enabled(self) -> bool:
        return bool(self.settings.slack_bot_token)

    def unit_of_work(self) -> UnitOfWork:
        return UnitOfWork(self)

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only session; never committed."""
        with translate_store_errors():
            session = self._reads()
            try:
                yield session
            finally:
                session.close()  # ends the transaction; loaded objects stay readable

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database answers."""
        with self.read() as session:
            session.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


@contextmanager
def translate_store_errors() -> Iterator[None]:
    """Turn "the database is not there or is locked" into one error the edges understand."""
    try:
        yield
    except StaleDataError as exc:
        raise Conflict("somebody changed this at the same moment; look again and retry") from exc
    except OperationalError as exc:
        raise _unavailable(exc.orig, lost=exc.connection_invalidated) from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise ConnectionLost("the connection to the database was lost; try again shortly") from exc
        raise
    # The driver's own errors, where a hot path goes around SQLAlchemy (accepting mail):
    except sqlite3.OperationalError as exc:
        raise _unavailable(exc, lost=False) from exc
    except Exception as exc:
        if not _postgresql_operational(exc):
            raise
        raise _unavailable(exc, lost=False) from exc


def _postgresql_operational(error: BaseException) -> bool:
    """psycopg's OperationalError, found without importing psycopg: a store on SQLite never loads it
    (some 9 MB in each of serve's processes), and then no error can be one."""
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(error, psycopg.OperationalError)


def _unavailable(error: BaseException | None, *, lost: bool) -> StoreUnavailable:
    """The error for a database that did not do what was asked: busy (SQLite's lock), the connection lost, or down."""
    reason = _first_line(error) if error is not None else "OperationalError"
    if _sqlite_busy(error):
        return StoreBusy(f"the database is busy ({reason}); try again shortly")
    log.info("store unavailable: %s", reason)
    error_type = ConnectionLost if lost else StoreUnavailable
    return error_type(f"the database is unavailable right now ({reason}); try again shortly")


def _sqlite_busy(error: BaseException | None) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, extended codes included: another connection holds the lock."""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.Error) and code is not None and code & 0xFF in (5, 6)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else error.__class__.__name__


class UnitOfWork:
    """One transaction with its audit events and outbox rows."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.session: Session
        self.now: datetime
        self._pending: list[tuple[PendingEvent, Request | None, Mapping[str, Any]]] = []
        self._sla_fresh: set[int] = set()
        self._numbers: tuple[int, int] | None = None  # the first and last request number this unit took
        self._committed = False
        self._errors = translate_store_errors()

    def __enter__(self) -> UnitOfWork:
        self._errors.__enter__()
        self.session = self.store._writes()
        self.now = self.store.clock.now()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool | None:
        try:
            if not self._committed:
                self.session.rollback()
        finally:
            self.session.close()
        return self._errors.__exit__(exc_type, exc, tb)

    def record(
        self,
        kind: str,
        *,
        actor: str,
        request: Request | None,
        data: dict[str, Any] | None = None,
        ids: Mapping[str, Any] | None = None,
    ) -> None:
        """Describe a change; appended to the chain when the unit commits.

        ``ids`` adds data entries whose values are the ids of rows this unit
        adds (``{"message_id": message}``), read when the unit is flushed at
        commit: a caller adding many rows then needs no flush of its own to
        learn each id, and the event is the same as with the id given in ``data``.
        """
        self._pending.append((PendingEvent(kind, actor, None, dict(data or {})), request, dict(ids or {})))

    def commit(self) -> None:
        """Flush the changes, refresh SLA clocks, append the events, write their outbox rows, commit."""
        self.session.flush()  # assigns ids to new requests before events reference them
        if self._numbers is not None and self._numbers[1] > self._numbers[0]:  # before the chain's head, locked last
            self.session.connection().execute(_SET_LAST_REQUEST_NUMBER, {"last": self._numbers[1]})
        pending = [
            (
                PendingEvent(item.kind, item.actor, request.id if request is not None else None,
                             {**item.data, **{key: row.id for key, row in ids.items()}}),
                request,
            )
            for item, request, ids in self._pending
        ]
        self._refresh_sla(pending)
        sequence = append_events(self.session, (p for p, _ in pending), self.now)
        outbox = [
            {
                "channel": draft.channel,
                "topic": draft.topic,
                "request_id": request.id if request is not None else None,
                "event_seq": seq,
                "payload": canonical_json(draft.payload),
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": max(self.now, draft.not_before) if draft.not_before else self.now,
                "created_at": self.now,
            }
            for seq, (item, request) in zip(sequence, pending)
            for draft in outbox_for(
                item.kind,
                item.data,
                request_key=request.key if request is not None else None,
                channel=request.channel if request is not None else None,
                slack_enabled=self.store.slack_enabled,
            )
        ]
        if outbox:  # one multi-row INSERT: a unit that files a batch of mail writes many rows
            self.session.connection().execute(_INSERT_OUTBOX, outbox)
        self.session.commit()
        self._committed = True
        self._pending.clear()

    def _refresh_sla(self, pending: list[tuple[PendingEvent, Request | None]]) -> None:
        """Move the due times of every request this transaction touched, before the chain is locked."""
        touched: dict[int, Request] = {}
        new_events: dict[int, list[tuple[str, str, datetime]]] = {}
        for item, request in pending:
            if request is None or request.id in self._sla_fresh:
                continue
            touched[request.id] = request
            new_events.setdefault(request.id, []).append((item.kind, canonical_json(item.data), self.now))
        sla_tracking.refresh(self.session, self.store.sla_config, list(touched.values()), self.now, new_events)

    def next_request_number(self) -> int:
        """The next request number: unique, gapless, in the order requests are opened.

        The unit's first takes the counter row's lock and its next value (an
        UPDATE, without flushing: the counter depends on nothing pending).
        The lock holds until commit, so no other unit can take a number in
        between: the ones after are counted on here, and :meth:`commit` writes
        the last back. A unit filing a batch of mail then updates the counter
        twice, not once per request it opens. A rollback returns them all.
        """
        if self._numbers is None:
            first = self.session.connection().execute(_TAKE_REQUEST_NUMBER).scalar_one()
            self._numbers = (first, first)
        else:
            self._numbers = (self._numbers[0], self._numbers[1] + 1)
        return self._numbers[1]

    def sla_is_fresh(self, request: Request) -> None:
        """The caller has already brought this request's SLA columns up to date in this transaction."""
        self._sla_fresh.add(request.id)

    def lock_request(self, request_id: int) -> Request:
        """Load a request and lock its row until commit.

        SQLite's write transaction holds the database's one write lock from
        its first statement, so there a request loaded already is used as it
        is. Without autoflush: a row found by its id is in the database
        already, and what is pending cannot change it (an object loaded
        before is not refreshed), so flushing first would only cost. A unit
        filing a batch of mail locks a request for every reply and flushes
        once at the end.
        """
        with self.session.no_autoflush:
            if self.store.is_sqlite:
                return self.session.get_one(Request, request_id)
            return self.session.execute(_LOCK_REQUEST, {"request_id": request_id}).scalar_one()

    def lock_request_numbered(self, number: int) -> Request | None:
        """:meth:`lock_request` for the request numbered ``number`` (SR-number), None if there is none.

        One statement where finding the id first and then locking it were two.
        """
        statement = _REQUEST_NUMBERED if self.store.is_sqlite else _LOCK_REQUEST_NUMBERED
        with self.session.no_autoflush:
            return self.session.execute(statement, {"number": number}).scalar_one_or_none()
