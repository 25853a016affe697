"""One plain sentence per audit event, for people reading a request's record.

The exported record (``supportdesk requests export``) shows every event of a
request in a timeline a finance reviewer reads without knowing our event
kinds or the JSON they carry. Pure: kind and data in, text out; nothing here
reads the store. An event kind this module does not know still gets a
sentence (its kind and any status change), so a new kind never breaks an
export.
"""

from __future__ import annotations

from typing import Any, Callable

from core.money import format_minor

Data = dict[str, Any]


def summarize(kind: str, data: Data) -> str:
    """``claimed by UAGENT1 (new → assigned)``: what happened, with the status change when there was one."""
    describe = _SENTENCES.get(kind)
    text = describe(data) if describe is not None else kind.replace("_", " ").replace(".", ": ", 1)
    change = status_change(data)
    return f"{text} ({change})" if change else text


def status_change(data: Data) -> str | None:
    """``new → assigned`` from an event's ``status`` field; None when the status did not move."""
    status = data.get("status")
    if not isinstance(status, dict) or status.get("from") == status.get("to"):
        return None
    return f"{status.get('from') or 'none'} → {status.get('to')}"


def money_text(amount: Any) -> str:
    """``600.00 EUR`` from the ``{"amount_minor", "currency"}`` that events record; ``-`` for none."""
    if not isinstance(amount, dict) or amount.get("amount_minor") is None or not amount.get("currency"):
        return "-"
    return f"{format_minor(int(amount['amount_minor']), str(amount['currency']))} {amount['currency']}"


def _quoted(text: Any, width: int = 120) -> str:
    value = " ".join(str(text or "").split())
    return value if len(value) <= width else value[: width - 1] + "…"


def _kind(data: Data) -> str:
    return str(data.get("kind") or "adjustment").replace("_", "-")


def _opened(data: Data) -> str:
    parts = [f"opened by {data.get('channel') or 'unknown channel'} for {data.get('requester') or 'an unknown sender'}"]
    if data.get("customer_ref"):
        parts.append(f"customer {data['customer_ref']}")
    if data.get("invoice"):
        parts.append(f"invoice {data['invoice']}")
    if data.get("disputed_amount"):
        parts.append(f"disputed {money_text(data['disputed_amount'])}")
    if data.get("follows_up"):
        parts.append(f"follows up {data['follows_up']}")
    if data.get("flags"):
        parts.append("flagged " + ", ".join(map(str, data["flags"])))
    return "; ".join(parts)


def _approval(verb: str) -> Callable[[Data], str]:
    def sentence(data: Data) -> str:
        text = f"{_kind(data)} of {money_text(data.get('amount'))} {verb} (approval {data.get('approval_id')})"
        note = data.get("reason") if verb == "requested" else data.get("note")
        return f"{text}: {_quoted(note)}" if note else text

    return sentence


def _changed(field: str) -> Callable[[Data], str]:
    def sentence(data: Data) -> str:
        return f"{field} changed from {data.get('previous') or 'none'} to {data.get(field)}"

    return sentence


def _sla(threshold: str) -> Callable[[Data], str]:
    def sentence(data: Data) -> str:
        target = str(data.get("target") or "SLA").replace("_", " ")
        return f"{target} target {threshold} (due {data.get('due_at') or '-'}, policy {data.get('policy') or '-'})"

    return sentence


_SENTENCES: dict[str, Callable[[Data], str]] = {
    "request.opened": _opened,
    "request.claimed": lambda d: f"claimed by {d.get('assignee')}",
    "request.assigned": lambda d: f"assigned to {d.get('assignee')}",
    "request.reassigned": lambda d: f"reassigned from {d.get('previous')} to {d.get('assignee')}",
    "request.waiting_on_customer": lambda d: "waiting on the customer (SLA clock paused)",
    "request.customer_replied": lambda d: f"customer replied{' from ' + str(d['from']) if d.get('from') else ''}",
    "request.resolved": lambda d: f"resolved{' [' + str(d['code']) + ']' if d.get('code') else ''}: "
                                  f"{_quoted(d.get('note'))}",
    "request.reopened": lambda d: "reopened",
    "request.closed": lambda d: "closed",
    "request.dismissed": lambda d: f"dismissed as not a request{': ' + _quoted(d['reason']) if d.get('reason') else ''}",
    "request.merged": lambda d: f"merged into {d.get('into')}",
    "request.merge_received": lambda d: f"{d.get('from')} was merged into this request",
    "request.priority_changed": _changed("priority"),
    "request.category_changed": _changed("category"),
    "request.customer_linked": lambda d: f"linked to customer {d.get('customer_ref')} (KYC {d.get('kyc_status')}"
                                         f"{', previously ' + str(d['previous']) if d.get('previous') else ''})",
    "request.invoice_linked": lambda d: f"linked to invoice {d.get('invoice')}"
                                        + (f", disputed {money_text(d['disputed_amount'])}"
                                           if d.get("disputed_amount") else ""),
    "request.reminded": lambda d: f"customer reminded (waiting since {d.get('waiting_since')})",
    "message.inbound": lambda d: f"mail from {d.get('from')} added",
    "message.automatic": lambda d: f"automatic mail from {d.get('from')} kept (changes nothing)",
    "message.outbound": lambda d: f"reply to {', '.join(map(str, d.get('to') or [])) or 'the customer'} "
                                  f"queued ({d.get('rfc_message_id')})",
    "message.note": lambda d: f"internal note added (message {d.get('message_id')})",
    "approval.requested": _approval("requested"),
    "approval.approved": _approval("approved"),
    "approval.rejected": _approval("rejected"),
    "sla.warning": _sla("warning"),
    "sla.breached": _sla("breached"),
    "outbox.retried": lambda d: f"{d.get('channel')} delivery of {d.get('topic')} retried (outbox {d.get('outbox_id')})",
}
