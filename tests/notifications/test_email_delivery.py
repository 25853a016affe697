"""The delivery worker end to end: the real store (SQLite and PostgreSQL), a real SMTP sink on loopback."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
from sqlalchemy import select

from core import services
from core.clock import FixedClock
from core.db import make_engine
from core.models import Message, OutboxMessage
from core.reply_tokens import stable_message_id
from core.settings import Settings
from core.store import Store
from notifications import email_delivery
from notifications.email_delivery import DeliveryReport, deliver_due_email, run_email_delivery
from notifications.mail_render import LOOP_HEADER
from notifications.mail_transport import MaildirTransport, SmtpRelay
from tests import factories as f
from tests.notifications import (
    DOMAIN,
    SUPPORT,
    SinkHandler,
    free_port,
    mail_settings,
    mark_failing,
    open_by_email,
    outbox_rows,
    running_sink,
    token_of,
    with_settings,
)


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def settings(store: Store, tmp_path: Path, port: int) -> Settings:
    return mail_settings(store, tmp_path, port)


@pytest.fixture
def mstore(store: Store, settings: Settings) -> Store:
    return with_settings(store, settings)


@pytest.fixture
def relay(settings: Settings) -> SmtpRelay:
    return SmtpRelay(settings)


def test_acknowledgment_reply_and_resolution_notice_reach_the_customer(
    mstore: Store, relay: SmtpRelay, port: int
) -> None:
    f.seed(mstore)
    open_by_email(mstore, message_id="<m1@acme.test>", references=("<r0@acme.test>",))
    token = token_of(mstore, "SR-1")
    with running_sink(port) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, sent=1)
        stored_reply = services.reply(mstore, "SR-1", "We refunded the second charge.", actor=f.AGENT)
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, sent=1)
        services.claim(mstore, "SR-1", actor=f.AGENT)
        services.resolve(mstore, "SR-1", note="Refunded EUR 20.", actor=f.AGENT)
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, sent=1)
        assert deliver_due_email(mstore, relay) == DeliveryReport()

    ack, reply, notice = sink.messages()
    ack_row = outbox_rows(mstore, "acknowledgment")[0]
    assert [r.rcpt_tos for r in sink.received] == [("jane@acme.test",)] * 3
    assert {r.mail_from for r in sink.received} == {SUPPORT}

    assert ack["Message-ID"] == stable_message_id(token, DOMAIN, f"outbox-{ack_row.id}")
    assert ack["In-Reply-To"] == "<m1@acme.test>"
    assert ack["References"].split() == ["<r0@acme.test>", "<m1@acme.test>"]
    assert ack["Reply-To"] == f"help+{token}@{DOMAIN}"
    assert ack["Subject"] == "Re: Charged twice [SR-1]"
    assert ack["Auto-Submitted"] == "auto-replied"
    assert ack[LOOP_HEADER] == DOMAIN
    assert "as request SR-1" in ack.get_content()

    with mstore.read() as session:  # exactly what reply() decided and stored
        row = session.execute(select(Message).where(Message.message_id == stored_reply.message_id)).scalar_one()
    assert reply["Message-ID"] == row.message_id
    assert reply["In-Reply-To"] == row.in_reply_to == "<m1@acme.test>"
    assert reply["References"].split() == row.references.split() == ["<r0@acme.test>", "<m1@acme.test>"]
    assert reply["Subject"] == stored_reply.subject
    assert reply["Auto-Submitted"] is None and reply[LOOP_HEADER] is None
    assert reply.get_content().startswith("We refunded the second charge.")
    assert reply["Reply-To"] == f"help+{token}@{DOMAIN}"

    assert notice["Auto-Submitted"] == "auto-generated"
    assert notice["In-Reply-To"] == "<m1@acme.test>"
    assert "Refunded EUR 20." in notice.get_content()
    assert {r.status for r in outbox_rows(mstore)} == {"sent"}


def test_relay_outage_then_recovery_delivers_once(
    mstore: Store, relay: SmtpRelay, port: int, clock: FixedClock
) -> None:
    open_by_email(mstore)

    assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, retried=1)
    (row,) = outbox_rows(mstore)
    assert row.status == "pending" and row.attempts == 1
    assert "ConnectionRefusedError" in row.last_error
    assert row.next_attempt_at == clock.now() + timedelta(seconds=30)

    with running_sink(port) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport()  # not due yet
        clock.advance(timedelta(seconds=30))
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, sent=1)
        clock.advance(timedelta(hours=2))
        assert deliver_due_email(mstore, relay) == DeliveryReport()

    assert len(sink.received) == 1
    (row,) = outbox_rows(mstore)
    assert (row.status, row.attempts, row.last_error) == ("sent", 2, None)


@pytest.mark.parametrize("where", ["rcpt_reply", "data_reply"])
def test_a_451_is_retried_with_the_same_message_id(
    mstore: Store, relay: SmtpRelay, port: int, clock: FixedClock, where: str
) -> None:
    open_by_email(mstore)
    handler = SinkHandler(**{where: "451 4.3.0 Please try again later"})
    with running_sink(port, handler) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, retried=1)
        (row,) = outbox_rows(mstore)
        assert row.status == "pending" and "451" in row.last_error
        setattr(handler, where, None)
        clock.advance(timedelta(seconds=30))
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, sent=1)

    assert len(sink.received) == 1
    assert len(sink.attempts) == (2 if where == "data_reply" else 1)
    ids = {BytesParser(policy=policy.default).parsebytes(a.content)["Message-ID"] for a in sink.attempts}
    assert len(ids) == 1


@pytest.mark.parametrize("where", ["rcpt_reply", "data_reply"])
def test_a_550_fails_the_row_and_nothing_is_sent(
    mstore: Store, relay: SmtpRelay, port: int, clock: FixedClock, where: str
) -> None:
    open_by_email(mstore)
    with running_sink(port, SinkHandler(**{where: "550 5.1.1 No such user here"})) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, failed=1)
        clock.advance(timedelta(days=1))
        assert deliver_due_email(mstore, relay) == DeliveryReport()

    (row,) = outbox_rows(mstore)
    assert row.status == "failed"
    assert "550 5.1.1 No such user here" in row.last_error
    assert sink.received == []


def test_retries_give_up_in_the_end(
    mstore: Store, relay: SmtpRelay, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(email_delivery, "GIVE_UP_AFTER_ATTEMPTS", 3)
    open_by_email(mstore)

    reports = []
    for _ in range(3):
        reports.append(deliver_due_email(mstore, relay))
        clock.advance(timedelta(hours=1))

    assert reports == [DeliveryReport(1, retried=1), DeliveryReport(1, retried=1), DeliveryReport(1, failed=1)]
    (row,) = outbox_rows(mstore)
    assert row.status == "failed" and row.last_error.startswith("gave up after 3 attempts; the last: cannot talk")


def test_without_a_relay_the_mail_lands_in_the_maildir(store: Store, tmp_path: Path) -> None:
    mstore = with_settings(store, mail_settings(store, tmp_path, port=None))
    open_by_email(mstore)

    report = deliver_due_email(mstore, MaildirTransport(mstore.settings.outgoing_maildir))

    assert report == DeliveryReport(claimed=1, sent=1)
    (path,) = (tmp_path / "outgoing-mail" / "new").iterdir()
    msg = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
    assert msg["To"] == "jane@acme.test"
    assert msg["Subject"] == "Re: Charged twice [SR-1]"
    assert msg["In-Reply-To"] == "<m1@acme.test>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Reply-To"] == f"help+{token_of(mstore, 'SR-1')}@{DOMAIN}"


def test_a_stopping_worker_finishes_the_mail_in_hand_and_gives_the_rest_back(store: Store, tmp_path: Path) -> None:
    mstore = with_settings(store, mail_settings(store, tmp_path, port=None))
    for n in range(3):
        open_by_email(mstore, message_id=f"<m{n}@acme.test>")
    maildir = tmp_path / "outgoing-mail" / "new"

    # serve is told to stop while the first mail is being written
    report = deliver_due_email(mstore, MaildirTransport(mstore.settings.outgoing_maildir),
                               stopping=lambda: maildir.is_dir() and any(maildir.iterdir()))

    assert report == DeliveryReport(claimed=3, sent=1)
    assert len(list(maildir.iterdir())) == 1
    sent, *given_back = outbox_rows(mstore)
    assert sent.status == "sent"
    assert [(r.status, r.attempts, r.next_attempt_at) for r in given_back] == [("pending", 0, mstore.clock.now())] * 2


# --- hostile input -----------------------------------------------------------------------------


def test_header_injection_through_a_customers_mail_goes_nowhere(
    mstore: Store, relay: SmtpRelay, port: int
) -> None:
    services.import_customers(
        mstore, 'external_ref,name,emails,domains,kyc_status\nC-EVIL,"Evil\r\nBcc: evil@x.test",,evil.test,pending\n'
    )
    services.import_agents(
        mstore, 'slack_user_id,email,name,roles,approval_limit,currency\nUEVIL,a@support.test,"Al\r\nBcc: evil@x.test",agent,,\n'
    )
    open_by_email(
        mstore,
        sender="jane@evil.test",
        subject="Refund\r\nBcc: evil@x.test\r\n\r\nbody",
        message_id="<m1@evil.test>\r\nBcc: evil@x.test",
        references=("<r1@evil.test>\r\nBcc: evil2@x.test", "<r2@evil.test>"),
    )
    services.reply(mstore, "SR-1", "Hello\r\nBcc: evil@x.test", actor="UEVIL")

    with running_sink(port) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=2, sent=2)

    assert sink.rcpt_commands == ["jane@evil.test", "jane@evil.test"]
    for received in sink.received:
        msg = received.message
        assert msg["Bcc"] is None
        assert "evil@x.test" not in " ".join(received.rcpt_tos)
        head = received.content.split(b"\r\n\r\n", 1)[0].decode()
        assert not any(line.lower().startswith("bcc") for line in head.split("\r\n"))
    ack, reply = sink.messages()
    assert ack["Subject"] == "Re: Refund Bcc: evil@x.test body [SR-1]"
    assert ack["In-Reply-To"] is None
    assert reply["From"].addresses[0].display_name == "Al Bcc: evil@x.test (Support)"


def test_an_invalid_recipient_fails_clearly_and_never_reaches_the_relay(
    mstore: Store, relay: SmtpRelay, port: int
) -> None:
    open_by_email(mstore, sender="jane\x7f@acme.test")  # passes the address check of the core

    with running_sink(port) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, failed=1)

    (row,) = outbox_rows(mstore)
    assert row.status == "failed" and row.last_error.startswith("invalid recipient: ")
    assert sink.rcpt_commands == []


def test_a_bouncing_address_gets_no_automatic_mail_but_does_get_replies(
    mstore: Store, relay: SmtpRelay, port: int
) -> None:
    f.seed(mstore)
    open_by_email(mstore, message_id="<m1@acme.test>")
    with running_sink(port) as sink:
        deliver_due_email(mstore, relay)
        (ack,) = sink.messages()
        mark_failing(mstore, "jane@acme.test", ack["Message-ID"])  # the acknowledgment bounced
        open_by_email(mstore, message_id="<m2@acme.test>")

        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, failed=1)
        services.reply(mstore, "SR-2", "We are on it.", actor=f.AGENT)
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, sent=1)

    held = outbox_rows(mstore, "acknowledgment")[1]
    assert (held.status, held.last_error) == ("failed", "held back: jane@acme.test bounced our mail")
    assert [m["Subject"] for m in sink.messages()] == ["Re: Charged twice [SR-1]", "Re: Charged twice [SR-2]"]
    assert sink.messages()[1]["Auto-Submitted"] is None


def test_a_row_whose_reply_vanished_fails_without_stopping_the_others(
    mstore: Store, relay: SmtpRelay, port: int
) -> None:
    open_by_email(mstore, message_id="<a@acme.test>")
    open_by_email(mstore, message_id="<b@acme.test>")
    with mstore.unit_of_work() as uow:  # an outbox row pointing at a message that is not a reply
        first = outbox_rows(mstore)[0]
        row = uow.session.get(OutboxMessage, first.id)
        row.topic, row.payload = "reply", '{"message_id":424242,"request_key":"SR-1"}'
        uow.commit()

    with running_sink(port) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=2, sent=1, failed=1)

    broken, fine = outbox_rows(mstore)
    assert broken.status == "failed" and "cannot make the reply mail" in broken.last_error
    assert fine.status == "sent" and len(sink.received) == 1


# --- concurrency and the async loop --------------------------------------------------------------


def test_two_deliverers_at_once_send_every_mail_exactly_once(
    mstore: Store, relay: SmtpRelay, port: int
) -> None:
    for n in range(12):
        open_by_email(mstore, message_id=f"<m{n}@acme.test>")
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def deliverer() -> None:
        try:
            barrier.wait()
            while deliver_due_email(mstore, relay, limit=2).claimed:
                pass
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    with running_sink(port) as sink:
        threads = [threading.Thread(target=deliverer) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)

    assert errors == []
    ids = Counter(m["Message-ID"] for m in sink.messages())
    assert len(ids) == 12 and set(ids.values()) == {1}
    assert {r.status for r in outbox_rows(mstore)} == {"sent"}


def test_the_loop_delivers_when_woken_even_during_a_pass_and_stops(
    mstore: Store, relay: SmtpRelay, port: int
) -> None:
    open_by_email(mstore, message_id="<a@acme.test>")
    stop, wake = threading.Event(), _Wake()

    with running_sink(port, SinkHandler(data_delay=0.5)) as sink:
        worker = threading.Thread(target=run_email_delivery, args=(mstore, relay, stop, wake.wait_for, 60.0))
        worker.start()
        _until(lambda: len(sink.received) == 1)  # the first pass runs at once; the relay answers in 0.5 s
        open_by_email(mstore, message_id="<b@acme.test>")
        wake.ring()  # most likely while the first pass still waits on the relay; without it, a minute away
        _until(lambda: len(sink.received) == 2)
        stop.set()
        wake.ring()
        worker.join(timeout=10)

    assert not worker.is_alive()
    assert {r.status for r in outbox_rows(mstore)} == {"sent"}


def test_an_unexpected_error_on_one_row_is_logged_and_retried(
    store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = with_settings(store, replace(mail_settings(store, tmp_path), support_addresses=()))
    open_by_email(store)

    report = deliver_due_email(broken, MaildirTransport(tmp_path / "m"))

    assert report == DeliveryReport(claimed=1, retried=1)
    assert "unexpected error while delivering" in caplog.text and "Traceback" in caplog.text
    (row,) = outbox_rows(store)
    assert row.status == "pending" and row.last_error == "unexpected error: IndexError"


def test_the_loop_rides_out_an_unreachable_database(
    tmp_path: Path, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path}/no-such-folder/supportdesk.db"
    unreachable = Store(make_engine(url), clock, Settings(database_url=url))

    stop = threading.Event()
    worker = threading.Thread(target=run_email_delivery,
                              args=(unreachable, MaildirTransport(tmp_path / "m"), stop, stop.wait, 0.05))
    worker.start()
    time.sleep(0.3)
    assert worker.is_alive()
    stop.set()
    worker.join(timeout=10)

    assert not worker.is_alive()
    assert caplog.text.count("e-mail delivery paused: the database is unavailable") >= 2


class _Wake:
    """What serve's background process gives the loop: a wake kept until the loop asks for it."""

    def __init__(self) -> None:
        self._rung = threading.Event()

    def ring(self) -> None:
        self._rung.set()

    def wait_for(self, seconds: float) -> bool:
        if not self._rung.wait(seconds):
            return False
        self._rung.clear()
        return True


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
