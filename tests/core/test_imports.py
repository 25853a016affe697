"""CSV imports of customers, invoices and agents: upserts that are idempotent and all-or-nothing.

Run on the real store (SQLite and PostgreSQL) through ``core.services``, and once through the command line.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import select

from core import services
from core.errors import InvalidInput
from core.models import Agent, Base, Customer, Event, Invoice
from core.store import Store
from core.views import ImportResult
from tests.factories import AGENTS_CSV, CUSTOMERS_CSV, INVOICES_CSV

Importer = Callable[..., ImportResult]


# --- reading the store back -------------------------------------------------


def all_rows(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, ordered by primary key: two equal dumps mean nothing changed."""
    with store.read() as session:
        return {
            table.name: [tuple(row) for row in session.execute(select(table).order_by(*table.primary_key.columns))]
            for table in Base.metadata.sorted_tables
        }


def customers(store: Store) -> dict[str, tuple[str, str, list[str]]]:
    """ref -> (name, kyc_status, sorted "kind:value" addresses)."""
    with store.read() as session:
        return {
            c.external_ref: (c.name, c.kyc_status, sorted(f"{a.kind}:{a.value}" for a in c.addresses))
            for c in session.execute(select(Customer)).scalars()
        }


def invoices(store: Store) -> dict[str, tuple[str, int, str, date, date, str]]:
    """number -> (customer_ref, amount_minor, currency, issued_on, due_on, status)."""
    with store.read() as session:
        rows = session.execute(
            select(Invoice.number, Customer.external_ref, Invoice.amount_minor, Invoice.currency, Invoice.issued_on,
                   Invoice.due_on, Invoice.status).join(Customer, Customer.id == Invoice.customer_id)
        ).all()
        return {number: tuple(rest) for number, *rest in rows}  # type: ignore[misc]


def agents(store: Store) -> dict[str, tuple[str, str, str, int, str | None, bool]]:
    """slack_user_id -> (email, name, roles, approval_limit_minor, approval_currency, active)."""
    with store.read() as session:
        return {
            a.slack_user_id: (a.email, a.name, a.roles, a.approval_limit_minor, a.approval_currency, a.active)
            for a in session.execute(select(Agent)).scalars()
        }


def events(store: Store) -> list[tuple[str, str, dict[str, Any]]]:
    """(kind, actor, data) of every audit event, oldest first."""
    with store.read() as session:
        rows = session.execute(select(Event.kind, Event.actor, Event.data).order_by(Event.seq))
        return [(kind, actor, json.loads(data)) for kind, actor, data in rows]


def refusal(call: Callable[[], object]) -> list[str]:
    """The lines of the InvalidInput that ``call`` raises."""
    with pytest.raises(InvalidInput) as raised:
        call()
    return str(raised.value).splitlines()


# --- good files ---------------------------------------------------------------


def test_customers_are_created_with_their_addresses(store: Store) -> None:
    """Three rows, three customers; e-mails and domains become addresses; one audit event describes it."""
    result = services.import_customers(store, CUSTOMERS_CSV)
    assert result == ImportResult("customers", rows=3, created=3, updated=0, unchanged=0)
    assert customers(store) == {
        "C-VER": ("Acme Verified Ltd", "verified", ["domain:acme.test", "email:billing@acme.test"]),
        "C-PEND": ("Pending Corp", "pending", ["domain:pending.test", "email:ops@pending.test"]),
        "C-FAIL": ("Failed Inc", "failed", ["domain:failed.test"]),
    }
    [(kind, actor, data)] = events(store)
    assert (kind, actor) == ("directory.customers_imported", "admin:cli")
    assert data["created"] == 3 and data["updated"] == 0 and data["rows"] == 3
    assert data["file_sha256"] == hashlib.sha256(CUSTOMERS_CSV.encode("utf-8")).hexdigest()
    assert {c["ref"]: (c["from"], c["to"]) for c in data["kyc_changes"]} == {
        "C-VER": (None, "verified"), "C-PEND": (None, "pending"), "C-FAIL": (None, "failed")}


def test_customer_values_are_normalised(store: Store) -> None:
    """Addresses are lower-cased and trimmed, lists may have blanks, an empty KYC status is 'unknown'."""
    content = ("external_ref,name,emails,domains,kyc_status\n"
               " C-1 , Mixed Case Ltd ,Billing@Mixed.TEST; ;Ops@Mixed.test , Mixed.TEST ,\n"
               "C-2,Second,,,VERIFIED\n")
    assert services.import_customers(store, content).created == 2
    assert customers(store) == {
        "C-1": ("Mixed Case Ltd", "unknown", ["domain:mixed.test", "email:billing@mixed.test", "email:ops@mixed.test"]),
        "C-2": ("Second", "verified", []),
    }


def test_invoice_amounts_are_stored_in_minor_units(store: Store) -> None:
    """EUR has two decimals, JPY none, KWD three; the status is lower-cased; dates are dates."""
    services.import_customers(store, CUSTOMERS_CSV)
    content = ("number,customer_ref,amount,currency,issued_on,due_on,status\n"
               "INV-EUR,C-VER,1200.00,EUR,2026-01-01,2026-01-31,open\n"
               "INV-EUR2,C-VER,80.5,eur,2026-01-02,2026-01-02,OPEN\n"
               "INV-JPY,C-PEND,1200,JPY,2026-01-01,2026-01-31,paid\n"
               "INV-JPY2,C-PEND,15000.0,JPY,2026-01-01,2026-01-31,partially_paid\n"
               "INV-KWD,C-FAIL,1.234,KWD,2026-01-01,2026-01-31,overdue\n")
    assert services.import_invoices(store, content) == ImportResult("invoices", 5, 5, 0, 0)
    assert invoices(store) == {
        "INV-EUR": ("C-VER", 120000, "EUR", date(2026, 1, 1), date(2026, 1, 31), "open"),
        "INV-EUR2": ("C-VER", 8050, "EUR", date(2026, 1, 2), date(2026, 1, 2), "open"),
        "INV-JPY": ("C-PEND", 1200, "JPY", date(2026, 1, 1), date(2026, 1, 31), "paid"),
        "INV-JPY2": ("C-PEND", 15000, "JPY", date(2026, 1, 1), date(2026, 1, 31), "partially_paid"),
        "INV-KWD": ("C-FAIL", 1234, "KWD", date(2026, 1, 1), date(2026, 1, 31), "overdue"),
    }
    [(kind, _, data)] = [e for e in events(store) if e[0] == "directory.invoices_imported"]
    assert data["created"] == 5


def test_agents_are_created_with_roles_and_limits(store: Store) -> None:
    """Roles are stored sorted, limits in minor units with their currency; agents without a limit have 0 and none."""
    assert services.import_agents(store, AGENTS_CSV) == ImportResult("agents", 6, 6, 0, 0)
    stored = agents(store)
    assert stored["UAGENT1"] == ("alice@support.test", "Alice Agent", "agent", 0, None, True)
    assert stored["UAPPROVE"] == ("carol@support.test", "Carol Approver", "agent approver", 50000, "EUR", True)
    assert stored["UBIGBOSS"] == ("dave@support.test", "Dave Director", "approver manager", 1000000, "EUR", True)
    assert stored["UUSDAPPR"][3:5] == (1000000, "USD")
    [(kind, _, data)] = events(store)
    assert kind == "directory.agents_imported"
    changes = {c["slack_user_id"]: c for c in data["changes"]}
    assert changes["UAPPROVE"]["approval_limit"] == {"amount_minor": 50000, "currency": "EUR"}
    assert changes["UBIGBOSS"]["roles"] == ["approver", "manager"]


# --- idempotence and updates ---------------------------------------------------

KINDS: dict[str, tuple[Importer, str]] = {
    "customers": (services.import_customers, CUSTOMERS_CSV),
    "invoices": (services.import_invoices, INVOICES_CSV),
    "agents": (services.import_agents, AGENTS_CSV),
}


def load_prerequisites(store: Store, kind: str) -> None:
    """Invoices need their customers first."""
    if kind == "invoices":
        services.import_customers(store, CUSTOMERS_CSV)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_importing_the_same_file_again_changes_nothing(store: Store, kind: str) -> None:
    """The second run counts every row unchanged, writes no audit event and changes no row."""
    importer, content = KINDS[kind]
    load_prerequisites(store, kind)
    first = importer(store, content)
    assert first.created == first.rows > 0
    before = all_rows(store)
    again = importer(store, content)
    assert again == ImportResult(kind, first.rows, created=0, updated=0, unchanged=first.rows)
    assert all_rows(store) == before


def test_an_updated_customer_file_updates_and_records_kyc_changes(store: Store) -> None:
    """Changed rows are updated (name, KYC, addresses), unchanged ones counted, new ones created."""
    services.import_customers(store, CUSTOMERS_CSV)
    updated = ("external_ref,name,emails,domains,kyc_status\n"
               "C-VER,Acme Verified Ltd,billing@acme.test;ap@acme.test,acme.test,verified\n"
               "C-PEND,Pending Corporation,ops@pending.test,pending.test,verified\n"
               "C-FAIL,Failed Inc,,failed.test,failed\n"
               "C-NEW,New Co,,new.test,unknown\n")
    assert services.import_customers(store, updated) == ImportResult("customers", 4, 1, 2, 1)
    stored = customers(store)
    assert stored["C-VER"][2] == ["domain:acme.test", "email:ap@acme.test", "email:billing@acme.test"]
    assert stored["C-PEND"][:2] == ("Pending Corporation", "verified")
    assert stored["C-NEW"] == ("New Co", "unknown", ["domain:new.test"])
    kind, _, data = events(store)[-1]
    assert kind == "directory.customers_imported"
    assert (data["created"], data["updated"], data["unchanged"]) == (1, 2, 1)
    assert data["kyc_changes"] == [{"ref": "C-PEND", "from": "pending", "to": "verified"},
                                   {"ref": "C-NEW", "from": None, "to": "unknown"}]


def test_an_updated_invoice_file_updates_and_records(store: Store) -> None:
    """A new amount or status is an update; an identical row is unchanged; a new number is created."""
    services.import_customers(store, CUSTOMERS_CSV)
    services.import_invoices(store, INVOICES_CSV)
    updated = ("number,customer_ref,amount,currency,issued_on,due_on,status\n"
               "INV-100,C-VER,1100.00,EUR,2026-01-01,2026-01-31,open\n"
               "INV-101,C-VER,80.00,USD,2026-01-02,2026-02-01,paid\n"
               "INV-200,C-PEND,300.00,EUR,2026-01-01,2026-01-31,open\n"
               "INV-300,C-FAIL,5,EUR,2026-01-01,2026-01-31,open\n")
    assert services.import_invoices(store, updated) == ImportResult("invoices", 4, 1, 2, 1)
    stored = invoices(store)
    assert stored["INV-100"][1] == 110000
    assert stored["INV-101"][5] == "paid"
    assert stored["INV-300"] == ("C-FAIL", 500, "EUR", date(2026, 1, 1), date(2026, 1, 31), "open")
    kind, actor, data = events(store)[-1]
    assert (kind, actor) == ("directory.invoices_imported", "admin:cli")
    assert (data["created"], data["updated"], data["unchanged"]) == (1, 2, 1)
    assert data["file_sha256"] == hashlib.sha256(updated.encode("utf-8")).hexdigest()


def test_an_updated_agent_file_updates_and_records(store: Store) -> None:
    """New roles and limits are updates, and the event lists exactly the agents that changed."""
    services.import_agents(store, AGENTS_CSV)
    updated = AGENTS_CSV.replace("UAGENT1,alice@support.test,Alice Agent,agent,,",
                                 "UAGENT1,alice@support.test,Alice Agent,agent;approver,250.5,EUR")
    assert updated != AGENTS_CSV
    assert services.import_agents(store, updated) == ImportResult("agents", 6, 0, 1, 5)
    assert agents(store)["UAGENT1"] == ("alice@support.test", "Alice Agent", "agent approver", 25050, "EUR", True)
    kind, _, data = events(store)[-1]
    assert kind == "directory.agents_imported"
    assert data["changes"] == [{"slack_user_id": "UAGENT1", "roles": ["agent", "approver"],
                                "approval_limit": {"amount_minor": 25050, "currency": "EUR"}}]


def test_agents_of_one_file_may_swap_email_addresses(store: Store) -> None:
    """Alice and Bob exchange addresses in one import, though each address is unique in the store."""
    services.import_agents(store, AGENTS_CSV)
    swapped = (AGENTS_CSV.replace("alice@support.test", "TMP").replace("bob@support.test", "alice@support.test")
               .replace("TMP", "bob@support.test"))
    assert services.import_agents(store, swapped).updated == 2
    stored = agents(store)
    assert (stored["UAGENT1"][0], stored["UAGENT2"][0]) == ("bob@support.test", "alice@support.test")


# --- addresses moving between customers ---------------------------------------


def test_an_address_may_move_to_another_customer_of_the_same_file(store: Store) -> None:
    """billing@acme.test moves from C-VER to C-PEND, and the two customers swap domains, in one file."""
    services.import_customers(store, CUSTOMERS_CSV)
    moved = ("external_ref,name,emails,domains,kyc_status\n"
             "C-VER,Acme Verified Ltd,,pending.test,verified\n"
             "C-PEND,Pending Corp,ops@pending.test;billing@acme.test,acme.test,pending\n")
    assert services.import_customers(store, moved) == ImportResult("customers", 2, 0, 2, 0)
    stored = customers(store)
    assert stored["C-VER"][2] == ["domain:pending.test"]
    assert stored["C-PEND"][2] == ["domain:acme.test", "email:billing@acme.test", "email:ops@pending.test"]
    assert stored["C-FAIL"][2] == ["domain:failed.test"]  # not in the file: untouched


def test_an_address_may_move_to_a_customer_the_file_creates(store: Store) -> None:
    """A new customer may take over an address from an existing customer listed in the same file."""
    services.import_customers(store, CUSTOMERS_CSV)
    moved = ("external_ref,name,emails,domains,kyc_status\n"
             "C-NEW,Acme Billing GmbH,billing@acme.test,,verified\n"
             "C-VER,Acme Verified Ltd,,acme.test,verified\n")
    assert services.import_customers(store, moved) == ImportResult("customers", 2, 1, 1, 0)
    assert customers(store)["C-NEW"] == ("Acme Billing GmbH", "verified", ["email:billing@acme.test"])
    assert customers(store)["C-VER"][2] == ["domain:acme.test"]


def test_an_address_kept_by_a_customer_outside_the_file_is_refused(store: Store) -> None:
    """C-VER is not in the file and still owns billing@acme.test and acme.test: nothing is imported."""
    services.import_customers(store, CUSTOMERS_CSV)
    before = all_rows(store)
    content = ("external_ref,name,emails,domains,kyc_status\n"
               "C-OK,Fine Ltd,hello@fine.test,fine.test,verified\n"
               "C-NEW,Acme Billing GmbH,billing@acme.test,acme.test,verified\n")
    lines = refusal(lambda: services.import_customers(store, content, source="moves.csv"))
    assert lines == [
        "nothing was imported; 2 problem(s):",
        "moves.csv:3: email billing@acme.test belongs to customer C-VER, who is not in this file",
        "moves.csv:3: domain acme.test belongs to customer C-VER, who is not in this file",
    ]
    assert all_rows(store) == before


# --- bad files: every bad row reported, nothing imported ----------------------

BAD_CUSTOMERS = """external_ref,name,emails,domains,kyc_status
C-OK1,Good One,one@good.test,good.test,verified
C-KYC,Bad Kyc,kyc@bad.test,,approved
C-MAIL,Bad Mail,not-an-address,,verified
C-DOM,Bad Domain,,bad domain.test,verified
,No Reference,,,verified
C-EXTRA,Extra Field,x@extra.test,,verified,surplus
C-NAME,,,,verified
C-OK2,Good Two,two@good.test,,pending
"""

BAD_INVOICES = """number,customer_ref,amount,currency,issued_on,due_on,status
INV-OK1,C-VER,10.00,EUR,2026-01-01,2026-01-31,open
INV-DATE,C-VER,10.00,EUR,2026-02-30,2026-03-31,open
INV-DUE,C-VER,10.00,EUR,2026-02-01,2026-01-31,open
INV-CENTS,C-VER,10.001,EUR,2026-01-01,2026-01-31,open
INV-YEN,C-VER,100.5,JPY,2026-01-01,2026-01-31,open
INV-CUR,C-VER,10.00,EURO,2026-01-01,2026-01-31,open
INV-COMMA,C-VER,"1,000.00",EUR,2026-01-01,2026-01-31,open
INV-NEG,C-VER,-5.00,EUR,2026-01-01,2026-01-31,open
INV-STATUS,C-VER,10.00,EUR,2026-01-01,2026-01-31,open!
INV-NODATE,C-VER,10.00,EUR,,2026-01-31,open
INV-OK2,C-PEND,20.00,EUR,2026-01-01,2026-01-31,paid
"""

BAD_AGENTS = """slack_user_id,email,name,roles,approval_limit,currency
UOK1,ok1@support.test,Ok One,agent,,
UNOLIMIT,nolimit@support.test,No Limit,agent;approver,,
UROLE,role@support.test,Bad Role,agent;superuser,,
ulower,lower@support.test,Lower Case,agent,,
UMAIL,not-an-email,Bad Mail,agent,,
UCUR,cur@support.test,No Currency,approver,100,
UZERO,zero@support.test,Zero Limit,approver,0,EUR
UNOROLE,norole@support.test,No Role,,,
UOK2,ok2@support.test,Ok Two,manager,,
"""

BAD_FILES: dict[str, tuple[Importer, str, list[tuple[int, str]]]] = {
    "customers": (services.import_customers, BAD_CUSTOMERS, [
        (3, "kyc_status 'approved' is not one of verified, pending, failed, unknown"),
        (4, "e-mail 'not-an-address' is not an e-mail address"),
        (5, "domain 'bad domain.test' is not a domain name like example.com"),
        (6, "external_ref is empty"),
        (7, "more fields than the header has columns"),
        (8, "name is empty"),
    ]),
    "invoices": (services.import_invoices, BAD_INVOICES, [
        (3, "issued_on '2026-02-30' is not a date like 2026-01-31"),
        (4, "due_on 2026-01-31 is before issued_on 2026-02-01"),
        (5, "amount '10.001' has more than 2 decimal places for EUR"),
        (6, "amount '100.5' has more than 0 decimal places for JPY"),
        (7, "currency 'EURO' is not a three-letter ISO 4217 code"),
        (8, "amount '1,000.00' is not a positive decimal number like 120.50"),
        (9, "amount '-5.00' is not a positive decimal number like 120.50"),
        (10, "status 'open!' must be a word such as open, paid or overdue"),
        (11, "issued_on is empty"),
    ]),
    "agents": (services.import_agents, BAD_AGENTS, [
        (3, "an approver needs an approval_limit above zero"),
        (4, "unknown role(s) superuser; roles are admin, agent, approver, manager"),
        (5, "slack_user_id 'ulower' does not look like a Slack user id such as U012AB3CD"),
        (6, "email 'not-an-email' is not an e-mail address"),
        (7, "approval_limit needs a currency"),
        (8, "an approver needs an approval_limit above zero"),
        (9, "roles is empty"),
    ]),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_every_bad_row_is_reported_and_nothing_is_imported(store: Store, kind: str) -> None:
    """One refusal lists each bad row as FILE:LINE: reason; the good rows of the file are not stored either."""
    importer, content, expected = BAD_FILES[kind]
    services.import_customers(store, CUSTOMERS_CSV)  # invoices refer to these; harmless for the others
    before = all_rows(store)
    source = f"{kind}-2026.csv"
    lines = refusal(lambda: importer(store, content, source=source))
    assert lines == [f"nothing was imported; {len(expected)} problem(s):"] + [
        f"{source}:{line}: {reason}" for line, reason in expected]
    assert all_rows(store) == before


def test_a_bad_row_in_an_update_leaves_earlier_imports_untouched(store: Store) -> None:
    """The good changes of a file with one bad row are not applied either."""
    services.import_customers(store, CUSTOMERS_CSV)
    before = all_rows(store)
    content = ("external_ref,name,emails,domains,kyc_status\n"
               "C-VER,Renamed Ltd,billing@acme.test,acme.test,failed\n"
               "C-NEW,New Co,new@new.test,,verified\n"
               "C-PEND,Pending Corp,ops@pending.test,pending.test,maybe\n")
    assert refusal(lambda: services.import_customers(store, content))[1:] == [
        "customers.csv:4: kyc_status 'maybe' is not one of verified, pending, failed, unknown"]
    assert all_rows(store) == before


DUPLICATES: dict[str, tuple[Importer, str, list[str]]] = {
    "customer ref": (services.import_customers, (
        "external_ref,name,emails,domains,kyc_status\n"
        "C-1,One,,one.test,verified\nC-2,Two,,two.test,verified\nC-1,One Again,,uno.test,verified\n"),
        ["customers.csv:4: external_ref 'C-1' also appears on line 2"]),
    "customer e-mail": (services.import_customers, (
        "external_ref,name,emails,domains,kyc_status\n"
        "C-1,One,same@x.test,,verified\nC-2,Two,Same@X.test,,verified\n"),
        ["customers.csv:3: e-mail address 'same@x.test' also appears on line 2"]),
    "customer domain": (services.import_customers, (
        "external_ref,name,emails,domains,kyc_status\n"
        "C-1,One,,x.test,verified\nC-2,Two,,X.TEST,verified\n"),
        ["customers.csv:3: domain 'x.test' also appears on line 2"]),
    "invoice number": (services.import_invoices, (
        "number,customer_ref,amount,currency,issued_on,due_on,status\n"
        "INV-1,C-VER,1,EUR,2026-01-01,2026-01-31,open\nINV-1,C-PEND,2,EUR,2026-01-01,2026-01-31,open\n"),
        ["invoices.csv:3: invoice number 'INV-1' also appears on line 2"]),
    "agent id": (services.import_agents, (
        "slack_user_id,email,name,roles,approval_limit,currency\n"
        "U1,a@x.test,A,agent,,\nU2,b@x.test,B,agent,,\nU1,c@x.test,C,agent,,\n"),
        ["agents.csv:4: slack_user_id 'U1' also appears on line 2"]),
    "agent e-mail": (services.import_agents, (
        "slack_user_id,email,name,roles,approval_limit,currency\n"
        "U1,a@x.test,A,agent,,\nU2,A@X.test,B,agent,,\n"),
        ["agents.csv:3: e-mail address 'a@x.test' also appears on line 2"]),
}


@pytest.mark.parametrize("case", sorted(DUPLICATES))
def test_a_key_twice_in_one_file_is_refused(store: Store, case: str) -> None:
    """A duplicate key names both lines, and nothing of the file is imported."""
    importer, content, expected = DUPLICATES[case]
    services.import_customers(store, CUSTOMERS_CSV)
    before = all_rows(store)
    assert refusal(lambda: importer(store, content)) == ["nothing was imported; 1 problem(s):", *expected]
    assert all_rows(store) == before


def test_invoices_of_unknown_customers_are_refused(store: Store) -> None:
    """Every row naming a customer that is not in the master is reported; nothing is imported."""
    services.import_customers(store, CUSTOMERS_CSV)
    before = all_rows(store)
    content = ("number,customer_ref,amount,currency,issued_on,due_on,status\n"
               "INV-1,C-VER,1,EUR,2026-01-01,2026-01-31,open\n"
               "INV-2,C-NOPE,1,EUR,2026-01-01,2026-01-31,open\n"
               "INV-3,c-ver,1,EUR,2026-01-01,2026-01-31,open\n")
    assert refusal(lambda: services.import_invoices(store, content)) == [
        "nothing was imported; 2 problem(s):",
        "invoices.csv:3: no customer with reference 'C-NOPE'",
        "invoices.csv:4: no customer with reference 'c-ver'",
    ]
    assert all_rows(store) == before


def test_an_agent_email_owned_by_an_agent_outside_the_file_is_refused(store: Store) -> None:
    """A new agent cannot take the address of an existing agent the file does not mention."""
    services.import_agents(store, AGENTS_CSV)
    before = all_rows(store)
    content = "slack_user_id,email,name,roles,approval_limit,currency\nUNEW,alice@support.test,New,agent,,\n"
    assert refusal(lambda: services.import_agents(store, content)) == [
        "nothing was imported; 1 problem(s):", "agents.csv:2: alice@support.test already belongs to agent UAGENT1"]
    assert all_rows(store) == before


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_header_without_a_required_column_is_refused(store: Store, kind: str) -> None:
    """The header must name every column; the message lists the missing ones and the expected header."""
    importer, content = KINDS[kind]
    header, _, body = content.partition("\n")
    columns = header.split(",")
    last = columns[-1]
    broken = ",".join(columns[:-1]) + "\n" + "\n".join(",".join(row.split(",")[:-1]) for row in body.splitlines())
    load_prerequisites(store, kind)
    before = all_rows(store)
    assert refusal(lambda: importer(store, broken, source="x.csv")) == [
        f"x.csv:1: the header lacks column(s) {last}; expected {header}"]
    assert all_rows(store) == before


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_file_without_rows_is_refused(store: Store, kind: str) -> None:
    """A header alone (or blank lines) imports nothing and says so."""
    importer, content = KINDS[kind]
    header = content.partition("\n")[0]
    assert refusal(lambda: importer(store, header + "\n\n,,,,\n", source="empty.csv")) == [
        "empty.csv: no rows to import"]
    assert events(store) == []


def test_a_utf8_bom_and_windows_line_ends_are_accepted(store: Store) -> None:
    """Spreadsheets save CSV with a byte-order mark and CRLF; the header is still recognised."""
    content = "\ufeff" + CUSTOMERS_CSV.replace("\n", "\r\n")
    assert services.import_customers(store, content).created == 3
    assert sorted(customers(store)) == ["C-FAIL", "C-PEND", "C-VER"]


MIXED: dict[str, tuple[Importer, str, list[str]]] = {
    "customers": (services.import_customers, (
        "external_ref,name,emails,domains,kyc_status\n"
        "C-1,One,one@one.test,,approved\n"
        "C-2,Two,billing@acme.test,,verified\n"
        "C-3,Three,,three.test,verified\n"
        "C-3,Three Again,,drei.test,verified\n"), [
        "customers.csv:2: kyc_status 'approved' is not one of verified, pending, failed, unknown",
        "customers.csv:3: email billing@acme.test belongs to customer C-VER, who is not in this file",
        "customers.csv:5: external_ref 'C-3' also appears on line 4",
    ]),
    "invoices": (services.import_invoices, (
        "number,customer_ref,amount,currency,issued_on,due_on,status\n"
        "INV-1,C-VER,1,EUR,2026-13-01,2026-01-31,open\n"
        "INV-2,C-NOPE,1,EUR,2026-01-01,2026-01-31,open\n"
        "INV-3,C-VER,1,EUR,2026-01-01,2026-01-31,open\n"
        "INV-3,C-VER,1,EUR,2026-01-01,2026-01-31,open\n"), [
        "invoices.csv:2: issued_on '2026-13-01' is not a date like 2026-01-31",
        "invoices.csv:3: no customer with reference 'C-NOPE'",
        "invoices.csv:5: invoice number 'INV-3' also appears on line 4",
    ]),
    "agents": (services.import_agents, (
        "slack_user_id,email,name,roles,approval_limit,currency\n"
        "UNEW1,alice@support.test,New One,agent,,\n"
        "UNEW2,two@support.test,New Two,wizard,,\n"
        "UNEW3,three@support.test,New Three,agent,,\n"
        "UNEW3,drei@support.test,New Three,agent,,\n"), [
        "agents.csv:2: alice@support.test already belongs to agent UAGENT1",
        "agents.csv:3: unknown role(s) wizard; roles are admin, agent, approver, manager",
        "agents.csv:5: slack_user_id 'UNEW3' also appears on line 4",
    ]),
}


@pytest.mark.parametrize("kind", sorted(MIXED))
def test_bad_rows_of_every_kind_are_reported_together(store: Store, kind: str) -> None:
    """A bad value, a clash with the store and a duplicate key in one file: all reported at once, by line."""
    importer, content, expected = MIXED[kind]
    services.import_customers(store, CUSTOMERS_CSV)
    services.import_agents(store, AGENTS_CSV)
    before = all_rows(store)
    assert refusal(lambda: importer(store, content)) == [f"nothing was imported; {len(expected)} problem(s):",
                                                         *expected]
    assert all_rows(store) == before


# --- through the command line, once -------------------------------------------


def test_import_through_the_command_line(store: Store, database: Any, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A spreadsheet's CSV file (BOM, CRLF) imports; again changes nothing; a bad file is refused by line."""
    from cli.main import main

    monkeypatch.delenv("SUPPORTDESK_CONFIG", raising=False)
    monkeypatch.setenv("SUPPORTDESK_DATABASE_URL", database.url)
    monkeypatch.chdir(tmp_path)
    Path("customers.csv").write_bytes(("\ufeff" + CUSTOMERS_CSV.replace("\n", "\r\n")).encode("utf-8"))

    assert main(["import", "customers", "customers.csv"]) == 0
    assert capsys.readouterr() == ("customers: 3 rows, 3 created, 0 updated, 0 unchanged\n", "")
    assert main(["import", "customers", "customers.csv"]) == 0
    assert capsys.readouterr() == ("customers: 3 rows, 0 created, 0 updated, 3 unchanged\n", "")
    assert [e[0] for e in events(store)] == ["directory.customers_imported"]

    Path("bad.csv").write_text("external_ref,name,emails,domains,kyc_status\n"
                               "C-9,Nine,nine@nine.test,,verified\n"
                               "C-10,Ten,ten@,,verified\n"
                               "C-11,Eleven,,,great\n", encoding="utf-8")
    before = all_rows(store)
    assert main(["import", "customers", "bad.csv"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "supportdesk: nothing was imported; 2 problem(s):",
        "bad.csv:3: e-mail 'ten@' is not an e-mail address",
        "bad.csv:4: kyc_status 'great' is not one of verified, pending, failed, unknown",
    ]
    assert all_rows(store) == before
