"""The record of one request for auditors (core.record), and the sentences of its timeline. Both databases.

The request is built through the real services: mail filed by the gateway's
service (with an attachment and a sender verdict), a claim, a reply, a note,
a credit approved and a refund rejected, and a bounce of our reply that sat
in quarantine until an agent released it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text, update

from core import services
from core.audit import GENESIS_HASH, canonical_json, event_hash
from core.clock import FixedClock
from core.errors import InvalidInput, NotFound
from core.event_text import money_text, status_change, summarize
from core.models import AuditHead, Event, ReceivedMail, Request
from core.money import parse_amount
from core.record import RECORD_FORMAT, RECORD_VERSION, VERIFY_COMMAND, read_request_record
from core.services.correspondence import InboundMail, NewAttachment
from core.services.mail_intake import IncomingMail, RawMail, accept_raw_mail, file_inbound, release_quarantined
from core.store import Store
from tests import factories as f
from tests.core.snapshots import unchanged

START = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
PDF = b"%PDF-1.4\n% a receipt\n" + bytes(range(256)) * 4
FIRST_TEXT = "We were charged EUR 600.00 twice for INV-100.\nPlease refund one."


def receive(store: Store, incoming: IncomingMail, tag: str) -> tuple[int, str | None]:
    """Store raw bytes as the listener would and file them as the processor would: (inbound id, request key)."""
    accept_raw_mail(store, [RawMail(f"X-Tag: {tag}\r\n\r\nraw\r\n".encode(), incoming.mail.from_address,
                                    ("support@localhost",))])
    with store.read() as session:
        inbound_id = session.execute(select(func.max(ReceivedMail.id))).scalar_one()
    return inbound_id, file_inbound(store, inbound_id, incoming).request_key


def first_mail() -> IncomingMail:
    return IncomingMail(
        mail=InboundMail(
            from_address="billing@acme.test", subject="Charged twice on INV-100", body_text=FIRST_TEXT,
            message_id="<first@acme.test>", to_addresses=("support@localhost",),
            attachments=(NewAttachment("receipt.pdf", "application/pdf", PDF),),
            full_text=FIRST_TEXT + "\n\n> an older thread", auth_verdict="pass",
            auth_summary="dmarc=pass (mx.support.test)",
        ),
        invoice_numbers=("INV-100",),
        amounts=(f.euros("600.00"),),
    )


def bounce_of(message_id: str) -> IncomingMail:
    return IncomingMail(
        mail=InboundMail(from_address="mailer-daemon@acme.test", subject="Undelivered Mail Returned to Sender",
                         body_text="The mail system could not deliver your message.",
                         message_id="<bounce@acme.test>", in_reply_to=message_id),
        automatic="bounce",
        bounced_message_ids=(message_id,),
    )


@pytest.fixture
def built(store: Store, clock: FixedClock) -> dict[str, object]:
    """SR-1 through every step in the module docstring, each a few minutes after the one before."""
    f.seed(store)
    _, key = receive(store, first_mail(), "first")
    assert key == "SR-1"
    step = iter(range(1, 100))

    def later() -> None:
        clock.advance(timedelta(minutes=10 * next(step)))

    later()
    services.claim(store, key, actor=f.AGENT)
    later()
    reply = services.reply(store, key, "We are looking into it.", actor=f.AGENT)
    later()
    services.add_note(store, key, "Bank statement confirms the double charge.", actor=f.AGENT)
    later()
    credit = services.request_approval(store, key, kind="credit", amount=f.euros("600.00"), reason="double charge",
                                       actor=f.AGENT)
    later()
    services.decide_approval(store, credit.id, approve=True, note="statement checked", actor=f.BIG_APPROVER)
    later()
    refund = services.request_approval(store, key, kind="refund", amount=f.euros("25.00"), reason="bank fees",
                                       actor=f.AGENT)
    later()
    services.decide_approval(store, refund.id, approve=False, note="fees are not ours to refund",
                             actor=f.BIG_APPROVER)
    later()
    bounce_id, _ = receive(store, bounce_of(reply.message_id or ""), "bounce")
    later()
    release_quarantined(store, bounce_id, actor=f.AGENT2)
    file_inbound(store, bounce_id, bounce_of(reply.message_id or ""))
    later()
    return {"key": key, "reply": reply, "credit": credit, "refund": refund, "bounce_id": bounce_id,
            "exported_at": clock.now()}


def test_the_record_holds_every_part_with_its_values(store: Store, built: dict[str, object]) -> None:
    record = read_request_record(store, "sr-1")
    data = record.to_json()

    assert (data["format"], data["version"]) == (RECORD_FORMAT, RECORD_VERSION) == ("supportdesk.request_record", 1)
    assert data["exported_at"] == built["exported_at"].strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[attr-defined]
    assert data["exported_by"].startswith("supportdesk ")
    request = data["request"]
    assert (request["key"], request["subject"], request["category"], request["priority"]) == (
        "SR-1", "Charged twice on INV-100", "billing_dispute", "normal")
    assert (request["requester"], request["assignee"], request["assignee_name"]) == (
        "billing@acme.test", "UAGENT1", "Alice Agent")
    assert request["disputed_amount"] == {"amount_minor": 60000, "currency": "EUR"}
    assert request["created_at"] == "2026-01-05T09:00:00Z"
    assert request["first_assigned_at"] == "2026-01-05T09:10:00Z"
    assert request["first_response_at"] == "2026-01-05T09:30:00Z"
    assert request["sla"]["policy"] is not None and request["sla"]["first_response_due_at"] is not None
    assert request["sla"]["resolution_due_at"] is not None

    assert data["customer"] == {"ref": "C-VER", "name": "Acme Verified Ltd", "kyc_status": "verified",
                                "kyc_status_as_of": data["exported_at"],
                                "master_updated_at": "2026-01-05T09:00:00Z"}
    assert data["invoices"] == [{"number": "INV-100", "customer_ref": "C-VER",
                                 "amount": {"amount_minor": 120000, "currency": "EUR"}, "issued_on": "2026-01-01",
                                 "due_on": "2026-01-31", "status": "open", "current": True}]

    first, ours, bounce = data["messages"]
    assert (first["direction"], first["from"], first["subject"], first["message_id"]) == (
        "inbound", "billing@acme.test", "Charged twice on INV-100", "<first@acme.test>")
    assert (first["auth"], first["auth_summary"]) == ("pass", "dmarc=pass (mx.support.test)")
    assert first["body"] == FIRST_TEXT and first["full_body"] == FIRST_TEXT + "\n\n> an older thread"
    [attachment] = first["attachments"]
    assert (attachment["filename"], attachment["content_type"], attachment["size"], attachment["sha256"]) == (
        "receipt.pdf", "application/pdf", len(PDF), hashlib.sha256(PDF).hexdigest())
    assert "content" not in attachment
    assert first["filing"]["outcome"] == "opened" and first["filing"]["source"] == "smtp"
    assert first["filing"]["quarantine_reason"] is None and first["filing"]["released_by"] is None
    assert (ours["direction"], ours["to"], ours["body"], ours["author"], ours["author_name"]) == (
        "outbound", ["billing@acme.test"], "We are looking into it.", "UAGENT1", "Alice Agent")
    assert ours["message_id"] == built["reply"].message_id and ours["filing"] is None  # type: ignore[attr-defined]
    assert bounce["in_reply_to"] == ours["message_id"]
    assert bounce["filing"]["inbound_mail_id"] == built["bounce_id"]
    assert (bounce["filing"]["quarantine_reason"], bounce["filing"]["released_by"]) == ("bounce", "UAGENT2")
    assert bounce["filing"]["released_at"] == "2026-01-05T16:30:00Z"

    [note] = data["notes"]
    assert (note["direction"], note["body"], note["author_name"]) == (
        "note", "Bank statement confirms the double charge.", "Alice Agent")

    credit, refund = data["approvals"]
    assert (credit["kind"], credit["amount"], credit["status"], credit["reason"]) == (
        "credit", {"amount_minor": 60000, "currency": "EUR"}, "approved", "double charge")
    assert (credit["requested_by"], credit["requested_by_name"], credit["requested_at"]) == (
        "UAGENT1", "Alice Agent", "2026-01-05T10:40:00Z")
    assert (credit["decided_by"], credit["decided_by_name"], credit["decided_at"]) == (
        "UBIGBOSS", "Dave Director", "2026-01-05T11:30:00Z")
    assert (credit["decision_note"], credit["rejection_reason"]) == ("statement checked", None)
    assert (refund["kind"], refund["status"], refund["decided_by"]) == ("refund", "rejected", "UBIGBOSS")
    assert refund["rejection_reason"] == "fees are not ours to refund"

    assert [e["kind"] for e in data["timeline"]] == [
        "request.opened", "request.claimed", "message.outbound", "message.note", "approval.requested",
        "approval.approved", "approval.requested", "approval.rejected", "message.inbound",
    ]
    claimed = data["timeline"][1]
    assert (claimed["actor"], claimed["actor_name"], claimed["summary"]) == (
        "agent:UAGENT1", "Alice Agent", "claimed by UAGENT1 (new → assigned)")
    assert data["timeline"][7]["summary"] == (
        "refund of 25.00 EUR rejected (approval 2): fees are not ours to refund (pending_approval → assigned)")
    assert data["quarantined_mail"] == []


def test_the_hashes_are_the_stored_ones_and_the_chain_verifies(store: Store, built: dict[str, object]) -> None:
    record = read_request_record(store, "SR-1")
    data = record.to_json()

    with store.read() as session:
        request_id = session.execute(select(Request.id).where(Request.number == 1)).scalar_one()
        rows = session.execute(select(Event.seq, Event.prev_hash, Event.hash).where(Event.request_id == request_id)
                               .order_by(Event.seq)).all()
        head = session.get(AuditHead, 1)
        total = session.execute(select(func.count()).select_from(Event)).scalar_one()
        assert head is not None
        head_seq, head_hash = head.last_seq, head.last_hash
    assert [(e["seq"], e["prev_hash"], e["hash"]) for e in data["timeline"]] == [tuple(r) for r in rows]
    assert all(e["hash_ok"] for e in data["timeline"])
    audit = data["audit"]
    assert audit["request_row_id"] == request_id and audit["events"] == len(rows)
    assert audit["head"] == {"seq": head_seq, "hash": head_hash}
    assert audit["chain"] == {"ok": True, "checked": total, "tip_seq": head_seq, "tip_hash": head_hash,
                              "first_bad_seq": None, "problem": None}
    assert audit["verify_command"] == VERIFY_COMMAND == "supportdesk audit verify"
    # The recipe the record states recomputes every hash from what the record itself carries.
    for entry in data["timeline"]:
        body = canonical_json({"seq": entry["seq"], "request_id": audit["request_row_id"], "actor": entry["actor"],
                               "kind": entry["kind"], "data": canonical_json(entry["data"]),
                               "created_at": entry["created_at"]})
        assert hashlib.sha256(entry["prev_hash"].encode() + body.encode()).hexdigest() == entry["hash"]


def test_reading_the_record_writes_nothing(store: Store, built: dict[str, object]) -> None:
    with unchanged(store):
        read_request_record(store, "SR-1")


def test_an_unknown_or_malformed_key_is_refused_and_changes_nothing(store: Store, built: dict[str, object]) -> None:
    with unchanged(store):
        with pytest.raises(NotFound, match=r"^there is no request SR-42$"):
            read_request_record(store, "SR-42")
        with pytest.raises(InvalidInput, match=r"^'ticket 1' is not a request key like SR-12$"):
            read_request_record(store, "ticket 1")


def test_a_tampered_event_shows_in_its_own_hash_and_in_the_chain(store: Store, built: dict[str, object]) -> None:
    with store.read() as session:
        seq = session.execute(select(Event.seq).where(Event.kind == "approval.rejected")).scalar_one()
    # Somebody edits the rejection's reason behind the service layer's back.
    with store.engine.begin() as connection:
        connection.execute(update(Event).where(Event.seq == seq).values(
            data=text("replace(data, 'not ours', 'ours')")))

    record = read_request_record(store, "SR-1")

    assert [e.event.seq for e in record.timeline if not e.hash_ok] == [seq]
    assert (record.chain.ok, record.chain.first_bad_seq) == (False, seq)
    assert record.chain.problem == f"event {seq} was altered: its contents do not match its hash"
    assert record.to_json()["audit"]["chain"]["ok"] is False


def test_invoices_linked_earlier_are_listed_after_the_current_one(store: Store) -> None:
    f.seed(store)
    opened = f.open_request(store, sender="billing@acme.test", invoice="INV-100", disputed="50")
    services.link_invoice(store, opened.key, "INV-101", disputed=parse_amount("10", "USD"), actor=f.AGENT)

    invoices = read_request_record(store, opened.key).to_json()["invoices"]

    assert [(i["number"], i["current"], i["amount"]["currency"]) for i in invoices] == [
        ("INV-101", True, "USD"), ("INV-100", False, "EUR")]


def test_a_request_without_customer_invoice_or_mail_has_empty_parts(store: Store) -> None:
    f.seed(store)
    opened = f.open_request(store, sender="someone@else.test")

    data = read_request_record(store, opened.key).to_json()

    assert data["customer"] is None and data["request"]["customer"] is None
    assert data["invoices"] == [] and data["approvals"] == [] and data["notes"] == []
    [message] = data["messages"]
    assert message["filing"] is None and message["author"] == "UAGENT1"  # logged on the command line
    [opened_event] = data["timeline"]
    # The directory imports came first: the request's one event links to the last of them.
    with store.read() as session:
        before = session.execute(select(Event.hash).where(Event.seq == opened_event["seq"] - 1)).scalar_one()
    assert opened_event["prev_hash"] == before and opened_event["hash_ok"] is True
    assert opened_event["summary"].startswith("opened by cli for someone@else.test")


def test_mail_about_the_request_still_in_quarantine_is_listed(store: Store, built: dict[str, object]) -> None:
    reply = built["reply"]
    again = IncomingMail(mail=InboundMail(from_address="mailer-daemon@acme.test", subject="Delivery delayed",
                                          body_text="Still trying.", message_id="<bounce2@acme.test>",
                                          in_reply_to=reply.message_id),  # type: ignore[attr-defined]
                         automatic="bounce", bounced_message_ids=(reply.message_id,))  # type: ignore[attr-defined]
    held_id, _ = receive(store, again, "bounce2")

    [held] = read_request_record(store, "SR-1").to_json()["quarantined_mail"]

    assert (held["id"], held["reason"], held["related_request"], held["subject"]) == (
        held_id, "bounce", "SR-1", "Delivery delayed")


def test_the_stored_data_of_an_event_is_its_canonical_json() -> None:
    # The recipe in the record relies on it: re-encoding an event's data gives back the text its hash covers.
    data = {"b": [1, "ü"], "a": {"to": None}}
    text_form = canonical_json(data)
    assert canonical_json(json.loads(text_form)) == text_form == '{"a":{"to":null},"b":[1,"ü"]}'
    digest = event_hash(GENESIS_HASH, seq=1, request_id=7, actor="x", kind="k", data=text_form,
                        created_at=START)
    assert len(digest) == 64


# --- the sentences of the timeline (pure) ---------------------------------------------------


@pytest.mark.parametrize(("kind", "data", "sentence"), [
    ("request.claimed", {"assignee": "U1", "status": {"from": "new", "to": "assigned"}},
     "claimed by U1 (new → assigned)"),
    ("request.reassigned", {"assignee": "U2", "previous": "U1", "status": {"from": "assigned", "to": "assigned"}},
     "reassigned from U1 to U2"),
    ("approval.requested", {"approval_id": 3, "kind": "write_off", "amount": {"amount_minor": 1050, "currency": "JPY"},
                            "reason": "goodwill", "status": {"from": "assigned", "to": "pending_approval"}},
     "write-off of 1050 JPY requested (approval 3): goodwill (assigned → pending_approval)"),
    ("approval.approved", {"approval_id": 3, "kind": "credit", "amount": {"amount_minor": 1050, "currency": "EUR"},
                           "note": None, "status": {"from": "pending_approval", "to": "assigned"}},
     "credit of 10.50 EUR approved (approval 3) (pending_approval → assigned)"),
    ("request.resolved", {"note": "Refunded\n  twice", "code": "refunded", "status": {"from": "assigned",
                                                                                     "to": "resolved"}},
     "resolved [refunded]: Refunded twice (assigned → resolved)"),
    ("request.priority_changed", {"priority": "high", "previous": "normal"}, "priority changed from normal to high"),
    ("sla.breached", {"target": "first_response", "due_at": "2026-01-05T10:00:00Z", "policy": "default"},
     "first response target breached (due 2026-01-05T10:00:00Z, policy default)"),
    ("request.opened", {"channel": "email", "requester": "a@b.test", "customer_ref": "C-1", "invoice": "INV-1",
                        "disputed_amount": {"amount_minor": 500, "currency": "EUR"}, "flags": ["unverified_sender"],
                        "status": {"from": None, "to": "new"}},
     "opened by email for a@b.test; customer C-1; invoice INV-1; disputed 5.00 EUR; flagged unverified_sender "
     "(none → new)"),
    ("something.new_kind", {"status": {"from": "new", "to": "assigned"}}, "something: new kind (new → assigned)"),
])
def test_every_event_gets_one_sentence(kind: str, data: dict[str, object], sentence: str) -> None:
    assert summarize(kind, data) == sentence


def test_a_long_reason_is_cut_to_one_line() -> None:
    text_ = summarize("request.dismissed", {"reason": "spam " * 100})
    assert text_.startswith("dismissed as not a request: spam spam") and text_.endswith("…") and "\n" not in text_
    assert len(text_) < 160


def test_status_and_money_helpers() -> None:
    assert status_change({"status": {"from": "assigned", "to": "assigned"}}) is None
    assert status_change({}) is None
    assert money_text(None) == "-" and money_text({"amount_minor": 5, "currency": "KWD"}) == "0.005 KWD"
