"""A small, fixed directory of agents, customers and invoices that tests build on."""

from __future__ import annotations

from core import services
from core.money import parse_amount
from core.store import Store
from core.views import RequestView

AGENTS_CSV = """slack_user_id,email,name,roles,approval_limit,currency
UAGENT1,alice@support.test,Alice Agent,agent,,
UAGENT2,bob@support.test,Bob Agent,agent,,
UAPPROVE,carol@support.test,Carol Approver,agent;approver,500.00,EUR
UBIGBOSS,dave@support.test,Dave Director,approver;manager,10000,EUR
UUSDAPPR,erin@support.test,Erin Approver,approver,10000,USD
UMANAGER,mallory@support.test,Mallory Manager,manager,,
"""

CUSTOMERS_CSV = """external_ref,name,emails,domains,kyc_status
C-VER,Acme Verified Ltd,billing@acme.test,acme.test,verified
C-PEND,Pending Corp,ops@pending.test,pending.test,pending
C-FAIL,Failed Inc,,failed.test,failed
"""

INVOICES_CSV = """number,customer_ref,amount,currency,issued_on,due_on,status
INV-100,C-VER,1200.00,EUR,2026-01-01,2026-01-31,open
INV-101,C-VER,80.00,USD,2026-01-02,2026-02-01,open
INV-200,C-PEND,300.00,EUR,2026-01-01,2026-01-31,open
"""

AGENT = "UAGENT1"
AGENT2 = "UAGENT2"
APPROVER = "UAPPROVE"
BIG_APPROVER = "UBIGBOSS"
USD_APPROVER = "UUSDAPPR"
MANAGER = "UMANAGER"


def seed(store: Store) -> None:
    services.import_agents(store, AGENTS_CSV)
    services.import_customers(store, CUSTOMERS_CSV)
    services.import_invoices(store, INVOICES_CSV)


def open_request(
    store: Store,
    *,
    sender: str = "jane@acme.test",
    subject: str = "Charged twice",
    invoice: str | None = None,
    disputed: str | None = None,
    currency: str = "EUR",
    actor: str = AGENT,
) -> RequestView:
    return services.open_request(
        store,
        channel="cli",
        mail=services.InboundMail(from_address=sender, subject=subject, body_text="Please help."),
        actor=actor,
        invoice_number=invoice,
        disputed=parse_amount(disputed, currency) if disputed else None,
    )


def euros(text: str):  # type: ignore[no-untyped-def]
    return parse_amount(text, "EUR")
