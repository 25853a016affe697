"""The one writer: every change to the store goes through a function here.

Each is a verb and one transaction that commits the change, its audit event
and its outbox rows together, and returns a frozen view.
"""

from core.services.approvals import decide_approval, request_approval
from core.services.correspondence import InboundMail, NewAttachment, add_inbound_message, add_note, open_request, reply
from core.services.directory import import_agents, import_customers, import_invoices
from core.services.workflow import (
    assign,
    claim,
    close,
    customer_replied,
    dismiss,
    link_customer,
    link_invoice,
    merge,
    reopen,
    resolve,
    set_category,
    set_priority,
    wait_on_customer,
)

__all__ = [
    "InboundMail", "NewAttachment", "add_inbound_message", "add_note", "assign", "claim", "close",
    "customer_replied", "decide_approval", "dismiss", "import_agents", "import_customers", "import_invoices",
    "link_customer", "link_invoice", "merge", "open_request", "reopen", "reply", "request_approval",
    "resolve", "set_category", "set_priority", "wait_on_customer",
]
