"""Filing received mail: threading, customer identification, finance, loops, quarantine. Both databases."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DataError

from core import services
from core.audit import verify_chain
from core.clock import FixedClock
from core.errors import InvalidInput, NotFound, PermissionDenied, TransitionRefused
from core.models import AddressHealth, Event, Message, OutboxMessage, ReceivedMail, Request
from core.money import parse_amount
from core.reply_tokens import reply_address
from core.services.correspondence import InboundMail
from core.services.mail_intake import (
    MAX_FILING_ATTEMPTS,
    IncomingMail,
    RawMail,
    accept_raw_mail,
    file_inbound,
    file_inbound_batch,
    list_quarantine,
    pending_inbound_ids,
    quarantine_unreadable,
    record_filing_failure,
    release_quarantined,
)
from core.store import Store
from tests import factories as f
from tests.conftest import TABLES, _reset_postgres
from tests.core.snapshots import unchanged

SUPPORT = "support@localhost"


def received(store: Store, body: bytes = b"Subject: x\r\n\r\nhello\r\n", *, envelope_from: str | None = "jane@acme.test",
             recipients: tuple[str, ...] = (SUPPORT,)) -> int:
    """Accept one raw message and return its id."""
    accept_raw_mail(store, [RawMail(body, envelope_from, recipients)])
    with store.read() as session:
        return session.execute(select(func.max(ReceivedMail.id))).scalar_one()


_counter = iter(range(1, 10**9))


def incoming(
    sender: str = "jane@acme.test",
    subject: str = "Charged twice",
    *,
    message_id: str | None = None,
    in_reply_to: str | None = None,
    references: tuple[str, ...] = (),
    to: tuple[str, ...] = (),
    automatic: str | None = None,
    auth: str = "pass",
    subject_keys: tuple[int, ...] = (),
    invoices: tuple[str, ...] = (),
    amounts: tuple[str, ...] = (),
    bounced_recipients: tuple[str, ...] = (),
    bounced_message_ids: tuple[str, ...] = (),
) -> IncomingMail:
    return IncomingMail(
        mail=InboundMail(
            from_address=sender, subject=subject, body_text="Please help.",
            message_id=message_id if message_id is not None else f"<m{next(_counter)}@acme.test>",
            in_reply_to=in_reply_to, references=references, to_addresses=to,
            full_text="Please help.\n\n> quoted history", auth_verdict=auth, auth_summary=f"dmarc={auth}",
        ),
        automatic=automatic,
        subject_keys=subject_keys,
        invoice_numbers=invoices,
        amounts=tuple(parse_amount(a.split()[0], a.split()[1]) for a in amounts),
        bounced_recipients=bounced_recipients,
        bounced_message_ids=bounced_message_ids,
    )


def file_new(store: Store, mail: IncomingMail, **kwargs: object):  # type: ignore[no-untyped-def]
    return file_inbound(store, received(store, f"X-N: {next(_counter)}\r\n\r\nx\r\n".encode(), **kwargs), mail)


def outbox_topics(store: Store) -> list[str]:
    with store.read() as session:
        return list(session.execute(select(OutboxMessage.topic).order_by(OutboxMessage.id)).scalars())


def row(store: Store, inbound_id: int) -> ReceivedMail:
    with store.read() as session:
        return session.get(ReceivedMail, inbound_id)  # type: ignore[return-value]


def token_of(store: Store, key: str) -> str:
    with store.read() as session:
        return session.execute(select(Request.reply_token).where(Request.number == int(key[3:]))).scalar_one()


# --- acceptance --------------------------------------------------------------------------------


def test_the_same_bytes_are_stored_once(store: Store) -> None:
    item = RawMail(b"Subject: a\r\n\r\nbody\r\n", "a@x.test", (SUPPORT,), peer="127.0.0.1", helo="client")
    assert accept_raw_mail(store, [item, item]) == 1
    assert accept_raw_mail(store, [item]) == 0
    with store.read() as session:
        rows = session.execute(select(ReceivedMail)).scalars().all()
    assert len(rows) == 1
    assert rows[0].raw == item.raw and rows[0].envelope_from == "a@x.test" and rows[0].status == "received"
    assert rows[0].recipients == SUPPORT and rows[0].peer == "127.0.0.1" and rows[0].size == len(item.raw)


def test_a_batch_stores_each_new_message_once_with_its_own_envelope(store: Store) -> None:
    known = RawMail(b"Subject: known\r\n\r\nbody\r\n", "k@x.test", (SUPPORT,))
    accept_raw_mail(store, [known])
    batch = [RawMail(f"Subject: {n}\r\n\r\nbody {n}\r\n".encode(), f"{n}@x.test", (SUPPORT, f"support+{n}@x.test"),
                     peer=f"10.0.0.{n}", helo=f"mx{n}") for n in range(1, 4)]

    assert accept_raw_mail(store, [batch[0], known, batch[1], batch[0], batch[2]]) == 3

    with store.read() as session:
        rows = {r.raw: r for r in session.execute(select(ReceivedMail)).scalars()}
    assert len(rows) == 4
    for n, item in enumerate(batch, start=1):
        row = rows[item.raw]
        assert (row.envelope_from, row.recipients, row.peer, row.helo, row.size, row.status) == (
            f"{n}@x.test", f"{SUPPORT}\nsupport+{n}@x.test", f"10.0.0.{n}", f"mx{n}", len(item.raw), "received")
        assert row.received_at == store.clock.now() and row.received_at.tzinfo is not None


def test_the_null_sender_is_kept_apart_from_an_unknown_one(store: Store) -> None:
    accept_raw_mail(store, [RawMail(b"a\r\n", "", (SUPPORT,)), RawMail(b"b\r\n", None, ())])
    with store.read() as session:
        assert sorted(session.execute(select(ReceivedMail.envelope_from)).scalars(), key=str) == ["", None]


def test_pending_lists_unfiled_mail_oldest_first(store: Store) -> None:
    first, second = received(store, b"1\r\n"), received(store, b"2\r\n")
    assert pending_inbound_ids(store) == [first, second]
    f.seed(store)
    file_inbound(store, first, incoming())
    assert pending_inbound_ids(store) == [second]


# --- opening -----------------------------------------------------------------------------------


def test_new_mail_opens_a_request_acknowledged_and_marked_filed(store: Store) -> None:
    f.seed(store)
    inbound_id = received(store)
    result = file_inbound(store, inbound_id, incoming(message_id="<first@acme.test>"))
    assert (result.outcome, result.request_key, result.reason) == ("opened", "SR-1", None)
    detail = services_detail(store, "SR-1")
    assert detail.request.customer.external_ref == "C-VER"
    assert detail.messages[0].body_text == "Please help."
    assert detail.messages[0].full_text == "Please help.\n\n> quoted history"
    assert detail.messages[0].auth_verdict == "pass"
    assert outbox_topics(store) == ["acknowledgment"]
    filed = row(store, inbound_id)
    assert (filed.status, filed.outcome, filed.message_id) == ("processed", "opened", "<first@acme.test>")
    assert filed.request_id is not None and filed.message_row_id is not None


def test_filing_twice_files_once(store: Store) -> None:
    f.seed(store)
    inbound_id = received(store)
    mail = incoming()
    first = file_inbound(store, inbound_id, mail)
    again = file_inbound(store, inbound_id, mail)
    assert again.request_key == first.request_key == "SR-1" and again.outcome == "opened"
    with store.read() as session:
        assert session.execute(select(func.count()).select_from(Request)).scalar_one() == 1


def test_the_same_message_id_from_different_bytes_is_a_duplicate(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming(message_id="<same@acme.test>"))
    result = file_new(store, incoming(message_id="<same@acme.test>"))
    assert (result.outcome, result.request_key, result.reason) == ("duplicate", "SR-1", "duplicate_message_id")
    assert outbox_topics(store) == ["acknowledgment"]


def test_unknown_sender_opens_a_request_without_customer_flagged(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming("stranger@elsewhere.test"))
    detail = services_detail(store, "SR-1")
    assert detail.request.customer is None
    assert detail.messages[0].flags == ("unknown_sender",)


def test_unauthenticated_mail_is_never_linked_to_a_verified_customer(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming("billing@acme.test", auth="none", invoices=("INV-100",), amounts=("100.00 EUR",)))
    detail = services_detail(store, "SR-1")
    assert detail.request.customer is None and detail.request.invoice is None
    assert "unverified_sender" in detail.messages[0].flags
    with store.read() as session:
        data = json.loads(session.execute(select(Event.data).where(Event.kind == "request.opened")).scalar_one())
    assert data["candidate_customer"] == "C-VER"


def test_unauthenticated_mail_still_links_a_customer_whose_kyc_is_not_verified(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming("ops@pending.test", auth="none"))
    assert services_detail(store, "SR-1").request.customer.external_ref == "C-PEND"


def test_an_invoice_of_the_customer_is_linked_with_the_disputed_amount(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming(invoices=("INV-100",), amounts=("5000.00 EUR", "80.00 USD", "120.00 EUR")))
    request = services_detail(store, "SR-1").request
    assert request.category == "billing_dispute" and request.invoice.number == "INV-100"
    # 5000 EUR is more than the invoice and USD is the wrong currency: the first amount that fits is used.
    assert (request.disputed_amount_minor, request.disputed_currency) == (12000, "EUR")


def test_an_invoice_of_another_customer_is_flagged_never_linked(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming(invoices=("INV-200", "INV-999"), amounts=("10.00 EUR",)))
    detail = services_detail(store, "SR-1")
    assert detail.request.invoice is None and detail.request.category == "general"
    assert detail.request.disputed_amount_minor is None
    assert "invoice_not_found" in detail.messages[0].flags
    with store.read() as session:
        data = json.loads(session.execute(select(Event.data).where(Event.kind == "request.opened")).scalar_one())
    assert data["unmatched_invoices"] == ["INV-200", "INV-999"]


# --- threading ---------------------------------------------------------------------------------


def test_a_reply_to_our_reply_address_joins_by_token(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming())
    token = token_of(store, "SR-1")
    result = file_inbound(
        store, received(store, b"2\r\n", recipients=(reply_address(SUPPORT, token),)),
        incoming("someone@else.test", "totally new subject"),
    )
    assert (result.outcome, result.request_key, result.matched_by) == ("joined", "SR-1", "reply_token")


def test_a_reply_to_our_message_id_joins_by_token_even_when_the_message_is_unknown(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming())
    token = token_of(store, "SR-1")
    result = file_new(store, incoming(in_reply_to=f"<ack.outbox-1.{token}@localhost>"))
    assert (result.outcome, result.request_key, result.matched_by) == ("joined", "SR-1", "header")


def test_references_to_a_stored_message_join(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming(message_id="<orig@acme.test>"))
    result = file_new(store, incoming("colleague@acme.test", references=("<x@y>", "<orig@acme.test>")))
    assert (result.outcome, result.request_key, result.matched_by) == ("joined", "SR-1", "header")


def test_a_subject_tag_is_trusted_from_the_requester_and_the_same_customer_only(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming())
    by_requester = file_new(store, incoming(subject_keys=(1,)))
    by_colleague = file_new(store, incoming("billing@acme.test", subject_keys=(1,)))
    by_stranger = file_new(store, incoming("mallory@evil.test", subject_keys=(1,)))
    assert (by_requester.outcome, by_requester.matched_by) == ("joined", "subject_tag")
    assert (by_colleague.outcome, by_colleague.request_key) == ("joined", "SR-1")
    assert (by_stranger.outcome, by_stranger.request_key) == ("opened", "SR-2")


def test_a_reply_to_a_resolved_request_reopens_it_and_to_a_closed_one_opens_a_follow_up(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming(message_id="<orig@acme.test>"))
    services.claim(store, "SR-1", actor=f.AGENT)
    services.resolve(store, "SR-1", note="Refunded", actor=f.AGENT)
    file_new(store, incoming(in_reply_to="<orig@acme.test>"))
    assert services_detail(store, "SR-1").request.status == "assigned"
    services.resolve(store, "SR-1", note="Refunded", actor=f.AGENT)
    services.close(store, "SR-1", actor=f.AGENT)
    result = file_new(store, incoming(in_reply_to="<orig@acme.test>"))
    assert (result.outcome, result.request_key) == ("joined", "SR-2")
    assert services_detail(store, "SR-2").request.follows_up == "SR-1"


# --- machine mail and loops --------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["auto_reply", "list_mail", "null_sender", "mailer_daemon", "too_many_hops"])
def test_machine_mail_that_threads_nowhere_is_quarantined_and_never_acknowledged(store: Store, reason: str) -> None:
    f.seed(store)
    result = file_new(store, incoming(automatic=reason))
    assert (result.outcome, result.reason, result.request_key) == ("quarantined", reason, None)
    assert outbox_topics(store) == []
    assert [q.reason for q in list_quarantine(store)] == [reason]


def test_an_auto_reply_on_a_request_is_kept_there_and_changes_nothing(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming(message_id="<orig@acme.test>"))
    services.claim(store, "SR-1", actor=f.AGENT)
    services.wait_on_customer(store, "SR-1", actor=f.AGENT)
    result = file_new(store, incoming(automatic="auto_reply", in_reply_to="<orig@acme.test>"))
    assert (result.outcome, result.reason) == ("joined", "auto_reply")
    detail = services_detail(store, "SR-1")
    assert detail.request.status == "waiting_on_customer"
    assert detail.messages[-1].is_automatic


def test_our_own_loop_header_or_address_is_quarantined_as_a_loop(store: Store) -> None:
    f.seed(store)
    assert file_new(store, incoming(automatic="loop")).reason == "loop"
    assert file_new(store, incoming(SUPPORT)).reason == "loop"


def test_a_bounce_of_our_mail_marks_the_address_failing_until_it_writes_again(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming("ops@pending.test"))
    token = token_of(store, "SR-1")
    result = file_new(store, incoming("mailer-daemon@mx.pending.test", automatic="bounce",
                                      bounced_recipients=("ops@pending.test",),
                                      bounced_message_ids=(f"<ack.outbox-1.{token}@localhost>",)),
                      envelope_from="")
    assert (result.outcome, result.reason, result.request_key) == ("quarantined", "bounce", "SR-1")
    with store.read() as session:
        health = session.get(AddressHealth, "ops@pending.test")
        assert health is not None and health.failing and health.failures == 1
    # A new request from a failing address is not acknowledged ...
    file_new(store, incoming("ops@pending.test", "another"))
    assert outbox_topics(store).count("acknowledgment") == 1
    with store.read() as session:
        assert session.get(AddressHealth, "ops@pending.test").failing is False  # ... and it is alive again


def test_a_bounce_of_somebody_elses_mail_marks_nothing(store: Store) -> None:
    f.seed(store)
    result = file_new(store, incoming("mailer-daemon@x.test", automatic="bounce",
                                      bounced_recipients=("ops@pending.test",),
                                      bounced_message_ids=("<foreign@x.test>",)))
    assert result.reason == "bounce" and result.request_key is None
    with store.read() as session:
        assert session.get(AddressHealth, "ops@pending.test") is None


def test_mail_only_to_postmaster_is_quarantined(store: Store) -> None:
    f.seed(store)
    assert file_new(store, incoming(), recipients=("postmaster",)).reason == "postmaster"


def test_mail_without_a_usable_sender_is_quarantined(store: Store) -> None:
    f.seed(store)
    assert file_new(store, incoming(""), envelope_from="").reason == "no_sender"


def test_acknowledgments_and_new_requests_per_sender_are_limited(store: Store, clock: FixedClock) -> None:
    settings_limits = store.settings.acks_per_sender_hour, store.settings.new_requests_per_sender_hour
    assert settings_limits == (3, 20)
    f.seed(store)
    results = [file_new(store, incoming(subject=f"s{n}")) for n in range(21)]
    assert [r.outcome for r in results] == ["opened"] * 20 + ["quarantined"]
    assert results[-1].reason == "rate_limited"
    assert outbox_topics(store) == ["acknowledgment"] * 3
    clock.advance(timedelta(hours=1, seconds=1))
    assert file_new(store, incoming(subject="later")).outcome == "opened"
    assert outbox_topics(store) == ["acknowledgment"] * 4


# --- quarantine --------------------------------------------------------------------------------


def test_release_files_the_message_without_the_check_that_held_it_and_without_ack(store: Store) -> None:
    f.seed(store)
    held = file_new(store, incoming(automatic="auto_reply"))
    with unchanged(store):
        with pytest.raises(NotFound):
            release_quarantined(store, 999, actor=f.AGENT)
        with pytest.raises(PermissionDenied):
            release_quarantined(store, held.inbound_id, actor=f.MANAGER)
    view = release_quarantined(store, held.inbound_id, actor=f.AGENT)
    assert view.released_by == f.AGENT
    with pytest.raises(TransitionRefused):
        release_quarantined(store, held.inbound_id, actor=f.AGENT)
    result = file_inbound(store, held.inbound_id, incoming(automatic="auto_reply"))
    assert (result.outcome, result.request_key) == ("opened", "SR-1")
    assert outbox_topics(store) == []
    assert list_quarantine(store) == []
    assert [q.id for q in list_quarantine(store, include_released=True)] == [held.inbound_id]
    with store.read() as session:
        kinds = list(session.execute(select(Event.kind).order_by(Event.seq)).scalars())
    assert kinds[-3:] == ["mail.quarantined", "mail.released", "request.opened"]


def test_unreadable_mail_is_quarantined_with_its_error_and_raw_kept(store: Store) -> None:
    inbound_id = received(store, b"\x00garbage")
    result = quarantine_unreadable(store, inbound_id, "unparseable", "nested too deep")
    assert (result.outcome, result.reason) == ("quarantined", "unparseable")
    [view] = list_quarantine(store)
    assert view.last_error == "nested too deep" and row(store, inbound_id).raw == b"\x00garbage"


def test_a_message_that_keeps_failing_is_quarantined_after_the_last_attempt(store: Store) -> None:
    inbound_id = received(store)
    outcomes = [record_filing_failure(store, inbound_id, f"boom {n}") for n in range(MAX_FILING_ATTEMPTS)]
    assert outcomes == [False] * (MAX_FILING_ATTEMPTS - 1) + [True]
    filed = row(store, inbound_id)
    assert (filed.status, filed.reason, filed.last_error) == ("quarantined", "processing_failed", "boom 4")


def test_two_processors_filing_the_same_message_file_it_once(store: Store) -> None:
    f.seed(store)
    inbound_id = received(store)
    mail = incoming()
    results = []

    def work() -> None:
        results.append(file_inbound(store, inbound_id, mail))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The others either waited and saw it filed (SQLite) or skipped the locked row (PostgreSQL).
    assert {(r.outcome, r.request_key) for r in results} <= {("opened", "SR-1"), ("in_progress", None)}
    assert ("opened", "SR-1") in {(r.outcome, r.request_key) for r in results}
    with store.read() as session:
        assert session.execute(select(func.count()).select_from(Message)).scalar_one() == 1
    assert outbox_topics(store) == ["acknowledgment"]


# --- batches ------------------------------------------------------------------------------------


def batch_scenario() -> list[IncomingMail]:
    """Mail that takes every path, several of them depending on mail earlier in the same batch."""
    flood = [incoming("flood@x.test", f"flood {n}", message_id=f"<flood{n}@x.test>") for n in range(22)]
    return [
        incoming(message_id="<b1@acme.test>", invoices=("INV-100",), amounts=("120.00 EUR",)),
        incoming("colleague@acme.test", message_id="<b2@acme.test>", in_reply_to="<b1@acme.test>"),  # joins b1
        incoming(message_id="<b1@acme.test>"),  # a duplicate of the first
        incoming("stranger@elsewhere.test", message_id="<b4@elsewhere.test>", invoices=("INV-100",)),
        incoming("robot@x.test", message_id="<b5@x.test>", automatic="auto_reply"),
        incoming(SUPPORT, message_id="<b6@x.test>"),
        incoming("mailer-daemon@x.test", message_id="<b7@x.test>", automatic="bounce",
                 bounced_recipients=("someone@x.test",), bounced_message_ids=("<foreign@x.test>",)),
        incoming("billing@acme.test", message_id="<b8@acme.test>", subject_keys=(2,)),  # the tag of b1's request
        incoming(message_id="<b9@acme.test>", references=("<closed@acme.test>",)),  # a follow-up of SR-1
        incoming(message_id="<b10@acme.test>", subject="again"),  # jane's fourth request this hour: no ack
        incoming("ops@pending.test", message_id="<b11@pending.test>"),  # failing: not acknowledged, then cleared
        *flood,  # 20 opened, 3 of them acknowledged, then rate limited
    ]


def prepare_batch(store: Store, mails: list[IncomingMail]) -> list[tuple[int, IncomingMail]]:
    """The same starting point every time: a closed request, a failing address, the raw mail stored."""
    f.seed(store)
    file_new(store, incoming(message_id="<closed@acme.test>"))
    services.claim(store, "SR-1", actor=f.AGENT)
    services.resolve(store, "SR-1", note="done", actor=f.AGENT)
    services.close(store, "SR-1", actor=f.AGENT)
    with store.unit_of_work() as uow:
        uow.session.add(AddressHealth(address="ops@pending.test", failing=True, failures=1,
                                      first_failed_at=uow.now, last_failed_at=uow.now))
        uow.commit()
    return [(received(store, f"X-Batch: {n}\r\n\r\nx\r\n".encode()), mail) for n, mail in enumerate(mails)]


def filed_state(store: Store) -> dict[str, list[tuple[object, ...]]]:
    """Everything filing writes, in order, without what is random (reply tokens)."""
    queries = {
        "requests": select(Request.id, Request.number, Request.subject, Request.status, Request.requester_email,
                           Request.customer_id, Request.invoice_id, Request.category, Request.follows_up_id,
                           Request.disputed_amount_minor, Request.first_response_due_at, Request.sla_policy),
        "messages": select(Message.id, Message.request_id, Message.message_id, Message.from_address, Message.flags,
                           Message.is_automatic, Message.body_text),
        "events": select(Event.seq, Event.kind, Event.request_id, Event.actor, Event.data, Event.hash),
        "outbox": select(OutboxMessage.id, OutboxMessage.topic, OutboxMessage.request_id, OutboxMessage.event_seq),
        "inbound": select(ReceivedMail.id, ReceivedMail.status, ReceivedMail.outcome, ReceivedMail.reason,
                          ReceivedMail.matched_by, ReceivedMail.request_id, ReceivedMail.message_row_id,
                          ReceivedMail.message_id, ReceivedMail.from_address, ReceivedMail.subject,
                          ReceivedMail.processed_at, ReceivedMail.attempts),
        "health": select(AddressHealth.address, AddressHealth.failing, AddressHealth.failures,
                         AddressHealth.cleared_at),
    }
    with store.read() as session:
        return {name: [tuple(r) for r in session.execute(q.order_by(*q.selected_columns[:1])).all()]
                for name, q in queries.items()}


def empty_database(store: Store, url: str) -> None:
    """Back to a freshly migrated database, ids starting at 1 again (what the ``database`` fixture gives)."""
    if not store.is_sqlite:
        store.engine.dispose()
        _reset_postgres(url)
        return
    with store.engine.begin() as conn:
        for table in TABLES:
            conn.execute(text(f"DELETE FROM {table}"))
        if conn.execute(text("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'")).first():
            conn.execute(text("DELETE FROM sqlite_sequence"))
        conn.execute(text("INSERT INTO audit_head (id, last_seq, last_hash) VALUES (1, 0, :h)"), {"h": "0" * 64})
        conn.execute(text("INSERT INTO counters (name, value) VALUES ('request', 0)"))


def test_a_batch_files_exactly_as_one_message_at_a_time(store: Store) -> None:
    mails = batch_scenario()
    items = prepare_batch(store, mails)
    one_by_one = [file_inbound(store, inbound_id, mail) for inbound_id, mail in items]
    expected = filed_state(store)

    empty_database(store, store.settings.database_url)
    assert prepare_batch(store, mails) == items
    batched = file_inbound_batch(store, items)

    assert batched == one_by_one
    assert filed_state(store) == expected  # rows, events (hashes too: same order, same contents), outbox
    outcomes = [(r.outcome, r.request_key, r.reason, r.matched_by) for r in batched[:11]]
    assert outcomes == [
        ("opened", "SR-2", None, None),
        ("joined", "SR-2", None, "header"),
        ("duplicate", "SR-2", "duplicate_message_id", None),
        ("opened", "SR-3", None, None),
        ("quarantined", None, "auto_reply", None),
        ("quarantined", None, "loop", None),
        ("quarantined", None, "bounce", None),
        ("joined", "SR-2", None, "subject_tag"),
        ("joined", "SR-4", None, "header"),
        ("opened", "SR-5", None, None),
        ("opened", "SR-6", None, None),
    ]
    assert [r.outcome for r in batched[11:]] == ["opened"] * 20 + ["quarantined"] * 2
    assert batched[-1].reason == "rate_limited"
    with store.read() as session:
        assert verify_chain(session).ok
        acknowledged = [json.loads(d)["requester"] for d in session.execute(
            select(Event.data).where(Event.kind == "request.opened").order_by(Event.seq)).scalars()
            if json.loads(d)["acknowledge"]]
        assert session.get(AddressHealth, "ops@pending.test").failing is False  # type: ignore[union-attr]
    # SR-1 (before the batch), SR-2, SR-3, the follow-up SR-4; not SR-5, jane's fourth this hour; 3 of the flood.
    jane = "jane@acme.test"
    assert acknowledged == [jane, jane, "stranger@elsewhere.test", jane] + ["flood@x.test"] * 3


def test_a_batch_in_which_a_message_raises_is_rolled_back_whole(store: Store) -> None:
    """No savepoint per message: the error is raised and nothing of the batch is kept (the processor then files
    its messages one at a time, see tests/intake/test_processor_batch.py)."""
    f.seed(store)
    good = received(store, b"1\r\n")
    poison = received(store, b"2\r\n", envelope_from="a@b@c.test")  # passes the sender check, not the address check
    after = received(store, b"3\r\n")
    before = filed_state(store)

    with pytest.raises(InvalidInput, match="sender 'a@b@c.test' is not an e-mail address"):
        file_inbound_batch(store, [(good, incoming()), (poison, incoming("")),
                                   (after, incoming("stranger@elsewhere.test"))])

    assert filed_state(store) == before  # no request, message, event, outbox row; the raw rows untouched
    assert pending_inbound_ids(store) == [good, poison, after]
    # The request number the good message took was given back with the rest: the next one is SR-1 again.
    assert file_inbound(store, good, incoming()).request_key == "SR-1"
    with store.read() as session:
        assert verify_chain(session).ok


def test_a_database_error_at_the_batch_flush_is_raised_and_changes_nothing(store: Store) -> None:
    f.seed(store)
    long_id = "<" + "x" * 1000 + "@acme.test>"  # longer than the column: PostgreSQL refuses it, SQLite keeps it
    ids = [received(store, f"{n}\r\n".encode()) for n in range(3)]
    items = [(ids[0], incoming()), (ids[1], incoming(message_id=long_id)),
             (ids[2], incoming("stranger@elsewhere.test"))]
    if store.is_sqlite:
        assert [r.request_key for r in file_inbound_batch(store, items)] == ["SR-1", "SR-2", "SR-3"]
        return
    before = filed_state(store)
    with pytest.raises(DataError):  # the database's refusal, not StoreUnavailable: the message is at fault
        file_inbound_batch(store, items)
    assert filed_state(store) == before
    assert pending_inbound_ids(store) == ids


def test_request_numbers_a_batch_takes_continue_gapless_after_it(store: Store) -> None:
    """A unit takes its first number from the counter row and counts on in memory; commit writes the last back."""
    f.seed(store)
    ids = [received(store, f"{n}\r\n".encode()) for n in range(4)]
    batched = file_inbound_batch(store, [(i, incoming(f"user{n}@elsewhere.test")) for n, i in enumerate(ids[:3])])
    assert [r.request_key for r in batched] == ["SR-1", "SR-2", "SR-3"]
    assert file_inbound(store, ids[3], incoming()).request_key == "SR-4"
    assert services.open_request(store, channel="cli", mail=InboundMail("kim@acme.test", "By phone", "hello"),
                                 actor=f.AGENT).key == "SR-5"
    with store.read() as session:
        assert session.execute(text("SELECT value FROM counters WHERE name = 'request'")).scalar_one() == 5
        assert list(session.execute(select(Request.number).order_by(Request.id)).scalars()) == [1, 2, 3, 4, 5]


def test_a_batch_skips_mail_filed_already_and_lists_a_repeated_message_once(store: Store) -> None:
    f.seed(store)
    first, second = received(store, b"1\r\n"), received(store, b"2\r\n")
    earlier = file_inbound(store, first, incoming())
    mail = incoming("stranger@elsewhere.test")
    results = file_inbound_batch(store, [(first, incoming()), (second, mail), (second, mail)])
    assert results == [earlier, results[1], results[1]]
    assert (results[1].outcome, results[1].request_key) == ("opened", "SR-2")
    with store.read() as session:
        assert session.execute(select(func.count()).select_from(Request)).scalar_one() == 2


def test_a_bounce_in_a_batch_holds_back_the_acknowledgment_of_a_later_message(store: Store) -> None:
    f.seed(store)
    file_new(store, incoming("ops@pending.test"))
    token = token_of(store, "SR-1")
    bounce = incoming("mailer-daemon@mx.pending.test", automatic="bounce", bounced_recipients=("ops@pending.test",),
                      bounced_message_ids=(f"<ack.outbox-1.{token}@localhost>",))
    ids = [received(store, b"b\r\n", envelope_from=""), received(store, b"n\r\n")]
    results = file_inbound_batch(store, [(ids[0], bounce), (ids[1], incoming("ops@pending.test", "another"))])
    assert [(r.outcome, r.reason) for r in results] == [("quarantined", "bounce"), ("opened", None)]
    assert outbox_topics(store).count("acknowledgment") == 1
    with store.read() as session:
        health = session.get(AddressHealth, "ops@pending.test")
        assert health is not None and health.failing is False and health.failures == 1


def services_detail(store: Store, key: str):  # type: ignore[no-untyped-def]
    """The request with its messages, as the rest of the product sees it."""
    from core.queries import get_request_detail

    return get_request_detail(store, key)
