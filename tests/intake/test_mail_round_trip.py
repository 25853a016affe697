"""A customer conversation by mail only: SMTP in, filed, acknowledged, answered, threaded back, resolved. Both databases.

Real SMTP on loopback both ways: the gateway's listener takes the customer's
mail, the outbox delivers ours to a sink the test runs.
"""

from __future__ import annotations

from dataclasses import replace

from core import services
from core.audit import verify_chain
from core.queries import get_request_detail
from core.settings import HostPort
from core.store import Store
from intake.processor import process_pending
from notifications.email_delivery import deliver_due_email
from notifications.mail_transport import SmtpRelay
from tests import factories as f
from tests.intake.gateway import message, running_gateway
from tests.notifications import free_port, running_sink


def test_a_conversation_by_mail_threads_both_ways_and_injection_goes_nowhere(store: Store) -> None:
    port = free_port()
    settings = replace(store.settings, outbound_smtp=HostPort("127.0.0.1", port))
    store = Store(store.engine, store.clock, settings)
    f.seed(store)
    relay = SmtpRelay(settings)
    first = (
        b"From: =?utf-8?q?Jane=0D=0ABcc=3A_evil=40x=2Etest?= <ops@pending.test>\r\n"
        b"To: support@localhost\r\n"
        b"Subject: =?utf-8?q?Refund_INV-200=0D=0ABcc=3A_evil=40x=2Etest?=\r\n"
        b"Message-ID: <first@pending.test>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
        b"I was charged EUR 120.00 twice on INV-200.\r\n"
    )

    with running_gateway(store) as gw, running_sink(port) as sink:
        with gw.client() as client:
            client.sendmail("ops@pending.test", ["support@localhost"], first)
        [opened] = process_pending(store)
        assert (opened.outcome, opened.request_key) == ("opened", "SR-1")
        deliver_due_email(store, relay)
        [ack] = sink.received
        assert sink.rcpt_commands == ["ops@pending.test"]
        head = ack.content.split(b"\r\n\r\n", 1)[0].decode()
        assert not any(line.lower().startswith("bcc") for line in head.split("\r\n"))
        assert ack.message["In-Reply-To"] == "<first@pending.test>"
        reply_to = ack.message["Reply-To"]

        services.claim(store, "SR-1", actor=f.AGENT)
        services.reply(store, "SR-1", "We refunded the duplicate.", actor=f.AGENT)
        deliver_due_email(store, relay)
        our_reply = sink.received[-1].message
        assert our_reply["In-Reply-To"] == "<first@pending.test>" and our_reply["Auto-Submitted"] is None

        # The customer answers from a client that drops every threading header; the token in Reply-To carries it.
        with gw.client() as client:
            client.sendmail("ops@pending.test", [reply_to],
                            message(subject="thanks", body="Thanks, received.\n", sender="ops@pending.test",
                                    to=reply_to, message_id="<answer@pending.test>"))
        [joined] = process_pending(store)
        assert (joined.outcome, joined.request_key, joined.matched_by) == ("joined", "SR-1", "reply_token")

        services.resolve(store, "SR-1", note="Refunded 120.00 EUR", actor=f.AGENT)
        deliver_due_email(store, relay)
        notice = sink.received[-1].message
        assert "[SR-1]" in notice["Subject"] and notice["Auto-Submitted"] == "auto-generated"

    detail = get_request_detail(store, "SR-1")
    assert detail.request.subject == "Refund INV-200 Bcc: evil@x.test"
    assert detail.request.invoice.number == "INV-200"
    assert (detail.request.disputed_amount_minor, detail.request.disputed_currency) == (12000, "EUR")
    assert [m.direction for m in detail.messages] == ["inbound", "outbound", "inbound"]
    assert len(sink.received) == 3 and set(sink.rcpt_commands) == {"ops@pending.test"}
    with store.read() as session:
        assert verify_chain(session).ok
