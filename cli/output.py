"""How the command line shows views: stable JSON, or text meant for a person."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence, TextIO

from core.money import format_minor
from core.views import ApprovalView, MessageView, RequestDetail, RequestView


def emit_json(value: Any, out: TextIO | None = None) -> None:
    out = sys.stdout if out is None else out
    json.dump(value, out, indent=2, ensure_ascii=False, sort_keys=False)
    out.write("\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], out: TextIO | None = None, indent: str = "") -> None:
    out = sys.stdout if out is None else out
    body = [list(map(str, r)) for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]
    for cells in [list(headers)] + body:
        out.write(indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() + "\n")


def safe_url(url: str) -> str:
    """A database URL fit for a log or a screen: the password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def when(view_time: Any) -> str:
    return view_time.strftime("%Y-%m-%d %H:%M") if view_time else "-"


def money(minor: int | None, currency: str | None) -> str:
    if minor is None or currency is None:
        return "-"
    return f"{format_minor(minor, currency)} {currency}"


def request_rows(requests: list[RequestView], out: TextIO | None = None, *, empty: str = "no requests match") -> None:
    out = sys.stdout if out is None else out
    if not requests:
        out.write(empty + "\n")
        return
    table(
        ("KEY", "STATUS", "PRIORITY", "CATEGORY", "ASSIGNEE", "CUSTOMER", "CREATED", "SUBJECT"),
        (
            (
                r.key, r.status, r.priority, r.category, r.assignee or "-",
                r.customer.external_ref if r.customer else "(unknown)", when(r.created_at), short(r.subject),
            )
            for r in requests
        ),
        out,
    )


def request_summary(r: RequestView, out: TextIO | None = None) -> None:
    out = sys.stdout if out is None else out
    customer = f"{r.customer.external_ref} {r.customer.name} (KYC {r.customer.kyc_status})" if r.customer else "unknown"
    lines = [
        f"{r.key}  {r.subject}",
        f"  status     {r.status}" + (f" (merged into {r.merged_into})" if r.merged_into else ""),
        f"  priority   {r.priority}    category {r.category}    channel {r.channel}",
        f"  requester  {r.requester}",
        f"  customer   {customer}",
        f"  assignee   {f'{r.assignee_name} ({r.assignee})' if r.assignee else '-'}",
    ]
    if r.invoice:
        lines.append(
            f"  invoice    {r.invoice.number} {money(r.invoice.amount_minor, r.invoice.currency)} "
            f"due {r.invoice.due_on} ({r.invoice.status})"
        )
    if r.disputed_amount_minor is not None:
        lines.append(f"  disputed   {money(r.disputed_amount_minor, r.disputed_currency)}")
    if r.follows_up:
        lines.append(f"  follows up {r.follows_up}")
    lines.append(f"  created    {when(r.created_at)}    updated {when(r.updated_at)}")
    if r.resolved_at:
        lines.append(f"  resolved   {when(r.resolved_at)}: {r.resolution_note}" + (
            f" [{r.resolution_code}]" if r.resolution_code else ""))
    out.write("\n".join(lines) + "\n")


def request_detail(d: RequestDetail, out: TextIO | None = None) -> None:
    out = sys.stdout if out is None else out
    request_summary(d.request, out)
    if d.merged_from:
        out.write(f"  merged in  {', '.join(d.merged_from)}\n")
    out.write("\nMessages\n")
    for m in d.messages:
        out.write(f"  [{when(m.created_at)}] {_message_heading(m)}\n")
        for line in m.body_text.strip("\n").splitlines()[:20]:
            out.write(f"      {line}\n")
        for a in m.attachments:
            out.write(f"      attachment: {a.filename} ({a.content_type}, {a.size} bytes, sha256 {a.sha256[:12]}…)\n")
    if d.approvals:
        out.write("\nApprovals\n")
        approval_rows(list(d.approvals), out, indent="  ")
    out.write("\nEvents\n")
    for e in d.events:
        out.write(f"  #{e.seq} {when(e.created_at)} {e.kind} by {e.actor}\n")


def _message_heading(m: MessageView) -> str:
    if m.direction == "inbound":
        entered = f" (entered by {m.author})" if m.author else ""
        return f"from {m.from_address}{entered}"
    if m.direction == "outbound":
        return f"reply by {m.author or 'supportdesk'} to {', '.join(m.to_addresses)}"
    return f"internal note by {m.author}"


def approval_rows(approvals: list[ApprovalView], out: TextIO | None = None, indent: str = "",
                  *, empty: str = "no approvals match") -> None:
    out = sys.stdout if out is None else out
    if not approvals:
        out.write(f"{indent}{empty}\n")
        return
    rows = [
        (
            str(a.id), a.request_key, a.kind, money(a.amount_minor, a.currency), a.status, a.requested_by,
            a.decided_by or "-", short(a.decision_note or a.reason, 40),
        )
        for a in approvals
    ]
    headers = ("ID", "REQUEST", "KIND", "AMOUNT", "STATUS", "ASKED BY", "DECIDED BY", "REASON / NOTE")
    table(headers, rows, out, indent)
