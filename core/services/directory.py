"""Imports of the customer master, invoices and agents from CSV.

Each import reads and checks the whole file first; if any row is bad, it
reports every bad row with its line number and changes nothing. Otherwise it
upserts all rows in one transaction, so running the same file twice changes
nothing the second time.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from datetime import date
from typing import Any, Callable, Iterable, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.authorization import ALL_ROLES
from core.errors import InvalidInput
from core.models import Agent, Customer, CustomerAddress, Invoice
from core.money import normalize_currency, parse_amount
from core.services.common import check_email
from core.store import Store, UnitOfWork
from core.views import ImportResult

KYC_STATUSES = ("verified", "pending", "failed", "unknown")
CUSTOMER_COLUMNS = ("external_ref", "name", "emails", "domains", "kyc_status")
INVOICE_COLUMNS = ("number", "customer_ref", "amount", "currency", "issued_on", "due_on", "status")
AGENT_COLUMNS = ("slack_user_id", "email", "name", "roles", "approval_limit", "currency")
MAX_REPORTED = 20

Row = TypeVar("Row")


class RowError(Exception):
    """One bad value in one row; collected, then reported together."""


class Problems:
    """Every bad row of a file, gathered from all checks and reported at once, by line."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[tuple[int, str]] = []

    def add(self, line: int, text: str) -> None:
        self.items.append((line, text))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = [f"{self.source}:{line}: {text}" for line, text in sorted(self.items, key=lambda item: item[0])]
        shown = lines[:MAX_REPORTED]
        more = f"\n… and {len(lines) - MAX_REPORTED} more" if len(lines) > MAX_REPORTED else ""
        raise InvalidInput(f"nothing was imported; {len(lines)} problem(s):\n" + "\n".join(shown) + more)


@dataclass(frozen=True)
class CustomerRow:
    line: int
    external_ref: str
    name: str
    emails: tuple[str, ...]
    domains: tuple[str, ...]
    kyc_status: str


@dataclass(frozen=True)
class InvoiceRow:
    line: int
    number: str
    customer_ref: str
    amount_minor: int
    currency: str
    issued_on: date
    due_on: date
    status: str


@dataclass(frozen=True)
class AgentRow:
    line: int
    slack_user_id: str
    email: str
    name: str
    roles: tuple[str, ...]
    approval_limit_minor: int
    currency: str | None


def import_customers(store: Store, content: str, *, source: str = "customers.csv") -> ImportResult:
    problems = Problems(source)
    rows = _parse(content, CUSTOMER_COLUMNS, _customer_row, problems)
    _unique(rows, lambda r: r.external_ref, "external_ref", problems)
    _unique([(r, a) for r in rows for a in r.emails], lambda p: p[1], "e-mail address", problems,
            line=lambda p: p[0].line)
    _unique([(r, d) for r in rows for d in r.domains], lambda p: p[1], "domain", problems, line=lambda p: p[0].line)
    with store.unit_of_work() as uow:
        _check_address_owners(uow.session, rows, problems)
        problems.raise_if_any()
        existing = {c.external_ref: c for c in uow.session.execute(select(Customer)).scalars()}
        created = updated = 0
        kyc_changes = []
        targets: list[tuple[Customer, set[tuple[str, str]]]] = []
        for row in rows:
            customer = existing.get(row.external_ref)
            wanted = {("email", a) for a in row.emails} | {("domain", d) for d in row.domains}
            if customer is None:
                customer = Customer(external_ref=row.external_ref, name=row.name, kyc_status=row.kyc_status,
                                    created_at=uow.now, updated_at=uow.now)
                uow.session.add(customer)
                created += 1
                kyc_changes.append({"ref": row.external_ref, "from": None, "to": row.kyc_status})
            else:
                have = {(a.kind, a.value) for a in customer.addresses}
                if (customer.name, customer.kyc_status, have) == (row.name, row.kyc_status, wanted):
                    continue
                if customer.kyc_status != row.kyc_status:
                    kyc_changes.append({"ref": row.external_ref, "from": customer.kyc_status, "to": row.kyc_status})
                customer.name, customer.kyc_status, customer.updated_at = row.name, row.kyc_status, uow.now
                updated += 1
            targets.append((customer, wanted))
        # Drop every address that goes away before adding any, so an address
        # may move from one customer of the file to another.
        for customer, wanted in targets:
            for address in [a for a in customer.addresses if (a.kind, a.value) not in wanted]:
                customer.addresses.remove(address)
        uow.session.flush()
        for customer, wanted in targets:
            have = {(a.kind, a.value) for a in customer.addresses}
            for kind, value in sorted(wanted - have):
                customer.addresses.append(CustomerAddress(kind=kind, value=value))
        return _finish(uow, "customers", content, rows, created, updated, {"kyc_changes": kyc_changes})


def import_invoices(store: Store, content: str, *, source: str = "invoices.csv") -> ImportResult:
    problems = Problems(source)
    rows = _parse(content, INVOICE_COLUMNS, _invoice_row, problems)
    _unique(rows, lambda r: r.number, "invoice number", problems)
    with store.unit_of_work() as uow:
        customers = dict(uow.session.execute(select(Customer.external_ref, Customer.id)).all())
        for row in rows:
            if row.customer_ref not in customers:
                problems.add(row.line, f"no customer with reference {row.customer_ref!r}")
        problems.raise_if_any()
        existing = {i.number: i for i in uow.session.execute(select(Invoice)).scalars()}
        outcomes = [
            _upsert(uow, existing.get(row.number), Invoice, {"number": row.number}, {
                "customer_id": customers[row.customer_ref], "amount_minor": row.amount_minor,
                "currency": row.currency, "issued_on": row.issued_on, "due_on": row.due_on, "status": row.status,
            })
            for row in rows
        ]
        created, updated = outcomes.count("created"), outcomes.count("updated")
        return _finish(uow, "invoices", content, rows, created, updated, {})


def import_agents(store: Store, content: str, *, source: str = "agents.csv") -> ImportResult:
    problems = Problems(source)
    rows = _parse(content, AGENT_COLUMNS, _agent_row, problems)
    _unique(rows, lambda r: r.slack_user_id, "slack_user_id", problems)
    _unique(rows, lambda r: r.email, "e-mail address", problems)
    with store.unit_of_work() as uow:
        existing = {a.slack_user_id: a for a in uow.session.execute(select(Agent)).scalars()}
        owner_of = {a.email: a.slack_user_id for a in existing.values()}
        in_file = {r.slack_user_id for r in rows}
        for row in rows:
            owner = owner_of.get(row.email, row.slack_user_id)
            if owner != row.slack_user_id and owner not in in_file:
                problems.add(row.line, f"{row.email} already belongs to agent {owner}")
        problems.raise_if_any()
        changes = []
        # Agents of the file may swap e-mail addresses: park the changing ones first.
        for row in rows:
            agent = existing.get(row.slack_user_id)
            if agent is not None and agent.email != row.email:
                agent.email = f"{agent.slack_user_id.lower()}.moving@invalid"
        uow.session.flush()
        created = updated = 0
        for row in rows:
            outcome = _upsert(uow, existing.get(row.slack_user_id), Agent, {"slack_user_id": row.slack_user_id}, {
                "email": row.email, "name": row.name, "roles": " ".join(row.roles),
                "approval_limit_minor": row.approval_limit_minor, "approval_currency": row.currency, "active": True,
            })
            if outcome is None:
                continue
            created, updated = created + (outcome == "created"), updated + (outcome == "updated")
            changes.append({"slack_user_id": row.slack_user_id, "roles": list(row.roles),
                            "approval_limit": {"amount_minor": row.approval_limit_minor, "currency": row.currency}})
        return _finish(uow, "agents", content, rows, created, updated, {"changes": changes})


def _upsert(uow: UnitOfWork, row: Any, model: type, key: dict[str, Any], values: dict[str, Any]) -> str | None:
    """Insert or update one row; say which, or None when it already matched."""
    if row is None:
        uow.session.add(model(**key, **values, created_at=uow.now, updated_at=uow.now))
        return "created"
    if all(getattr(row, name) == value for name, value in values.items()):
        return None
    for name, value in values.items():
        setattr(row, name, value)
    row.updated_at = uow.now
    return "updated"


def _finish(uow: UnitOfWork, kind: str, content: str, rows: list, created: int, updated: int,  # type: ignore[type-arg]
            extra: dict) -> ImportResult:  # type: ignore[type-arg]
    result = ImportResult(kind, len(rows), created, updated, len(rows) - created - updated)
    if created or updated:
        uow.record(
            f"directory.{kind}_imported", actor="admin:cli", request=None,
            data={**result.to_json(), "file_sha256": hashlib.sha256(content.encode("utf-8")).hexdigest(), **extra},
        )
        uow.commit()
    return result


def _parse(content: str, columns: tuple[str, ...], make: Callable[[int, dict[str, str]], Row],
           problems: Problems) -> list[Row]:
    """The rows that parse; the others go to ``problems``. A bad header or an empty file stops at once."""
    reader = csv.DictReader(io.StringIO(content.lstrip("\ufeff"), newline=""))
    header = tuple((h or "").strip() for h in (reader.fieldnames or ()))
    missing = [c for c in columns if c not in header]
    if missing:
        hint = " (the file seems to use ';' between columns; save it with commas)" if (
            len(header) == 1 and ";" in header[0]) else ""
        raise InvalidInput(
            f"{problems.source}:1: the header lacks column(s) {', '.join(missing)}; "
            f"expected {','.join(columns)}{hint}"
        )
    rows = []
    for raw in reader:
        line = reader.line_num
        if None in raw:
            problems.add(line, "more fields than the header has columns")
            continue
        values = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        if not any(values.values()):
            continue
        try:
            rows.append(make(line, values))
        except (RowError, InvalidInput) as exc:
            problems.add(line, str(exc))
    if not rows and not problems.items:
        raise InvalidInput(f"{problems.source}: no rows to import")
    return rows


def _unique(items: Iterable, key: Callable, what: str, problems: Problems,  # type: ignore[type-arg]
            line: Callable | None = None) -> None:  # type: ignore[type-arg]
    seen: dict[str, int] = {}
    for item in items:
        value, where = key(item), (line(item) if line else item.line)
        if value in seen:
            problems.add(where, f"{what} {value!r} also appears on line {seen[value]}")
        else:
            seen[value] = where


def _required(values: dict[str, str], column: str) -> str:
    value = values.get(column, "")
    if not value:
        raise RowError(f"{column} is empty")
    return value


def _split(value: str) -> list[str]:
    """A ``;``-separated list, lower-cased, each item once, in first-seen order."""
    return list(dict.fromkeys(v.strip().lower() for v in value.split(";") if v.strip()))


def _customer_row(line: int, values: dict[str, str]) -> CustomerRow:
    kyc = (values.get("kyc_status") or "unknown").lower()
    if kyc not in KYC_STATUSES:
        raise RowError(f"kyc_status {kyc!r} is not one of {', '.join(KYC_STATUSES)}")
    emails = tuple(check_email(e, "e-mail") for e in _split(values.get("emails", "")))
    domains = tuple(_split(values.get("domains", "")))
    for domain in domains:
        if "@" in domain or "." not in domain or " " in domain:
            raise RowError(f"domain {domain!r} is not a domain name like example.com")
    return CustomerRow(line, _required(values, "external_ref"), _required(values, "name"), emails, domains, kyc)


def _date(values: dict[str, str], column: str) -> date:
    raw = _required(values, column)
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise RowError(f"{column} {raw!r} is not a date like 2026-01-31") from None


def _invoice_row(line: int, values: dict[str, str]) -> InvoiceRow:
    money = parse_amount(_required(values, "amount"), _required(values, "currency"))
    issued, due = _date(values, "issued_on"), _date(values, "due_on")
    if due < issued:
        raise RowError(f"due_on {due} is before issued_on {issued}")
    status = _required(values, "status").lower()
    if not status.replace("_", "").isalpha():
        raise RowError(f"status {status!r} must be a word such as open, paid or overdue")
    return InvoiceRow(line, _required(values, "number"), _required(values, "customer_ref"), money.minor,
                      money.currency, issued, due, status)


def _agent_row(line: int, values: dict[str, str]) -> AgentRow:
    user_id = _required(values, "slack_user_id")
    if not user_id.isalnum() or not user_id.isupper() or user_id[0] not in "UW":
        raise RowError(f"slack_user_id {user_id!r} does not look like a Slack user id such as U012AB3CD")
    roles = tuple(sorted(set(_split(_required(values, "roles")))))
    unknown = [r for r in roles if r not in ALL_ROLES]
    if unknown:
        raise RowError(f"unknown role(s) {', '.join(unknown)}; roles are {', '.join(sorted(ALL_ROLES))}")
    limit_text, currency = values.get("approval_limit", ""), values.get("currency", "")
    if limit_text:
        if not currency:
            raise RowError("approval_limit needs a currency")
        money = parse_amount(limit_text, currency)
        limit, cur = money.minor, money.currency
    else:
        limit, cur = 0, normalize_currency(currency) if currency else None
    if "approver" in roles and limit <= 0:
        raise RowError("an approver needs an approval_limit above zero")
    return AgentRow(line, user_id, check_email(_required(values, "email"), "email"), _required(values, "name"),
                    roles, limit, cur)


def _check_address_owners(session: Session, rows: list[CustomerRow], problems: Problems) -> None:
    """An address the file gives one customer while another customer, not in the file, keeps it."""
    in_file = {r.external_ref for r in rows}
    owners = {
        (kind, value): ref
        for kind, value, ref in session.execute(
            select(CustomerAddress.kind, CustomerAddress.value, Customer.external_ref)
            .join(Customer, Customer.id == CustomerAddress.customer_id)
        )
    }
    for row in rows:
        for kind, value in [("email", a) for a in row.emails] + [("domain", d) for d in row.domains]:
            owner = owners.get((kind, value))
            if owner is not None and owner != row.external_ref and owner not in in_file:
                problems.add(row.line, f"{kind} {value} belongs to customer {owner}, who is not in this file")
