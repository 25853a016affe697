"""E-mail copies of the digest, end to end: a real digest made and recorded, delivered to a real SMTP sink.

A small history (Jan 14 2026, UTC) is made through the service functions;
``make_digest`` records the daily digest of that day with
``digest_emails=("boss@acme.test",)``, whose ``digest.made`` event queues one
``email``/``digest`` outbox row; ``deliver_due_email`` sends it.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from core import services
from core.clock import FixedClock
from core.models import OutboxMessage
from core.services.common import check_email
from core.services.digests import DigestView, record_digest, resend_digest
from core.settings import Settings
from core.store import Store
from notifications.digest_job import DueDigest, make_digest, preview_digest
from notifications.digest_mail import build_digest_message, digest_message_id
from notifications.email_delivery import DeliveryReport, deliver_due_email
from notifications.mail_render import LOOP_HEADER, RenderError, envelope_problem
from notifications.mail_transport import MaildirTransport, SmtpRelay
from tests import factories as f
from tests.notifications import (
    DOMAIN,
    SUPPORT,
    SinkHandler,
    free_port,
    mail_settings,
    outbox_rows,
    running_sink,
    with_settings,
)

UTC = timezone.utc
BOSS = "boss@acme.test"
DUE = DueDigest("daily", date(2026, 1, 14))


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def mstore(store: Store, tmp_path: Path, port: int) -> Store:
    return with_settings(store, mail_settings(store, tmp_path, port, digest_emails=(BOSS,)))


@pytest.fixture
def relay(mstore: Store) -> SmtpRelay:
    return SmtpRelay(mstore.settings)


@pytest.fixture
def history(mstore: Store, clock: FixedClock) -> None:
    """Jan 14: three requests opened (no customer mail: opened from the command line), one claimed."""
    clock.set(datetime(2026, 1, 14, 8, tzinfo=UTC))
    f.seed(mstore)
    clock.set(datetime(2026, 1, 14, 9, tzinfo=UTC))
    first = f.open_request(mstore, subject="Charged twice").key
    f.open_request(mstore, subject="Wrong VAT", invoice="INV-100", disputed="10.00")
    f.open_request(mstore, subject="Address change")
    clock.set(datetime(2026, 1, 14, 10, tzinfo=UTC))
    services.claim(mstore, first, actor=f.AGENT)
    clock.set(datetime(2026, 1, 15, 9, 5, tzinfo=UTC))  # the day has ended; its digest is due


@pytest.fixture
def digest(mstore: Store, history: None) -> DigestView:
    made = make_digest(mstore, DUE)
    assert made is not None
    assert [(r.topic, json.loads(r.payload)) for r in outbox_rows(mstore)] == [
        ("digest", {"digest_id": made.id, "to": BOSS})]
    return made


def parse(raw: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(raw)  # type: ignore[return-value]


def text_of(msg: EmailMessage) -> str:
    """The text/plain body with the wire's CRLF line ends back to LF."""
    body = msg.get_body(("plain",))
    assert body is not None and body.get_content_charset() == "utf-8"
    return body.get_content().replace("\r\n", "\n")


def assert_is_the_digest(msg: EmailMessage, digest: DigestView) -> None:
    assert msg["Subject"] == digest.email_subject
    assert text_of(msg).startswith(digest.email_text)
    (chart,) = msg.iter_attachments()
    assert (chart.get_filename(), chart.get_content_type()) == ("trend.png", "image/png")
    assert chart.get_content() == digest.chart_png


def test_the_digest_copy_arrives_as_plain_text_with_the_chart(
    mstore: Store, relay: SmtpRelay, port: int, clock: FixedClock, digest: DigestView
) -> None:
    with running_sink(port) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, sent=1)
        clock.advance(timedelta(hours=2))
        assert deliver_due_email(mstore, relay) == DeliveryReport()  # sent once, never again

    (received,) = sink.received
    assert (received.mail_from, received.rcpt_tos) == (SUPPORT, (BOSS,))
    msg = received.message
    (row,) = outbox_rows(mstore)
    assert msg["Subject"] == "Support digest for Wednesday Jan 14 2026"
    assert msg["To"] == BOSS
    (sender,) = msg["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Support", SUPPORT)
    assert msg["Message-ID"] == f"<digest-{digest.id}-outbox-{row.id}@{DOMAIN}>"
    assert msg["Date"].datetime == datetime(2026, 1, 15, 9, 5, tzinfo=UTC)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Auto-Response-Suppress"] == "All" and msg["Precedence"] == "auto_reply"
    assert msg[LOOP_HEADER] == DOMAIN
    assert msg["Reply-To"] is None and msg["In-Reply-To"] is None and msg["References"] is None
    assert msg.get_content_type() == "multipart/mixed"
    assert_is_the_digest(msg, digest)
    assert "• New: *3*" in digest.email_text  # non-ASCII, so the text travels quoted-printable
    assert msg.get_body(("plain",))["Content-Transfer-Encoding"] == "quoted-printable"
    assert (row.status, row.attempts, row.last_error) == ("sent", 1, None)


def test_a_resent_digest_is_the_same_digest_in_new_mail(
    mstore: Store, relay: SmtpRelay, port: int, digest: DigestView
) -> None:
    with running_sink(port) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, sent=1)
        resend_digest(mstore, digest.id, emails=(BOSS, "ops@acme.test"), actor="system:test")
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=2, sent=2)

    assert [r.rcpt_tos for r in sink.received] == [(BOSS,), (BOSS,), ("ops@acme.test",)]
    messages = sink.messages()
    for msg in messages:
        assert_is_the_digest(msg, digest)
    assert len({m["Message-ID"] for m in messages}) == 3
    assert {r.status for r in outbox_rows(mstore)} == {"sent"}


@pytest.mark.parametrize("address", ["boss\x7f@acme.test", "böss@acme.test", "bo\\ss@acme.test"])
def test_an_address_the_envelope_refuses_fails_clearly_and_never_reaches_the_relay(
    mstore: Store, relay: SmtpRelay, port: int, history: None, address: str
) -> None:
    assert check_email(address) == address and envelope_problem(address) is not None  # the premise
    record_digest(mstore, preview_digest(mstore, DUE), emails=(address,), actor="system:test")

    with running_sink(port) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, failed=1)

    (row,) = outbox_rows(mstore)
    assert row.status == "failed"
    assert row.last_error == f"invalid recipient: {envelope_problem(address)}"
    assert sink.rcpt_commands == []


@pytest.mark.parametrize(("payload", "error"), [
    ({"digest_id": 424242, "to": BOSS}, "cannot make the digest mail: there is no digest 424242"),
    ({"to": BOSS}, "cannot make the digest mail: outbox row {id} names no digest and address"),
])
def test_a_row_whose_digest_is_missing_fails_without_stopping_the_others(
    mstore: Store, relay: SmtpRelay, port: int, digest: DigestView, payload: dict, error: str
) -> None:
    resend_digest(mstore, digest.id, emails=("ops@acme.test",), actor="system:test")
    broken = outbox_rows(mstore)[0]
    with mstore.unit_of_work() as uow:
        uow.session.get(OutboxMessage, broken.id).payload = json.dumps(payload)
        uow.commit()

    with running_sink(port) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=2, sent=1, failed=1)

    broken, fine = outbox_rows(mstore)
    assert broken.status == "failed" and broken.last_error.startswith(error.format(id=broken.id))
    assert fine.status == "sent" and [r.rcpt_tos for r in sink.received] == [("ops@acme.test",)]


def test_relay_down_or_busy_the_copy_waits_and_goes_out_once_with_one_message_id(
    mstore: Store, relay: SmtpRelay, port: int, clock: FixedClock, digest: DigestView
) -> None:
    assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, retried=1)  # nothing listens
    (row,) = outbox_rows(mstore)
    assert (row.status, row.attempts) == ("pending", 1) and "ConnectionRefusedError" in row.last_error
    assert row.next_attempt_at == clock.now() + timedelta(seconds=30)

    handler = SinkHandler(data_reply="451 4.3.0 Please try again later")
    with running_sink(port, handler) as sink:
        assert deliver_due_email(mstore, relay) == DeliveryReport()  # not due yet
        clock.advance(timedelta(seconds=30))
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, retried=1)
        (row,) = outbox_rows(mstore)
        assert row.status == "pending" and "451" in row.last_error
        handler.data_reply = None
        clock.advance(timedelta(seconds=60))
        assert deliver_due_email(mstore, relay) == DeliveryReport(claimed=1, sent=1)
        clock.advance(timedelta(hours=2))
        assert deliver_due_email(mstore, relay) == DeliveryReport()

    assert len(sink.received) == 1 and len(sink.attempts) == 2
    assert len({parse(a.content)["Message-ID"] for a in sink.attempts}) == 1
    (row,) = outbox_rows(mstore)
    assert (row.status, row.attempts, row.last_error) == ("sent", 3, None)


def test_without_a_relay_the_copy_lands_in_the_maildir(
    store: Store, tmp_path: Path, clock: FixedClock, history: None
) -> None:
    maildir_store = with_settings(store, mail_settings(store, tmp_path, None, digest_emails=(BOSS,)))
    made = make_digest(maildir_store, DUE)
    assert made is not None

    report = deliver_due_email(maildir_store, MaildirTransport(maildir_store.settings.outgoing_maildir))

    assert report == DeliveryReport(claimed=1, sent=1)
    (path,) = (tmp_path / "outgoing-mail" / "new").iterdir()
    msg = parse(path.read_bytes())
    assert msg["To"] == BOSS and msg["Auto-Submitted"] == "auto-generated"
    assert_is_the_digest(msg, made)


# --- the message alone, no database ---------------------------------------------------------------


def sample_digest(**overrides: object) -> DigestView:
    values: dict = dict(
        id=3, kind="daily", period="2026-01-14", since=datetime(2026, 1, 14, tzinfo=UTC),
        until=datetime(2026, 1, 15, tzinfo=UTC), figures={}, slack_text="*Digest*",
        email_subject="Support digest", email_text="*Digest*\n• New: *2*\n", chart_png=b"\x89PNG\r\n\x1a\n",
        created_at=datetime(2026, 1, 15, 9, tzinfo=UTC), created_by="system:test",
        slack_channel=None, slack_ts=None, chart_file_id=None,
    )
    values.update(overrides)
    return DigestView(**values)


def test_line_breaks_in_the_subject_stay_inside_one_header() -> None:
    settings = Settings(support_addresses=(SUPPORT,))
    digest = sample_digest(email_subject="Support digest\r\nBcc: evil@x.test", email_text="Hi\x00\r\nthere")
    msg = build_digest_message(digest, BOSS, settings, 7, datetime(2026, 1, 15, 9, tzinfo=UTC))

    parsed = parse(msg.as_bytes())
    assert parsed["Subject"] == "Support digest Bcc: evil@x.test" and parsed["Bcc"] is None
    assert parsed["Message-ID"] == f"<digest-3-outbox-7@{DOMAIN}>"
    assert text_of(parsed) == "Hi\nthere\n"


def test_a_recipient_or_a_message_id_that_cannot_be_written_is_refused() -> None:
    settings = Settings(support_addresses=(SUPPORT,))
    with pytest.raises(RenderError, match="invalid recipient"):
        build_digest_message(sample_digest(), "boss@acme.test\r\nBcc: evil@x.test", settings, 7,
                             datetime(2026, 1, 15, 9, tzinfo=UTC))
    with pytest.raises(RenderError, match="no usable Message-ID"):
        digest_message_id(3, 7, "bad>domain")
