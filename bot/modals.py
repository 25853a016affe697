"""The modals agents fill in from a card: pure view builders and readers of what was submitted.

Each modal carries what it acts on in ``private_metadata`` (a request key
or an approval id), never in ``callback_id``, which only routes. Reading a
submission returns either the values or the per-field errors Slack shows
under the inputs (``response_action: errors``), so a bad entry is answered
in the modal and nothing is changed.
"""

from __future__ import annotations

import json
from typing import Any

from bot.blocks import clip, escape
from core.errors import InvalidInput
from core.money import Money, parse_amount
from core.queries import ReplyPreview

RESOLVE = "resolve_modal"
REPLY = "reply_modal"
REQUEST_APPROVAL = "request_approval_modal"
MERGE = "merge_modal"
REJECT = "reject_modal"
NEW_REQUEST = "new_request_modal"

NOTE_MAX = 3000
BODY_MAX = 3000  # Slack's plain_text_input maximum
KINDS = (("credit", "Credit"), ("refund", "Refund"), ("write_off", "Write-off"))
RESOLUTION_CODES = ("fixed", "refunded", "credited", "answered", "duplicate", "wont_fix")


def new_request_modal(*, requester: str | None = None, subject: str | None = None, body: str | None = None,
                      source: dict[str, str] | None = None) -> dict[str, Any]:
    """Log a request for a customer; from a message shortcut, ``source`` names the Slack message it came from."""
    return _modal(NEW_REQUEST, "New support request", "Log it", {"source": source} if source else {}, [
        _text_input("requester", "Customer's e-mail address", max_length=320, initial=requester),
        _text_input("subject", "Subject", max_length=250, initial=subject),
        _text_input("body", "What they need", multiline=True, max_length=BODY_MAX, initial=body),
        _select("priority", "Priority", [(p, p) for p in ("normal", "high", "urgent", "low")], optional=True),
    ])


def resolve_modal(key: str) -> dict[str, Any]:
    return _modal(RESOLVE, f"Resolve {key}", "Resolve", {"key": key}, [
        _text_input("note", "Resolution note (mailed to the customer)", multiline=True, max_length=NOTE_MAX),
        _select("code", "Resolution code", [(c, c.replace("_", " ")) for c in RESOLUTION_CODES], optional=True),
    ])


def reply_modal(context: ReplyPreview) -> dict[str, Any]:
    to = ", ".join(context.to) or "(no address)"
    header = [_context(f"*To:* {escape(to)}\n*Subject:* {escape(context.subject)}")]
    if context.last_customer_text:
        header.append(_context("*Last from the customer:*\n>" + clip(escape(context.last_customer_text), 1500)
                               .replace("\n", "\n>")))
    return _modal(REPLY, f"Reply on {context.key}", "Send", {"key": context.key}, [
        *header,
        _text_input("body", "Your reply (plain text; our signature and the request tag are added)", multiline=True,
                    max_length=BODY_MAX),
        _context("The customer receives exactly this text by e-mail, from the support address, threaded under "
                 "their mail. Notes for colleagues go in the card's thread instead."),
    ])


def request_approval_modal(key: str, currency: str | None) -> dict[str, Any]:
    return _modal(REQUEST_APPROVAL, f"Approval for {key}", "Ask", {"key": key}, [
        _select("kind", "Kind", list(KINDS)),
        _text_input("amount", "Amount (e.g. 120.00)", max_length=20),
        _text_input("currency", "Currency (ISO code)", max_length=3, initial=currency or None),
        _text_input("reason", "Why (the approver reads this)", multiline=True, max_length=2000),
    ])


def merge_modal(key: str) -> dict[str, Any]:
    return _modal(MERGE, f"Merge {key}", "Merge", {"key": key}, [
        _text_input("into", f"Merge {key} into which request? (e.g. SR-12)", max_length=20),
    ])


def reject_modal(approval_id: int, summary: str) -> dict[str, Any]:
    return _modal(REJECT, "Reject the request", "Reject", {"approval": approval_id}, [
        _context(escape(summary)),
        _text_input("reason", "Reason (required; the agent sees it)", multiline=True, max_length=2000),
    ])


def metadata(view: dict[str, Any]) -> dict[str, Any]:
    """The modal's ``private_metadata``, as it was built here."""
    try:
        value = json.loads(view.get("private_metadata") or "{}")
    except json.JSONDecodeError as exc:
        raise InvalidInput("the modal's metadata is not ours") from exc
    if not isinstance(value, dict):
        raise InvalidInput("the modal's metadata is not ours")
    return value


def values(view: dict[str, Any]) -> dict[str, str | None]:
    """Every input's value by block id: text as typed, a select's chosen value, or None."""
    found: dict[str, str | None] = {}
    for block_id, actions in (view.get("state", {}).get("values") or {}).items():
        for action in actions.values():
            if action.get("type") == "static_select":
                option = action.get("selected_option") or {}
                found[block_id] = option.get("value")
            else:
                found[block_id] = action.get("value")
    return found


def approval_amount(submitted: dict[str, str | None]) -> tuple[Money | None, dict[str, str]]:
    """The amount and currency as money, or the errors to show under the inputs."""
    amount, currency = (submitted.get("amount") or "").strip(), (submitted.get("currency") or "").strip().upper()
    errors: dict[str, str] = {}
    if not currency:
        errors["currency"] = "Give the currency, e.g. EUR."
    if not amount:
        errors["amount"] = "Give the amount, e.g. 120.00."
    if errors:
        return None, errors
    try:
        return parse_amount(amount, currency), {}
    except InvalidInput as exc:
        return None, {"amount": str(exc)[:150]}


def _modal(callback_id: str, title: str, submit: str, meta: dict[str, Any],
           blocks: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": callback_id,
        "title": {"type": "plain_text", "text": title[:24]},
        "submit": {"type": "plain_text", "text": submit[:24]},
        "close": {"type": "plain_text", "text": "Cancel"},
        "private_metadata": json.dumps(meta),
        "blocks": blocks,
    }


def _text_input(block_id: str, label: str, *, multiline: bool = False, max_length: int = 3000,
                initial: str | None = None) -> dict[str, Any]:
    element: dict[str, Any] = {"type": "plain_text_input", "action_id": "value", "multiline": multiline,
                               "max_length": max_length}
    if initial:
        element["initial_value"] = initial
    return {"type": "input", "block_id": block_id, "label": {"type": "plain_text", "text": label[:2000]},
            "element": element}


def _select(block_id: str, label: str, options: list[tuple[str, str]], *, optional: bool = False) -> dict[str, Any]:
    return {
        "type": "input", "block_id": block_id, "optional": optional,
        "label": {"type": "plain_text", "text": label},
        "element": {
            "type": "static_select", "action_id": "value",
            "options": [{"text": {"type": "plain_text", "text": text}, "value": value} for value, text in options],
        },
    }


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(text, 3000)}]}
