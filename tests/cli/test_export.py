"""``supportdesk requests export KEY [--format html|json] [--output FILE]``, as a user types it. Both databases.

SR-1 is built on the command line the way a team would build it: a customer's
mail with a PDF attached ingested through the gateway (with a trusted sender
verdict), a claim, a reply, an internal note, a credit approved and a refund
rejected, and the customer's answer to our reply. Subject and bodies carry
markup, as hostile mail would.
"""

from __future__ import annotations

import email.policy
import hashlib
import json
import os
from datetime import datetime, timezone
from email.message import EmailMessage
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update

from core.models import AuditHead, Event, Request
from core.store import Store
from templates import filesize, render, render_html, utc
from tests.cli.conftest import Cli, dump_store

AUTHSERV = "mx.support.test"
PDF = b"%PDF-1.4\n% receipt of the second charge\n" + bytes(range(256)) * 8
SUBJECT = 'Charged twice on INV-100 <script>alert("subject")</script>'
FIRST_BODY = "We were charged EUR 600.00 twice for INV-100.\n</pre><script>alert('body')</script>\n"
ANSWER_BODY = "Thanks! <b>bold</b> & <a href=\"http://evil.test/\">a link</a>\n"


def eml(*, subject: str, body: str, message_id: str, in_reply_to: str | None = None,
        attachment: tuple[str, bytes] | None = None) -> bytes:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = "Acme Billing <billing@acme.test>"
    msg["To"] = "support@localhost"
    msg["Subject"] = subject
    msg["Message-ID"] = message_id
    msg["Authentication-Results"] = f"{AUTHSERV}; dmarc=pass header.from=acme.test"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    msg.set_content(body)
    if attachment:
        msg.add_attachment(attachment[1], maintype="application", subtype="pdf", filename=attachment[0])
    return msg.as_bytes()


@pytest.fixture
def desk(seeded: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """SR-1 as the module docstring tells; returns the command and what the test needs to compare with."""
    monkeypatch.setenv("SUPPORTDESK_AUTHSERV_IDS", AUTHSERV)
    cli = seeded
    first = tmp_path / "first.eml"
    first.write_bytes(eml(subject=SUBJECT, body=FIRST_BODY, message_id="<first@acme.test>",
                          attachment=("receipt.pdf", PDF)))
    assert cli.json("ingest", str(first))["filed"] == {"opened": 1}
    cli.ok("requests", "claim", "SR-1", "--as", "UAGENT1")
    reply = cli.json("requests", "reply", "SR-1", "--body", "We are looking into it.", "--as", "UAGENT1")
    cli.ok("requests", "note", "SR-1", "--body", "Bank statement shows <two> charges.", "--as", "UAGENT1")
    cli.ok("approvals", "request", "SR-1", "--kind", "credit", "--amount", "600.00", "--currency", "EUR",
           "--reason", "double charge", "--as", "UAGENT1")
    cli.ok("approvals", "approve", "1", "--note", "statement checked", "--as", "UBIGBOSS")
    cli.ok("approvals", "request", "SR-1", "--kind", "refund", "--amount", "25", "--currency", "EUR",
           "--reason", "bank fees", "--as", "UAGENT1")
    cli.ok("approvals", "reject", "2", "--reason", "fees are not ours to refund", "--as", "UBIGBOSS")
    answer = tmp_path / "answer.eml"
    answer.write_bytes(eml(subject="Re: " + SUBJECT, body=ANSWER_BODY, message_id="<answer@acme.test>",
                           in_reply_to=reply["message_id"]))
    assert cli.json("ingest", str(answer))["filed"] == {"joined": 1}
    return {"cli": cli, "reply": reply, "dir": tmp_path}


def stored_chain(store: Store) -> tuple[list[tuple[int, str, str]], tuple[int, str]]:
    """(seq, prev_hash, hash) of SR-1's events as the events table has them, and the chain's head."""
    with store.read() as session:
        request_id = session.execute(select(Request.id).where(Request.number == 1)).scalar_one()
        rows = session.execute(select(Event.seq, Event.prev_hash, Event.hash).where(Event.request_id == request_id)
                               .order_by(Event.seq)).all()
        head = session.get(AuditHead, 1)
        assert head is not None
        return [tuple(r) for r in rows], (head.last_seq, head.last_hash)  # type: ignore[misc]


# --- JSON -----------------------------------------------------------------------------------


def test_json_holds_every_part_of_the_request(desk: dict[str, Any], store: Store) -> None:
    cli: Cli = desk["cli"]
    before = datetime.now(timezone.utc).replace(microsecond=0)

    record = cli.ok("requests", "export", "SR-1").json()  # JSON on standard output by default

    assert (record["format"], record["version"]) == ("supportdesk.request_record", 1)
    assert record["exported_by"] == f"supportdesk {metadata.version('supportdesk')}"
    assert datetime.fromisoformat(record["exported_at"].replace("Z", "+00:00")) >= before
    request = record["request"]
    assert (request["key"], request["subject"], request["status"], request["category"]) == (
        "SR-1", SUBJECT, "assigned", "billing_dispute")
    assert (request["requester"], request["assignee"], request["channel"]) == ("billing@acme.test", "UAGENT1", "email")
    assert request["disputed_amount"] == {"amount_minor": 60000, "currency": "EUR"}
    assert request["first_response_at"] == desk["reply"]["created_at"]
    assert request["sla"]["policy"] and request["sla"]["first_response_due_at"]
    assert record["customer"]["ref"] == "C-VER" and record["customer"]["kyc_status"] == "verified"
    assert record["customer"]["kyc_status_as_of"] == record["exported_at"]
    [invoice] = record["invoices"]
    assert (invoice["number"], invoice["amount"], invoice["due_on"], invoice["status"], invoice["current"]) == (
        "INV-100", {"amount_minor": 120000, "currency": "EUR"}, "2026-01-31", "open", True)

    first, ours, answer = record["messages"]
    assert (first["direction"], first["from"], first["subject"], first["message_id"], first["auth"]) == (
        "inbound", "billing@acme.test", SUBJECT, "<first@acme.test>", "pass")
    assert AUTHSERV in first["auth_summary"] and first["full_body"].startswith(FIRST_BODY.strip())
    assert (first["filing"]["source"], first["filing"]["outcome"], first["filing"]["quarantine_reason"]) == (
        "ingest", "opened", None)
    assert first["filing"]["raw_sha256"] == hashlib.sha256((desk["dir"] / "first.eml").read_bytes()).hexdigest()
    [attachment] = first["attachments"]
    assert (attachment["filename"], attachment["content_type"], attachment["size"], attachment["sha256"]) == (
        "receipt.pdf", "application/pdf", len(PDF), hashlib.sha256(PDF).hexdigest())
    assert (ours["direction"], ours["message_id"], ours["body"], ours["author_name"]) == (
        "outbound", desk["reply"]["message_id"], "We are looking into it.", "Alice Agent")
    assert (answer["in_reply_to"], answer["filing"]["matched_by"]) == (desk["reply"]["message_id"], "header")
    assert answer["body"].startswith("Thanks! <b>bold</b>")
    [note] = record["notes"]
    assert (note["body"], note["author"]) == ("Bank statement shows <two> charges.", "UAGENT1")

    credit, refund = record["approvals"]
    assert (credit["kind"], credit["amount"], credit["status"], credit["requested_by"], credit["decided_by"]) == (
        "credit", {"amount_minor": 60000, "currency": "EUR"}, "approved", "UAGENT1", "UBIGBOSS")
    assert (credit["decided_by_name"], credit["decision_note"], credit["rejection_reason"]) == (
        "Dave Director", "statement checked", None)
    assert credit["decided_at"] is not None
    assert (refund["kind"], refund["amount"], refund["status"], refund["reason"]) == (
        "refund", {"amount_minor": 2500, "currency": "EUR"}, "rejected", "bank fees")
    assert (refund["decided_by"], refund["rejection_reason"]) == ("UBIGBOSS", "fees are not ours to refund")

    assert [(e["kind"], e["actor"]) for e in record["timeline"]] == [
        ("request.opened", "customer:billing@acme.test"), ("request.claimed", "agent:UAGENT1"),
        ("message.outbound", "agent:UAGENT1"), ("message.note", "agent:UAGENT1"),
        ("approval.requested", "agent:UAGENT1"), ("approval.approved", "agent:UBIGBOSS"),
        ("approval.requested", "agent:UAGENT1"), ("approval.rejected", "agent:UBIGBOSS"),
        ("message.inbound", "customer:billing@acme.test"),
    ]
    assert record["timeline"][5]["summary"] == (
        "credit of 600.00 EUR approved (approval 1): statement checked (pending_approval → assigned)")


def test_json_hashes_are_the_ones_in_the_events_table(desk: dict[str, Any], store: Store) -> None:
    record = desk["cli"].ok("requests", "export", "SR-1", "--format", "json").json()

    events, (head_seq, head_hash) = stored_chain(store)
    assert [(e["seq"], e["prev_hash"], e["hash"]) for e in record["timeline"]] == events
    assert all(e["hash_ok"] for e in record["timeline"])
    audit = record["audit"]
    assert audit["head"] == {"seq": head_seq, "hash": head_hash}
    assert (audit["chain"]["ok"], audit["chain"]["tip_seq"], audit["chain"]["tip_hash"]) == (True, head_seq, head_hash)
    assert audit["chain"]["checked"] == head_seq and audit["events"] == len(events)
    # What `audit verify` reports is what the record says.
    verified = desk["cli"].json("audit", "verify")
    assert {k: audit["chain"][k] for k in verified} == verified
    assert audit["verify_command"] == "supportdesk audit verify"


# --- HTML -----------------------------------------------------------------------------------


class Page(HTMLParser):
    """Every tag and attribute of a page, and whether its elements nest and close properly."""

    VOID = {"meta", "br", "hr", "img", "input", "link", "col", "wbr", "source", "area", "base", "embed"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attributes: list[tuple[str, str | None]] = []
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    assert page.problems == [] and page.stack == [], (page.problems, page.stack)
    return page


def test_html_is_one_self_contained_file_that_escapes_customer_text(desk: dict[str, Any], store: Store) -> None:
    target = desk["dir"] / "SR-1 record.html"

    done = desk["cli"].ok("requests", "export", "SR-1", "--output", str(target))

    events, (head_seq, head_hash) = stored_chain(store)
    assert done.out == (f"SR-1 exported to {target} (html, {len(events)} events; audit chain verified up to "
                        f"#{head_seq})\n")
    html = target.read_text(encoding="utf-8")
    page = parse(html)
    assert page.tags[0] == "html" and html.startswith("<!DOCTYPE html>")
    # Nothing runs and nothing is fetched: no scripts, frames, images, stylesheets or links, in tags or in CSS.
    assert not {"script", "iframe", "img", "link", "object", "embed", "base", "form", "a"} & set(page.tags)
    assert not [name for name, _ in page.attributes if name in ("src", "href", "srcset", "action") or
                name.startswith("on")]
    assert "url(" not in html and "@import" not in html
    # The one address in the file is the customer's own text, escaped.
    assert html.count("http") == 1 and "href=&#34;http://evil.test/&#34;" in html
    # Hostile text arrives as text.
    assert "<script" not in html.lower() and "<b>" not in html
    assert "&lt;script&gt;alert(&#34;subject&#34;)&lt;/script&gt;" in html
    assert "&lt;/pre&gt;&lt;script&gt;alert(&#39;body&#39;)&lt;/script&gt;" in html
    assert "&lt;a href=&#34;http://evil.test/&#34;&gt;a link&lt;/a&gt;" in html
    shown = "".join(page.text)
    assert SUBJECT in shown and "alert('body')" in shown and "<two> charges" in shown
    # Every section, the facts a reviewer files, and the chain.
    for heading in ("Summary", "Customer and invoice", "Timeline", "Messages", "Internal notes", "Attachments",
                    "Approvals and adjustments", "Audit chain"):
        assert f"<h2>{heading}</h2>" in html
    for fact in ("Acme Verified Ltd (C-VER)", "INV-100", "1200.00 EUR", "600.00 EUR", "25.00 EUR", "receipt.pdf",
                 hashlib.sha256(PDF).hexdigest(), "Dave Director (UBIGBOSS)", "fees are not ours to refund",
                 "statement checked", "dmarc=pass", "&lt;first@acme.test&gt;"):
        assert fact in html, fact
    for seq, prev_hash, digest in events:
        assert prev_hash in html and digest in html
    assert head_hash in html and f"event {head_seq}" in html
    assert "run <span class=\"mono\">supportdesk audit verify</span>" in html
    assert "Audit chain verified: <span class=\"ok\">yes</span>" in html
    assert f"by supportdesk {metadata.version('supportdesk')}" in html
    assert "DOES NOT MATCH" not in html and "NOT verified" not in html


def test_the_format_follows_the_flag_then_the_file_name(desk: dict[str, Any]) -> None:
    cli: Cli = desk["cli"]
    folder: Path = desk["dir"]

    assert cli.ok("requests", "export", "SR-1", "--format", "html").out.startswith("<!DOCTYPE html>")
    cli.ok("requests", "export", "SR-1", "-o", str(folder / "a.HTM"))
    cli.ok("requests", "export", "SR-1", "-o", str(folder / "b.json"))
    cli.ok("requests", "export", "SR-1", "-o", str(folder / "c.html"), "--format", "json")
    cli.ok("requests", "export", "SR-1", "-o", str(folder / "d.txt"))

    assert (folder / "a.HTM").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    for name in ("b.json", "c.html", "d.txt"):
        assert json.loads((folder / name).read_text(encoding="utf-8"))["request"]["key"] == "SR-1"


def test_an_existing_file_is_replaced_whole_and_keeps_its_mode(desk: dict[str, Any]) -> None:
    target: Path = desk["dir"] / "record.json"
    target.write_text("an older export that is much longer than nothing" * 10000, encoding="utf-8")
    os.chmod(target, 0o640)

    desk["cli"].ok("requests", "export", "SR-1", "--output", str(target))

    assert json.loads(target.read_text(encoding="utf-8"))["request"]["key"] == "SR-1"
    assert target.stat().st_mode & 0o777 == 0o640
    assert not [p.name for p in target.parent.iterdir() if p.name.endswith(".tmp")]


# --- refusals and what an export must not do ------------------------------------------------


def test_an_unknown_key_is_refused_and_no_file_is_made(desk: dict[str, Any], store: Store) -> None:
    cli: Cli = desk["cli"]
    folder: Path = desk["dir"]
    before = dump_store(store)

    assert cli.refused("requests", "export", "SR-99") == "supportdesk: there is no request SR-99"
    assert cli.refused("requests", "export", "SR-99", "-o", str(folder / "x.html")) == (
        "supportdesk: there is no request SR-99")
    assert cli.refused("requests", "export", "invoice-7") == "supportdesk: 'invoice-7' is not a request key like SR-12"
    assert cli.refused("requests", "export", "SR-1", "-o", str(folder / "missing" / "x.html")) == (
        f"supportdesk: {folder / 'missing' / 'x.html'}: the folder {folder / 'missing'} does not exist")
    assert cli.refused("requests", "export", "SR-1", "-o", str(folder)) == (
        f"supportdesk: {folder} is a folder; give a file name, like {folder / 'record.html'}")
    assert "invalid choice: 'pdf'" in cli.usage_error("requests", "export", "SR-1", "--format", "pdf")

    assert not (folder / "x.html").exists() and not (folder / "missing").exists()
    assert dump_store(store) == before


def test_exporting_writes_nothing_to_the_store(desk: dict[str, Any], store: Store) -> None:
    before = dump_store(store)

    desk["cli"].ok("requests", "export", "SR-1")
    desk["cli"].ok("requests", "export", "SR-1", "--format", "html")
    desk["cli"].ok("requests", "export", "SR-1", "-o", str(desk["dir"] / "r.html"))

    assert dump_store(store) == before


def test_a_tampered_trail_is_exported_and_said_to_fail(desk: dict[str, Any], store: Store) -> None:
    with store.read() as session:
        seq = session.execute(select(Event.seq).where(Event.kind == "approval.rejected")).scalar_one()
    with store.engine.begin() as connection:  # an edit behind the service layer's back
        connection.execute(update(Event).where(Event.seq == seq).values(data=text("replace(data, 'not ours', 'ours')")))
    target = desk["dir"] / "record.html"

    result = desk["cli"]("requests", "export", "SR-1", "-o", str(target))

    assert result.code == 1 and "audit chain NOT verified" in result.out
    assert result.err == (f"supportdesk: warning: the audit chain does not verify (event {seq} was altered: its "
                          "contents do not match its hash); the record says so; run `supportdesk audit verify`\n")
    html = target.read_text(encoding="utf-8")
    assert html.count("DOES NOT MATCH") == 1 and "The audit chain did NOT verify at export" in html
    assert "Audit chain verified: <span class=\"bad\">no</span>" in html


# --- the HTML environment and its filters ---------------------------------------------------


def test_the_html_environment_escapes_and_the_text_one_still_does_not() -> None:
    hostile = "<script>x</script> & \"q\""
    context = dict(request_key="SR-1", subject=hostile, customer_name=None, author_name=None, body_text=hostile,
                   resolution_note=None)

    assert render("email/reply.txt.j2", **context).startswith(hostile + "\n")
    html = render_html("export/request_record.html.j2", record=_minimal_record(hostile))
    assert "&lt;script&gt;x&lt;/script&gt; &amp; &#34;q&#34;" in html and "<script>" not in html
    parse(html)


def _minimal_record(subject: str) -> dict[str, Any]:
    """The smallest record the template accepts: a request with nothing but its one event."""
    request = {key: None for key in ("assignee", "assignee_name", "opened_by", "follows_up", "merged_into",
                                      "disputed_amount", "first_assigned_at", "first_response_at", "resolved_at",
                                      "closed_at", "resolution_note", "resolution_code")}
    request.update(key="SR-1", subject=subject, status="new", category="general", priority="normal", channel="cli",
                   requester="a@b.test", created_at="2026-01-05T09:00:00Z", reopen_count=0, merged_from=[],
                   sla={"policy": None, "first_response_due_at": None, "next_reply_due_at": None,
                        "resolution_due_at": None, "first_response_business_seconds": None,
                        "resolution_business_seconds": None})
    event = {"seq": 1, "kind": "request.opened", "actor": "admin:cli", "actor_name": None, "summary": subject,
             "created_at": "2026-01-05T09:00:00.000000Z", "prev_hash": "0" * 64, "hash": "a" * 64, "hash_ok": True}
    return {"format": "supportdesk.request_record", "version": 1, "exported_at": "2026-01-05T10:00:00Z",
            "exported_by": "supportdesk test", "request": request, "customer": None, "invoices": [], "messages": [],
            "notes": [], "approvals": [], "quarantined_mail": [], "timeline": [event],
            "audit": {"request_row_id": 1, "events": 1, "head": {"seq": 1, "hash": "a" * 64},
                      "chain": {"ok": True, "checked": 1, "tip_seq": 1, "tip_hash": "a" * 64, "first_bad_seq": None,
                                "problem": None},
                      "verify_command": "supportdesk audit verify", "hash_recipe": "sha256"}}


@pytest.mark.parametrize(("value", "shown"), [
    (None, "-"),
    ("2026-01-05T09:00:00Z", "2026-01-05 09:00:00 UTC"),
    ("2026-01-05T09:00:00.123456Z", "2026-01-05 09:00:00 UTC"),
    (datetime(2026, 1, 5, 10, 30, tzinfo=timezone.utc), "2026-01-05 10:30:00 UTC"),
])
def test_utc_filter(value: Any, shown: str) -> None:
    assert utc(value) == shown


def test_utc_filter_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="naive"):
        utc(datetime(2026, 1, 5))


@pytest.mark.parametrize(("size", "shown"), [
    (None, "-"), (0, "0 bytes"), (1023, "1,023 bytes"), (1024, "1.0 KiB (1,024 bytes)"),
    (2048 + 512, "2.5 KiB (2,560 bytes)"), (5 * 1024 ** 3, "5.0 GiB (5,368,709,120 bytes)"),
])
def test_filesize_filter(size: int | None, shown: str) -> None:
    assert filesize(size) == shown
