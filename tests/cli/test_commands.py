"""The ``supportdesk`` command as a new user walks it: import, open, work, approve, resolve, close, verify.

Every test runs ``cli.main.main`` in-process against a real store, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from core.migrate import head_revision
from tests.cli.conftest import Cli, snapshot, write_csv
from tests.factories import AGENTS_CSV, CUSTOMERS_CSV, INVOICES_CSV

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{6})?Z$")
REQUEST_FIELDS = {"key", "subject", "status", "assignee", "customer", "category", "priority", "created_at"}


def assert_utc(value: Any) -> datetime:
    """An ISO 8601 UTC timestamp ending in Z; returned parsed."""
    assert isinstance(value, str) and ISO_UTC.match(value), value
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() == timezone.utc.utcoffset(None)
    return moment


def assert_money(value: Any, amount_minor: int, currency: str) -> None:
    """Money is exactly {"amount_minor": int, "currency": str}."""
    assert value == {"amount_minor": amount_minor, "currency": currency}
    assert type(value["amount_minor"]) is int


def open_dispute(cli: Cli, amount: str = "120.50") -> dict[str, Any]:
    """Open SR-n for jane@acme.test (customer C-VER) on invoice INV-100, disputing ``amount`` EUR."""
    return cli.json("requests", "open", "--from", "jane@acme.test", "--subject", "Charged twice",
                    "--body", "I was charged twice for INV-100.", "--invoice", "INV-100",
                    "--amount", amount, "--currency", "EUR", "--as", "UAGENT1")


def test_the_whole_story_of_a_disputed_invoice(cli: Cli, tmp_path: Path) -> None:
    """Import the directory from CSV, then take one billing dispute from opening to a verified audit trail."""
    # The directory, from CSV files, as an administrator would load it.
    for kind, content, rows in (("agents", AGENTS_CSV, 6), ("customers", CUSTOMERS_CSV, 3),
                                ("invoices", INVOICES_CSV, 3)):
        result = cli.ok("import", kind, str(write_csv(tmp_path, f"{kind}.csv", content)))
        assert result.out == f"{kind}: {rows} rows, {rows} created, 0 updated, 0 unchanged\n"

    # An agent logs the customer's e-mail, naming the invoice and the disputed amount.
    opened = open_dispute(cli)
    assert REQUEST_FIELDS <= opened.keys()
    assert opened["key"] == "SR-1"
    assert opened["subject"] == "Charged twice"
    assert opened["status"] == "new"
    assert opened["assignee"] is None
    assert opened["customer"] == {"ref": "C-VER", "name": "Acme Verified Ltd", "kyc_status": "verified"}
    assert opened["category"] == "billing_dispute"
    assert opened["priority"] == "normal"
    assert opened["channel"] == "cli"
    assert opened["requester"] == "jane@acme.test"
    assert opened["opened_by"] == "UAGENT1"
    assert_utc(opened["created_at"])
    assert opened["invoice"]["number"] == "INV-100"
    assert_money(opened["invoice"]["amount"], 120000, "EUR")
    assert_money(opened["disputed_amount"], 12050, "EUR")

    claimed = cli.ok("requests", "claim", "SR-1", "--as", "UAGENT1").out
    assert claimed.startswith("SR-1  Charged twice\n")
    assert "  status     assigned\n" in claimed
    assert "  assignee   Alice Agent (UAGENT1)\n" in claimed
    assert "  disputed   120.50 EUR\n" in claimed

    reply = cli.ok("requests", "reply", "SR-1", "--body", "We are looking into it.", "--as", "UAGENT1").out
    assert re.fullmatch(r"reply to jane@acme\.test queued for sending \(<[^>]+>\)\n", reply), reply
    note = cli.ok("requests", "note", "SR-1", "--body", "Duplicate charge confirmed.", "--as", "UAGENT1").out
    assert note == "internal note added to SR-1\n", note

    approval = cli.json("approvals", "request", "SR-1", "--kind", "credit", "--amount", "120.50",
                        "--currency", "EUR", "--reason", "charged twice", "--as", "UAGENT1")
    assert type(approval["id"]) is int
    assert approval["request_key"] == "SR-1"
    assert approval["kind"] == "credit"
    assert approval["status"] == "pending"
    assert approval["requested_by"] == "UAGENT1"
    assert approval["decided_by"] is None and approval["decided_at"] is None
    assert_money(approval["amount"], 12050, "EUR")
    assert_utc(approval["requested_at"])
    approval_id = str(approval["id"])

    pending = cli.json("approvals", "list")
    assert [a["id"] for a in pending] == [approval["id"]]

    # Resolving is refused while the approval is pending, and changes nothing.
    before = snapshot(cli, "SR-1")
    refusal = cli.refused("requests", "resolve", "SR-1", "--note", "credited", "--as", "UAGENT1")
    assert "approval is still pending" in refusal
    assert snapshot(cli, "SR-1") == before
    assert before["SR-1"]["status"] == "pending_approval"

    approved = cli.ok("approvals", "approve", approval_id, "--note", "ok, duplicate", "--as", "UAPPROVE").out
    assert approved == f"approval {approval_id} on SR-1: credit of 120.50 EUR is approved\n"

    resolved = cli.json("requests", "resolve", "SR-1", "--note", "Credited the duplicate charge.",
                        "--code", "refunded", "--as", "UAGENT1")
    assert resolved["status"] == "resolved"
    assert resolved["resolution_note"] == "Credited the duplicate charge."
    assert resolved["resolution_code"] == "refunded"
    assert_utc(resolved["resolved_at"])

    # Listings: a resolved request is no longer "open" (the default), but is listed by state and under "all".
    assert cli.json("requests", "list") == []
    listed = cli.json("requests", "list", "--status", "resolved")
    assert [r["key"] for r in listed] == ["SR-1"]
    assert REQUEST_FIELDS <= listed[0].keys()
    assert listed[0]["assignee"] == "UAGENT1"
    assert [r["key"] for r in cli.json("requests", "list", "--status", "all", "--customer", "C-VER")] == ["SR-1"]
    assert [r["key"] for r in cli.json("requests", "list", "--status", "all", "--assignee", "UAGENT1")] == ["SR-1"]

    shown = cli.json("requests", "show", "SR-1")
    assert REQUEST_FIELDS <= shown.keys()
    assert [m["direction"] for m in shown["messages"]] == ["inbound", "outbound", "note"]
    inbound, outbound, internal = shown["messages"]
    assert inbound["from"] == "jane@acme.test" and inbound["body"] == "I was charged twice for INV-100."
    assert outbound["to"] == ["jane@acme.test"] and outbound["author"] == "UAGENT1"
    assert outbound["body"] == "We are looking into it."
    assert internal["body"] == "Duplicate charge confirmed." and internal["to"] == []
    for message in shown["messages"]:
        assert_utc(message["created_at"])
    assert len(shown["approvals"]) == 1
    decided = shown["approvals"][0]
    assert (decided["status"], decided["decided_by"], decided["decision_note"]) == ("approved", "UAPPROVE",
                                                                                 "ok, duplicate")
    assert_utc(decided["decided_at"])
    assert [e["kind"] for e in shown["events"]] == [
        "request.opened", "request.claimed", "message.outbound", "message.note",
        "approval.requested", "approval.approved", "request.resolved",
    ]
    seqs = [e["seq"] for e in shown["events"]]
    assert seqs == sorted(seqs) and seqs[0] == 4  # events 1-3 are the three imports
    assert all(e["actor"].startswith("agent:") for e in shown["events"])
    assert all(re.fullmatch(r"[0-9a-f]{64}", e["hash"]) for e in shown["events"])
    assert shown["events"][1]["data"]["status"] == {"from": "new", "to": "assigned"}

    text = cli.ok("requests", "show", "SR-1").out
    for section in ("\nMessages\n", "\nApprovals\n", "\nEvents\n"):
        assert section in text
    assert "  resolved   " in text and "Credited the duplicate charge. [refunded]" in text

    closed = cli.json("requests", "close", "SR-1", "--as", "UAGENT1")
    assert closed["status"] == "closed"
    assert_utc(closed["closed_at"])
    assert [r["key"] for r in cli.json("requests", "list", "--status", "closed")] == ["SR-1"]

    verified = cli.ok("audit", "verify")
    assert verified.out.startswith("audit trail intact: 11 events checked; tip #11 ")
    report = cli.json("audit", "verify")
    assert report["ok"] is True and report["checked"] == 11 and report["tip_seq"] == 11
    assert report["first_bad_seq"] is None and report["problem"] is None
    assert report["tip_hash"] == cli.json("requests", "show", "SR-1")["events"][-1]["hash"]


def test_reassign_wait_reply_reopen_and_merge(seeded: Cli) -> None:
    """The other lifecycle commands move the request as their help says."""
    cli = seeded
    first = open_dispute(cli)["key"]
    second = cli.json("requests", "open", "--from", "ops@pending.test", "--subject", "Same thing again",
                      "--as", "UAGENT2")
    assert second["key"] == "SR-2"
    assert second["category"] == "general" and second["customer"]["ref"] == "C-PEND"

    assigned = cli.json("requests", "assign", first, "--to", "UAGENT2", "--as", "UAGENT1")
    assert (assigned["status"], assigned["assignee"], assigned["assignee_name"]) == ("assigned", "UAGENT2",
                                                                                   "Bob Agent")
    assert cli.json("requests", "wait", first, "--as", "UAGENT2")["status"] == "waiting_on_customer"
    assert cli.json("requests", "customer-replied", first, "--as", "UAGENT2")["status"] == "assigned"
    assert [r["key"] for r in cli.json("requests", "list", "--assignee", "none")] == ["SR-2"]

    cli.ok("requests", "resolve", first, "--note", "done", "--as", "UAGENT2")
    reopened = cli.json("requests", "reopen", first, "--as", "UAGENT2")
    assert (reopened["status"], reopened["reopen_count"], reopened["resolved_at"]) == ("assigned", 1, None)

    merged = cli.json("requests", "merge", "SR-2", "--into", first, "--as", "UAGENT1")
    assert (merged["status"], merged["merged_into"]) == ("closed", first)
    assert cli.json("requests", "show", first)["merged_from"] == ["SR-2"]
    assert "(merged into SR-1)" in cli.ok("requests", "show", "SR-2").out
    assert [r["key"] for r in cli.json("requests", "list")] == [first]

    third = cli.json("requests", "open", "--from", "ops@pending.test", "--subject", "Thanks!", "--as", "UAGENT2")
    dismissed = cli.json("requests", "dismiss", third["key"], "--reason", "a thank-you", "--as", "UAGENT2")
    assert (dismissed["status"], dismissed["resolved_at"]) == ("closed", None)
    assert [r["key"] for r in cli.json("requests", "list")] == [first]


def test_every_listing_takes_json(seeded: Cli) -> None:
    """requests list/show, approvals list, agents list and audit verify all print parseable JSON."""
    cli = seeded
    assert cli.json("requests", "list") == []
    assert cli.json("approvals", "list") == []
    open_dispute(cli)
    assert len(cli.json("requests", "list")) == 1
    assert cli.json("requests", "show", "sr-1")["key"] == "SR-1"  # keys are case-insensitive
    agents = {a["slack_user_id"]: a for a in cli.json("agents", "list")}
    assert set(agents) == {"UAGENT1", "UAGENT2", "UAPPROVE", "UBIGBOSS", "UUSDAPPR", "UMANAGER"}
    assert agents["UAPPROVE"]["roles"] == ["agent", "approver"]
    assert_money(agents["UAPPROVE"]["approval_limit"], 50000, "EUR")
    assert_money(agents["UBIGBOSS"]["approval_limit"], 1000000, "EUR")
    assert agents["UAGENT1"]["approval_limit"] is None
    assert cli.json("audit", "verify")["checked"] == 4


def test_text_listings_for_a_person(seeded: Cli) -> None:
    """Without --json the listings are tables with headers, or say that nothing matches."""
    cli = seeded
    assert cli.ok("requests", "list").out == "no open requests (resolved and closed ones: --status all)\n"
    assert cli.ok("requests", "list", "--status", "closed").out == "no requests match\n"
    assert cli.ok("approvals", "list").out == "no pending approvals (decided ones: --status all)\n"
    open_dispute(cli)
    lines = cli.ok("requests", "list").out.splitlines()
    assert lines[0].split() == ["KEY", "STATUS", "PRIORITY", "CATEGORY", "ASSIGNEE", "CUSTOMER", "CREATED", "SUBJECT"]
    assert lines[1].split()[:6] == ["SR-1", "new", "normal", "billing_dispute", "-", "C-VER"]
    agents = cli.ok("agents", "list").out
    assert "Carol Approver" in agents and "500.00 EUR" in agents


def test_approval_within_the_limit_exactly(seeded: Cli) -> None:
    """An approver may approve an amount equal to their limit; the request goes back to assigned."""
    cli = seeded
    open_dispute(cli, "500.00")
    cli.ok("requests", "claim", "SR-1", "--as", "UAGENT1")
    approval = cli.json("approvals", "request", "SR-1", "--kind", "write_off", "--amount", "500",
                        "--currency", "eur", "--reason", "goodwill", "--as", "UAGENT1")
    assert approval["kind"] == "write_off"
    assert_money(approval["amount"], 50000, "EUR")
    decided = cli.json("approvals", "approve", str(approval["id"]), "--as", "UAPPROVE")
    assert decided["status"] == "approved" and decided["decision_note"] is None
    assert cli.json("requests", "show", "SR-1")["status"] == "assigned"


def test_rejection_records_the_reason(seeded: Cli) -> None:
    """A rejected approval keeps its reason, and the request can then be resolved."""
    cli = seeded
    open_dispute(cli)
    cli.ok("requests", "claim", "SR-1", "--as", "UAGENT1")
    approval = cli.json("approvals", "request", "SR-1", "--kind", "refund", "--amount", "120.50",
                        "--currency", "EUR", "--reason", "asked by customer", "--as", "UAGENT1")
    text = cli.ok("approvals", "reject", str(approval["id"]), "--reason", "not a duplicate", "--as", "UBIGBOSS").out
    assert text == f"approval {approval['id']} on SR-1: refund of 120.50 EUR is rejected\n"
    listed = cli.json("approvals", "list", "--status", "rejected")
    assert [(a["id"], a["decided_by"], a["decision_note"]) for a in listed] == [
        (approval["id"], "UBIGBOSS", "not a duplicate")]
    assert cli.json("requests", "resolve", "SR-1", "--note", "explained", "--as", "UAGENT1")["status"] == "resolved"


def test_db_upgrade_on_a_current_database_says_so(cli: Cli) -> None:
    """The fixtures' database is already migrated: upgrading again changes nothing."""
    assert cli.ok("db", "upgrade").out == f"schema already current ({head_revision()})\n"


@pytest.mark.parametrize("create_file", [True, False], ids=["empty-file", "no-file"])
def test_commands_before_db_upgrade_are_refused_then_upgrade_works(
        bare_cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, create_file: bool) -> None:
    """On a fresh SQLite file every command but ``db upgrade`` says to run it first, and writes nothing."""
    cli = bare_cli
    path = tmp_path / "fresh.db"
    if create_file:
        path.write_bytes(b"")
    monkeypatch.setenv("SUPPORTDESK_DATABASE_URL", f"sqlite:///{path}")
    agents = write_csv(tmp_path, "agents.csv", AGENTS_CSV)
    for argv in (("requests", "list", "--json"), ("import", "agents", str(agents)), ("audit", "verify"),
                 ("requests", "claim", "SR-1", "--as", "UAGENT1")):
        message = cli.refused(*argv)
        assert message == "supportdesk: the database has no schema yet; run `supportdesk db upgrade` first"
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == []

    assert cli.ok("db", "upgrade").out == f"schema upgraded from empty to {head_revision()}\n"
    assert cli.ok("db", "upgrade").out == f"schema already current ({head_revision()})\n"
    assert cli.json("requests", "list") == []
    assert cli.ok("audit", "verify").out.startswith("audit trail intact: 0 events checked")


def test_no_command_prints_help_and_exits_2(bare_cli: Cli) -> None:
    """``supportdesk`` alone shows the commands."""
    result = bare_cli()
    assert result.code == 2
    assert "usage: supportdesk" in result.out
    for command in ("db", "import", "requests", "approvals", "audit"):
        assert command in result.out
