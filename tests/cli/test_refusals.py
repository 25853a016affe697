"""Refusals on the command line: one ``supportdesk:`` line on stderr, exit 1, and the store unchanged.

Malformed command lines are argparse's business: exit 2 with a usage message, and nothing changes either.
"""

from __future__ import annotations

from typing import Any

import pytest

from core import services
from core.store import Store
from tests.cli.conftest import Cli, dump_store, snapshot
from tests.factories import AGENT, AGENT2, euros, open_request, seed

# SR-1: Acme's (C-VER, verified) dispute on INV-100 (1200.00 EUR), claimed by UAGENT1, with approval 1 for
# 600.00 EUR pending (above Carol's 500.00 EUR limit, within Dave's 10000 EUR).
# SR-2: the same customer, claimed by UAGENT1, resolved.
# SR-3: Pending Corp (C-PEND, KYC pending), new.


@pytest.fixture
def desk(cli: Cli, store: Store) -> Cli:
    """The command on a store holding the factories' directory and three requests (see the comment above).

    The setting is made with the service functions (fast); the refusals then go through the command.
    """
    seed(store)
    first = open_request(store, invoice="INV-100", disputed="600")
    services.claim(store, first.key, actor=AGENT)
    approval = services.request_approval(store, first.key, kind="credit", amount=euros("600.00"),
                                         reason="duplicate", actor=AGENT)
    assert approval.id == 1
    second = open_request(store, sender="billing@acme.test", subject="Address change")
    services.claim(store, second.key, actor=AGENT)
    services.resolve(store, second.key, note="updated", actor=AGENT)
    third = open_request(store, sender="ops@pending.test", subject="Refund?", actor=AGENT2)
    assert (first.key, second.key, third.key) == KEYS
    return cli


KEYS = ("SR-1", "SR-2", "SR-3")


def unchanged_view(cli: Cli) -> list[dict[str, Any]]:
    """What a user reads back after a refusal: every request, as JSON (the row dump covers the rest)."""
    return cli.json("requests", "list", "--status", "all")

REFUSALS: list[tuple[str, tuple[str, ...], str]] = [
    ("unknown key", ("requests", "claim", "SR-999", "--as", "UAGENT1"), "there is no request SR-999"),
    ("unknown key on show", ("requests", "show", "SR-999"), "there is no request SR-999"),
    ("malformed key", ("requests", "show", "ticket-1"), "'ticket-1' is not a request key like SR-12"),
    ("unknown agent", ("requests", "claim", "SR-3", "--as", "UNOBODY"),
     "no agent has the Slack user id 'UNOBODY'; add them with `supportdesk import agents`"),
    ("unknown agent opening", ("requests", "open", "--from", "jane@acme.test", "--subject", "x", "--as", "UNOBODY"),
     "no agent has the Slack user id 'UNOBODY'"),
    ("not an agent", ("requests", "claim", "SR-3", "--as", "UBIGBOSS"),
     "Dave Director (UBIGBOSS) cannot claim SR-3: that needs the agent role"),
    ("claim a request waiting on approval", ("requests", "claim", "SR-1", "--as", "UAGENT2"),
     "SR-1 is pending_approval, last changed by Alice Agent (UAGENT1) at "),
    ("non-approver approving", ("approvals", "approve", "1", "--as", "UAGENT2"),
     "Bob Agent (UAGENT2) cannot decide approval 1: that needs the approver role"),
    ("above the limit", ("approvals", "approve", "1", "--as", "UAPPROVE"),
     "600.00 EUR is above the approval limit of Carol Approver (UAPPROVE) (500.00 EUR)"),
    ("limit in another currency", ("approvals", "approve", "1", "--as", "UUSDAPPR"),
     "has no approval limit in EUR"),
    ("unknown approval", ("approvals", "approve", "999", "--as", "UBIGBOSS"), "there is no approval 999"),
    ("blank rejection reason", ("approvals", "reject", "1", "--reason", "  ", "--as", "UBIGBOSS"),
     "a rejection needs a reason"),
    ("resolve while pending", ("requests", "resolve", "SR-1", "--note", "done", "--as", "UAGENT1"),
     "an approval is still pending"),
    ("bad amount with a comma", ("approvals", "request", "SR-2", "--kind", "credit", "--amount", "12,50",
                                 "--currency", "EUR", "--reason", "x", "--as", "UAGENT1"),
     "amount '12,50' is not a positive decimal number like 120.50"),
    ("bad amount on open", ("requests", "open", "--from", "jane@acme.test", "--subject", "x", "--invoice", "INV-100",
                            "--amount", "12,50", "--currency", "EUR", "--as", "UAGENT1"),
     "amount '12,50' is not a positive decimal number like 120.50"),
    ("negative amount", ("requests", "open", "--from", "jane@acme.test", "--subject", "x", "--amount=-5",
                         "--currency", "EUR", "--as", "UAGENT1"), "is not a positive decimal number"),
    ("too many decimals", ("requests", "open", "--from", "jane@acme.test", "--subject", "x", "--amount", "12.345",
                           "--currency", "EUR", "--as", "UAGENT1"),
     "amount '12.345' has more than 2 decimal places for EUR"),
    ("bad currency", ("approvals", "request", "SR-2", "--kind", "credit", "--amount", "10", "--currency", "EURO",
                      "--reason", "x", "--as", "UAGENT1"),
     "currency 'EURO' is not a three-letter ISO 4217 code"),
    ("bad currency on open", ("requests", "open", "--from", "jane@acme.test", "--subject", "x", "--amount", "10",
                              "--currency", "€", "--as", "UAGENT1"), "is not a three-letter ISO 4217 code"),
    ("amount without currency", ("requests", "open", "--from", "jane@acme.test", "--subject", "x",
                                 "--amount", "10", "--as", "UAGENT1"), "--amount and --currency go together"),
    ("disputed more than the invoice", ("requests", "open", "--from", "jane@acme.test", "--subject", "x",
                                        "--invoice", "INV-100", "--amount", "1200.01", "--currency", "EUR",
                                        "--as", "UAGENT1"), "is more than invoice INV-100"),
    ("invoice of another customer", ("requests", "open", "--from", "jane@acme.test", "--subject", "x",
                                     "--invoice", "INV-200", "--as", "UAGENT1"),
     "invoice INV-200 belongs to another customer, not C-VER"),
    ("unknown invoice", ("requests", "open", "--from", "jane@acme.test", "--subject", "x", "--invoice", "INV-9",
                         "--as", "UAGENT1"), "there is no invoice 'INV-9'"),
    ("bad requester", ("requests", "open", "--from", "jane at acme", "--subject", "x", "--as", "UAGENT1"),
     "requester 'jane at acme' is not an e-mail address"),
    ("bad priority", ("requests", "open", "--from", "jane@acme.test", "--subject", "x", "--priority", "asap",
                      "--as", "UAGENT1"), "priority 'asap' is not one of urgent, high, normal, low"),
    ("adjustment in the wrong currency", ("approvals", "request", "SR-1", "--kind", "refund", "--amount", "10",
                                          "--currency", "USD", "--reason", "x", "--as", "UAGENT1"),
     "the adjustment is in USD but invoice INV-100 is in EUR"),
    ("adjustment for an unverified customer", ("approvals", "request", "SR-3", "--kind", "refund", "--amount", "10",
                                               "--currency", "EUR", "--reason", "x", "--as", "UAGENT2"),
     "customer C-PEND has KYC status pending, and adjustments need a verified customer"),
    ("approval on a resolved request", ("approvals", "request", "SR-2", "--kind", "credit", "--amount", "10",
                                        "--currency", "EUR", "--reason", "x", "--as", "UAGENT1"),
     "SR-2 is resolved"),
    ("reopen an open request", ("requests", "reopen", "SR-3", "--as", "UAGENT1"), "SR-3 is new"),
    ("close an unresolved request", ("requests", "close", "SR-3", "--as", "UAGENT1"),
     "that is allowed only when it is resolved"),
    ("empty reply", ("requests", "reply", "SR-3", "--body", " ", "--as", "UAGENT1"), "the reply must not be empty"),
    ("empty note", ("requests", "note", "SR-3", "--body", "", "--as", "UAGENT1"), "the note must not be empty"),
    ("assign to a non-agent", ("requests", "assign", "SR-3", "--to", "UMANAGER", "--as", "UAGENT1"),
     "needs the agent role"),
    ("assign to the assignee", ("requests", "assign", "SR-1", "--to", "UAGENT1", "--as", "UAGENT1"),
     "SR-1 is already assigned to Alice Agent (UAGENT1)"),
    ("merge into itself", ("requests", "merge", "SR-3", "--into", "sr-3", "--as", "UAGENT1"),
     "cannot merge SR-3 into itself"),
    ("merge a pending approval", ("requests", "merge", "SR-1", "--into", "SR-3", "--as", "UAGENT1"),
     "SR-1 is pending_approval"),
    ("list by an unknown state", ("requests", "list", "--status", "done"), "status 'done' is not one of open, all"),
    ("list by an unknown assignee", ("requests", "list", "--assignee", "UNOBODY"),
     "no agent has the Slack user id 'UNOBODY'"),
    ("list by an unknown customer", ("requests", "list", "--customer", "C-NOPE"),
     "there is no customer with reference 'C-NOPE'"),
    ("list with a zero limit", ("requests", "list", "--limit", "0"), "--limit must be at least 1"),
    ("approvals by an unknown state", ("approvals", "list", "--status", "open"),
     "approval status 'open' is not one of all, pending"),
    ("import a missing file", ("import", "agents", "no-such.csv"), "no-such.csv: no such file"),
]


@pytest.mark.parametrize(("argv", "expected"), [(a, e) for _, a, e in REFUSALS], ids=[n for n, _, _ in REFUSALS])
def test_refusal_is_one_line_and_changes_nothing(desk: Cli, store: Store, argv: tuple[str, ...],
                                                 expected: str) -> None:
    """The command exits 1 with one clear line; what the command shows, and every row of the store, are as before."""
    shown, rows = unchanged_view(desk), dump_store(store)
    message = desk.refused(*argv)
    assert expected in message
    assert unchanged_view(desk) == shown
    assert dump_store(store) == rows


USAGE_ERRORS: list[tuple[str, tuple[str, ...], str]] = [
    ("reject without a reason", ("approvals", "reject", "1", "--as", "UBIGBOSS"),
     "the following arguments are required: --reason"),
    ("approval id not a number", ("approvals", "approve", "one", "--as", "UBIGBOSS"), "invalid int value: 'one'"),
    ("unknown kind", ("approvals", "request", "SR-2", "--kind", "gift", "--amount", "1", "--currency", "EUR",
                      "--reason", "x", "--as", "UAGENT1"), "invalid choice: 'gift'"),
    ("action without --as", ("requests", "claim", "SR-3"), "the following arguments are required: --as"),
    ("open without --from", ("requests", "open", "--subject", "x", "--as", "UAGENT1"),
     "the following arguments are required: --from"),
    ("unknown priority word", ("requests", "priority", "SR-3", "asap", "--as", "UAGENT1"), "invalid choice: 'asap'"),
    ("unknown command", ("tickets", "list"), "invalid choice: 'tickets'"),
    ("unknown option", ("requests", "list", "--mine"), "unrecognized arguments: --mine"),
    ("limit not a number", ("requests", "list", "--limit", "ten"), "invalid int value: 'ten'"),
]


@pytest.mark.parametrize(("argv", "expected"), [(a, e) for _, a, e in USAGE_ERRORS],
                         ids=[n for n, _, _ in USAGE_ERRORS])
def test_malformed_command_line_exits_2(desk: Cli, store: Store, argv: tuple[str, ...], expected: str) -> None:
    """argparse refuses the command line before anything runs."""
    rows = dump_store(store)
    assert expected in desk.usage_error(*argv)
    assert dump_store(store) == rows


def test_a_decision_cannot_be_made_twice(desk: Cli) -> None:
    """Approving a decided approval names who decided it; the first decision stands."""
    decided = desk.json("approvals", "approve", "1", "--as", "UBIGBOSS")
    assert decided["status"] == "approved"
    before = snapshot(desk, *KEYS)
    message = desk.refused("approvals", "reject", "1", "--reason", "too late", "--as", "UBIGBOSS")
    assert message.startswith("supportdesk: approval 1 on SR-1 was already approved by Dave Director (UBIGBOSS) at ")
    assert snapshot(desk, *KEYS) == before


def test_an_approver_cannot_decide_what_they_asked_for_or_work_on(desk: Cli) -> None:
    """Carol (agent and approver) may not decide her own approval, nor one on a request assigned to her."""
    desk.ok("requests", "open", "--from", "jane@acme.test", "--subject", "Second", "--invoice", "INV-100",
            "--as", "UAPPROVE")
    desk.ok("requests", "claim", "SR-4", "--as", "UAPPROVE")
    mine: dict[str, Any] = desk.json("approvals", "request", "SR-4", "--kind", "credit", "--amount", "10",
                                     "--currency", "EUR", "--reason", "x", "--as", "UAPPROVE")
    before = snapshot(desk, *KEYS, "SR-4")
    assert "asked for approval 2 and cannot decide it" in desk.refused("approvals", "approve", str(mine["id"]),
                                                                        "--as", "UAPPROVE")
    assert snapshot(desk, *KEYS, "SR-4") == before

    desk.ok("approvals", "approve", "1", "--as", "UBIGBOSS")
    desk.ok("requests", "assign", "SR-1", "--to", "UAPPROVE", "--as", "UAGENT1")
    second = desk.json("approvals", "request", "SR-1", "--kind", "credit", "--amount", "5", "--currency", "EUR",
                       "--reason", "more", "--as", "UAGENT1")
    before = snapshot(desk, *KEYS, "SR-4")
    message = desk.refused("approvals", "approve", str(second["id"]), "--as", "UAPPROVE")
    assert "Carol Approver (UAPPROVE) is assigned to SR-1 and cannot decide its approval 3" in message
    assert snapshot(desk, *KEYS, "SR-4") == before


def test_closed_requests_stay_closed(desk: Cli) -> None:
    """After close, reply, reopen and resolve are refused; an internal note is still allowed."""
    desk.ok("requests", "close", "SR-2", "--as", "UAGENT1")
    before = snapshot(desk, *KEYS)
    assert "SR-2 is closed: cannot reply to the customer" in desk.refused(
        "requests", "reply", "SR-2", "--body", "hello?", "--as", "UAGENT1")
    assert "closed requests stay closed" in desk.refused("requests", "reopen", "SR-2", "--as", "UAGENT1")
    assert "SR-2 is closed" in desk.refused("requests", "resolve", "SR-2", "--note", "x", "--as", "UAGENT1")
    assert snapshot(desk, *KEYS) == before
    desk.ok("requests", "note", "SR-2", "--body", "for the record", "--as", "UAGENT1")
    assert desk.json("requests", "show", "SR-2")["messages"][-1]["direction"] == "note"


def test_claiming_a_claimed_request_names_who_has_it(desk: Cli) -> None:
    """The loser of a claim learns who claimed the request first."""
    desk.ok("requests", "open", "--from", "jane@acme.test", "--subject", "Another", "--as", "UAGENT2")
    desk.ok("requests", "claim", "SR-4", "--as", "UAGENT2")
    before = snapshot(desk, *KEYS, "SR-4")
    message = desk.refused("requests", "claim", "SR-4", "--as", "UAGENT1")
    assert message == "supportdesk: SR-4 was already claimed by Bob Agent (UAGENT2); it is assigned"
    assert snapshot(desk, *KEYS, "SR-4") == before
