"""The mail processor files waiting mail in batches, parsing ahead in worker processes. Both databases.

Whatever the batching, every message ends up as filing it alone would leave
it: unreadable mail quarantined in its place in the trail, a message whose
filing fails counted against itself only, a store outage raised with nothing
counted.
"""

from __future__ import annotations

import json
import pickle
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from core.audit import verify_chain
from core.clock import FixedClock
from core.db import make_engine
from core.errors import StoreUnavailable
from core.models import Event, ReceivedMail
from core.settings import Settings
from core.services.mail_intake import (
    MAX_FILING_ATTEMPTS,
    IncomingMail,
    RawMail,
    StoredRawMail,
    accept_raw_mail,
    load_inbound_many,
    pending_inbound_ids,
)
from core.store import Store, translate_store_errors
from intake.processor import _collect, _lost_a_lock_race, process_pending, read_batch, read_stored, reader_pool
from tests import factories as f
from tests.conftest import Database

SUPPORT = "support@localhost"


def mail(n: int, sender: str = "jane@acme.test", **headers: str) -> bytes:
    lines = [f"From: {sender}", f"To: {SUPPORT}", f"Subject: Question {n}", f"Message-ID: <q{n}@acme.test>"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + f"\r\n\r\nHello, this is question {n} about INV-100.\r\n").encode()


def nested_too_deep() -> bytes:
    """A real message the parser refuses: a thousand nested multiparts."""
    depth = 1000
    opening = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(depth))
    closing = b"".join(b"--b%d--\r\n" % i for i in reversed(range(depth)))
    return b"From: deep@x.test\r\nSubject: deep\r\nMIME-Version: 1.0\r\n" + opening + b"Content-Type: text/plain\r\n\r\nhi\r\n" + closing


def without_from(n: int) -> bytes:
    return f"To: {SUPPORT}\r\nSubject: no From\r\nMessage-ID: <nf{n}@x.test>\r\n\r\nhello\r\n".encode()


def store_raw(store: Store, *items: tuple[bytes, str | None]) -> list[int]:
    accept_raw_mail(store, [RawMail(raw, envelope, (SUPPORT,)) for raw, envelope in items])
    with store.read() as session:
        return list(session.execute(select(ReceivedMail.id).order_by(ReceivedMail.id)).scalars())


def event_kinds(store: Store) -> list[tuple[str, int | None]]:
    with store.read() as session:
        rows = session.execute(select(Event.kind, Event.data).where(Event.kind.in_(
            ("request.opened", "request.customer_replied", "message.inbound", "mail.quarantined"))).order_by(Event.seq))
        return [(kind, json.loads(data).get("inbound_mail")) for kind, data in rows]


def test_unreadable_and_failing_mail_is_set_aside_in_place_and_the_rest_filed(store: Store) -> None:
    f.seed(store)
    ids = store_raw(
        store,
        (mail(1), "jane@acme.test"),
        (nested_too_deep(), "deep@x.test"),
        (without_from(3), "a@b@c.test"),  # the envelope sender is the sender, and it is no address
        (mail(4, "stranger@elsewhere.test", **{"In-Reply-To": "<q1@acme.test>"}), "stranger@elsewhere.test"),
        (mail(5, "other@elsewhere.test"), "other@elsewhere.test"),
    )
    results = process_pending(store, batch_size=2)

    assert [(r.inbound_id, r.outcome, r.reason) for r in results] == [
        (ids[0], "opened", None),
        (ids[1], "quarantined", "unparseable"),
        (ids[3], "joined", None),
        (ids[4], "opened", None),
    ]
    with store.read() as session:
        failed = session.get(ReceivedMail, ids[2])
        assert failed is not None and (failed.status, failed.attempts) == ("received", 1)
        assert (failed.last_error or "").startswith("InvalidInput: sender 'a@b@c.test'")
        assert verify_chain(session).ok
    # The trail is in arrival order: the unparseable message's quarantine sits between its neighbours.
    assert event_kinds(store) == [("request.opened", ids[0]), ("mail.quarantined", ids[1]),
                                  ("message.inbound", None), ("request.opened", ids[4])]
    assert pending_inbound_ids(store) == [ids[2]]


REFUSED_SUBJECT = "Refused by the database"


def refused_by_the_database() -> bytes:
    """A real message the parser reads fine and the database refuses to store (see :func:`refusing_database`)."""
    return (f"From: jane@acme.test\r\nTo: {SUPPORT}\r\nSubject: {REFUSED_SUBJECT}\r\n"
            "Message-ID: <refused@acme.test>\r\n\r\nPlease file me.\r\n").encode()


@contextmanager
def refusing_database(store: Store) -> Iterator[None]:
    """A trigger in the database that refuses the message row of :func:`refused_by_the_database`, and only it.

    A real refusal by the database, at the moment the batch's rows are
    flushed, that names no message: what a constraint, a full disk or a
    value the database cannot hold would do.
    """
    with store.engine.begin() as connection:
        if store.is_sqlite:
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_message BEFORE INSERT ON messages "
                f"WHEN NEW.subject = '{REFUSED_SUBJECT}' BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END")
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION refuse_message() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'refused by a trigger'; END $$")
            connection.exec_driver_sql(
                "CREATE TRIGGER refuse_message BEFORE INSERT ON messages FOR EACH ROW "
                f"WHEN (NEW.subject = '{REFUSED_SUBJECT}') EXECUTE FUNCTION refuse_message()")
    try:
        yield
    finally:
        with store.engine.begin() as connection:
            connection.exec_driver_sql("DROP TRIGGER refuse_message" + ("" if store.is_sqlite else " ON messages"))
            if not store.is_sqlite:
                connection.exec_driver_sql("DROP FUNCTION refuse_message()")


def test_a_message_the_database_refuses_is_counted_alone_retried_and_quarantined(store: Store) -> None:
    """A batch flushes its new rows once, so the refusal names no message: the whole batch is rolled back and its
    messages filed one at a time, which files the others and counts the refused one against itself only."""
    f.seed(store)
    ids = store_raw(store, (mail(1), None), (refused_by_the_database(), None),
                    (mail(3, "other@acme.test"), None))
    with refusing_database(store):
        results = process_pending(store)
        assert [(r.inbound_id, r.outcome, r.request_key) for r in results] == [(ids[0], "opened", "SR-1"),
                                                                            (ids[2], "opened", "SR-2")]
        with store.read() as session:
            refused = session.get(ReceivedMail, ids[1])
            assert refused is not None and (refused.status, refused.attempts) == ("received", 1)
            assert "refused by a trigger" in (refused.last_error or "")
        assert pending_inbound_ids(store) == [ids[1]]
        for _ in range(MAX_FILING_ATTEMPTS - 1):  # tried again on every round, alone now
            assert process_pending(store) == []
    with store.read() as session:
        refused = session.get(ReceivedMail, ids[1])
        assert refused is not None
        assert (refused.status, refused.reason, refused.attempts) == ("quarantined", "processing_failed",
                                                                      MAX_FILING_ATTEMPTS)
        assert verify_chain(session).ok
    assert pending_inbound_ids(store) == []
    assert event_kinds(store) == [("request.opened", ids[0]), ("request.opened", ids[2]),
                                  ("mail.quarantined", ids[1])]


def test_a_batch_a_parser_process_has_taken_is_waited_for_and_one_it_has_not_is_read_here(store: Store) -> None:
    """Reading a batch a parser process is reading already would waste that copy and delay every later batch."""
    ids = store_raw(store, (mail(1), None), (mail(2, "other@acme.test"), None))
    batch = load_inbound_many(store, ids)
    expected = read_batch(batch, store.settings)

    waiting: Future[list[Any]] = Future()  # not taken by any parser process: withdrawn and read here
    assert _collect(batch, waiting, store.settings) == (batch, expected) and waiting.cancelled()

    taken: Future[list[Any]] = Future()
    assert taken.set_running_or_notify_cancel()  # what the pool does when a parser process takes it
    from_the_parser = [object(), object()]
    threading.Timer(0.05, taken.set_result, [from_the_parser]).start()
    collected = _collect(batch, taken, store.settings)
    assert collected[1] is from_the_parser


def test_parsing_in_worker_processes_files_the_same(store: Store) -> None:
    f.seed(store)
    raws = [(mail(n, f"user{n % 3}@acme.test"), None) for n in range(7)]
    raws.append((mail(7, "late@acme.test", **{"In-Reply-To": "<q2@acme.test>"}), None))
    ids = store_raw(store, *raws)
    with reader_pool(1) as readers:
        results = process_pending(store, batch_size=3, readers=readers, read_ahead=2)
    assert [r.inbound_id for r in results] == ids
    assert [r.outcome for r in results] == ["opened"] * 7 + ["joined"]
    assert results[-1].request_key == "SR-3" and results[-1].matched_by == "header"
    with store.read() as session:
        assert verify_chain(session).ok


def test_what_a_parser_process_returns_survives_the_trip() -> None:
    raw = (b"From: jane@acme.test\r\nTo: support@localhost\r\nSubject: Refund INV-100 EUR 120.00\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n"
           b"Content-Type: text/plain\r\n\r\nPlease refund EUR 120.00 on INV-100.\r\n--x\r\n"
           b"Content-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--x--\r\n")
    stored = StoredRawMail(1, raw, "jane@acme.test", (SUPPORT,), "received", False)
    reading = read_stored(stored, Settings())
    assert isinstance(reading, IncomingMail) and reading.mail.attachments and reading.amounts
    assert pickle.loads(pickle.dumps(reading)) == reading
    with reader_pool(1) as readers:
        assert readers is not None
        assert readers.submit(read_batch, [stored], Settings()).result() == [reading]


def test_a_limit_and_batches_file_the_oldest_first(store: Store) -> None:
    f.seed(store)
    ids = store_raw(store, *[(mail(n, f"user{n}@acme.test"), None) for n in range(5)])
    seen: list[int] = []
    results = process_pending(store, limit=3, batch_size=2, on_batch=lambda filed: seen.append(len(filed)))
    assert [r.inbound_id for r in results] == ids[:3] and seen == [2, 1]
    assert pending_inbound_ids(store) == ids[3:]


def test_a_batch_also_ends_at_about_its_bytes_but_never_holds_less_than_one_message(store: Store) -> None:
    f.seed(store)
    sizes = [10_000, 10_000, 10_000, 60_000, 1_000]
    ids = store_raw(store, *[(mail(n, f"user{n}@acme.test", **{"X-Padding": "x" * size}), None)
                             for n, size in enumerate(sizes)])
    seen: list[int] = []
    results = process_pending(store, limit=10, batch_size=50, batch_bytes=25_000,
                              on_batch=lambda filed: seen.append(len(filed)))

    assert [r.inbound_id for r in results] == ids
    # two of 10 KB (a third would pass 25 KB); the third alone (the 60 KB one would pass it); the 60 KB one
    # alone, larger than a batch as it is; the last.
    assert seen == [2, 1, 1, 1]


@contextmanager
def writers_locked_out(database: Database, clock: FixedClock) -> Iterator[Store]:
    """A store whose writes fail because another connection holds the raw mail's write lock; reads still work.

    A real outage as the processor meets it: SQLite answers "database is
    locked" after a short busy timeout, PostgreSQL cancels the row lock after
    a short lock timeout. Leaving the block releases the lock.
    """
    if database.kind == "sqlite":
        holder = sqlite3.connect(make_url(database.url).database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        engine = make_engine(database.url, connect_args={"timeout": 0.2})
    else:
        holder = psycopg.connect(make_url(database.url).set(drivername="postgresql").render_as_string(False))
        holder.execute("LOCK TABLE inbound_mail IN EXCLUSIVE MODE")  # plain reads pass, row locks wait
        engine = make_engine(database.url, connect_args={"options": "-c lock_timeout=200"})
    locked = Store(engine, clock, Settings(database_url=database.url))
    try:
        yield locked
    finally:
        holder.rollback() if database.kind == "postgresql" else holder.execute("ROLLBACK")
        holder.close()
        locked.dispose()


def test_a_store_outage_is_raised_counts_nothing_and_everything_is_filed_once_after_it(
    store: Store, database: Database, clock: FixedClock
) -> None:
    f.seed(store)
    ids = store_raw(store, (mail(1), None), (mail(2, "other@acme.test"), None))
    with writers_locked_out(database, clock) as locked:
        with pytest.raises(StoreUnavailable):
            process_pending(locked)
    with store.read() as session:
        assert [r.attempts for r in session.execute(select(ReceivedMail)).scalars()] == [0, 0]
    assert pending_inbound_ids(store) == ids
    results = process_pending(store)
    assert [(r.inbound_id, r.outcome) for r in results] == [(ids[0], "opened"), (ids[1], "opened")]
    assert process_pending(store) == [] and event_kinds(store).count(("request.opened", ids[0])) == 1


def test_a_deadlock_between_processors_is_told_from_an_outage() -> None:
    """PostgreSQL breaking a deadlock aborts the batch; it is filed again one message at a time, not waited on."""

    def translated(orig: Exception) -> StoreUnavailable:
        try:
            with translate_store_errors():
                raise OperationalError("SELECT 1", {}, orig)
        except StoreUnavailable as exc:
            return exc
        raise AssertionError("not translated")

    assert _lost_a_lock_race(translated(psycopg.errors.DeadlockDetected("deadlock detected")))
    assert _lost_a_lock_race(translated(psycopg.errors.SerializationFailure("could not serialize")))
    assert not _lost_a_lock_race(translated(psycopg.errors.LockNotAvailable("lock timeout")))
    assert not _lost_a_lock_race(translated(sqlite3.OperationalError("database is locked")))
