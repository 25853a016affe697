"""Block Kit for the triage card, the approval card, mirrored mail and the full-message modal. Pure.

Views in, plain JSON-ready dicts out: no Slack client, no store, no clock
(the caller passes ``now``). Two rules hold for everything drawn here:

- Every string that came from outside this module (a customer's subject,
  address, name or mail, an agent's reason or note, a file name) goes
  through :func:`escape` exactly once, so it can never become a mention
  (``<!channel>``, ``<@U…>``) or a link whose text lies about its target.
  The only markup in the output is markup written here: mentions of our own
  agents' ids and ``<!date>`` tokens.
- Every text is cut to its Block Kit limit by :func:`clip`, which never
  splits an escape sequence, one of our tokens or a character, so Slack never
  refuses a card (``invalid_blocks``) because a customer wrote a long mail.

Action ids are constants here so the listeners register on the same names.
Buttons carry the request key (or the approval or message id) in ``value``,
never in ``block_id``: a value is an id to look up, never an authority, and
core checks every rule again at click time.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from core.money import format_minor
from core.services.alerts import AlertView
from core.services.digests import DigestView
from templates import render
from core.views import (
    AdjustmentLine,
    ApprovalCard,
    AttachmentView,
    ChangeView,
    CustomerRef,
    InvoiceRef,
    MessageView,
    RequestCard,
)

Block = dict[str, Any]

# --- Action ids ------------------------------------------------------------------

ACTION_CLAIM = "claim"
ACTION_ASSIGN = "assign"  # a users_select: it has no value, see card_request_key()
ACTION_REPLY = "reply"
ACTION_REQUEST_APPROVAL = "request_approval"
ACTION_RESOLVE = "resolve"
ACTION_REOPEN = "reopen"
ACTION_SET_PRIORITY = "set_priority"  # a static_select; option values are choice_value(key, priority)
ACTION_MORE = "more"  # an overflow; option values are choice_value(key, MORE_…)
ACTION_APPROVE = "approve"
ACTION_REJECT = "reject"
ACTION_SHOW_MESSAGE = "show_message"
ACTION_DIGEST_LIST = "digest_list"  # a digest's drill-down; the value is one of DIGEST_LISTS

# What the overflow offers.
# The lists behind a digest's figures: the value of each drill-down button and its label.
DIGEST_LISTS = {"breached": "Breaches open", "unassigned": "Unclaimed", "waiting": "Waiting on customer",
                "open": "All open", "quarantine": "Quarantined mail"}
MORE_WAIT_ON_CUSTOMER = "wait_on_customer"
MORE_MERGE = "merge"
MORE_NOT_A_REQUEST = "not_a_request"

PRIORITIES = ("urgent", "high", "normal", "low")

# Stable block ids, so a listener can find a card's parts; they name a part, never a request.
REQUEST_ACTIONS_BLOCK = "request_actions"
APPROVAL_ACTIONS_BLOCK = "approval_actions"
MESSAGE_ACTIONS_BLOCK = "message_actions"

# --- Block Kit limits (https://docs.slack.dev/reference/block-kit/blocks) -----------

MAX_MESSAGE_BLOCKS = 50
MAX_MODAL_BLOCKS = 100
HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
MAX_FIELDS = 10
MAX_CONTEXT_ELEMENTS = 10
BUTTON_TEXT_LIMIT = 75
VALUE_LIMIT = 2000
OPTION_TEXT_LIMIT = 75
OPTION_VALUE_LIMIT = 150
MAX_OVERFLOW_OPTIONS = 5
PLACEHOLDER_LIMIT = 150
CONFIRM_TITLE_LIMIT = 100
CONFIRM_TEXT_LIMIT = 300
CONFIRM_BUTTON_LIMIT = 30
MODAL_TITLE_LIMIT = 24
# A notification shows one line; Slack would accept 40,000 characters of fallback.
FALLBACK_LIMIT = 500

# How much of each piece of outside text a card shows: the sum stays far below
# the ~12,000 characters past which Slack refuses a message as msg_blocks_too_long.
SHORT_LIMIT = 300
SUBJECT_LIMIT = 500
NOTE_LIMIT = 1000
REASON_LIMIT = 2000
FILE_NAME_LIMIT = 200
ADJUSTMENT_LINES_SHOWN = 10
ATTACHMENTS_SHOWN = 20

ELLIPSIS = "…"
CHOICE_SEPARATOR = "|"

# --- Escaping and cutting ------------------------------------------------------------

# C0 controls (tab and newline stay) and the explicit bidirectional controls
# that let a file name read "invoice‮fdp.exe" as "invoiceexe.pdf".
_INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f\u202a-\u202e\u2066-\u2069]")
_ENTITIES = ("&amp;", "&lt;", "&gt;")
_ZWJ = "\u200d"
# A run of marks longer than this is not a character but an attack on layout; it may be split.
_MAX_CLUSTER = 32
_USER_ID = re.compile(r"^[UW][A-Z0-9]{2,31}$")


def escape(text: str | None) -> str:
    """Make outside text inert for Slack: ``&`` → ``&amp;``, ``<`` → ``&lt;``, ``>`` → ``&gt;``.

    Slack parses mentions, broadcasts and links only between a raw ``<`` and
    ``>``, and does not parse again after decoding the entities, so escaped
    text shows exactly what was typed: ``<!channel>`` shows as text, and a
    customer who types the entity ``&lt;!channel&gt;`` sees that entity, not
    a broadcast. That is why escaping is not idempotent and every string is
    escaped exactly once, where it enters a block. Line ends become ``\\n``,
    and invisible control characters (including bidirectional overrides that
    reorder a file name on screen) are dropped.
    """
    if not text:
        return ""
    text = _INVISIBLE.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_len(text: str) -> int:
    """The length Slack may count: UTF-16 code units, so a character outside the BMP (most emoji) counts two.

    Counting the stricter way keeps a card of emoji inside every limit, whether
    Slack counts code points (as slack_sdk's validators do) or code units.
    """
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def clip(text: str, limit: int) -> str:
    """``text`` if it fits ``limit``, else its longest safe beginning that fits with "…" marking the cut.

    The cut never falls inside ``&amp;``/``&lt;``/``&gt;`` (half an entity
    would show as garbage), inside a ``<…>`` token written here, or inside a
    character (an emoji with its modifiers, a flag, a letter with its accents).
    """
    if limit < 1:
        raise ValueError(f"a limit must be at least 1, not {limit}")
    if slack_len(text) <= limit:
        return text
    return text[:_safe_cut(text, limit - slack_len(ELLIPSIS))].rstrip() + ELLIPSIS


def _safe_cut(text: str, budget: int) -> int:
    """The largest index at most ``budget`` units in that splits nothing."""
    return _settle(text, _index_within(text, budget))


def _settle(text: str, cut: int) -> int:
    """Move ``cut`` back until it splits no entity, token or character."""
    floor = max(0, cut - _MAX_CLUSTER)
    while True:
        moved = _between_characters(text, _outside_token(text, _outside_entity(text, cut)), floor)
        if moved == cut:
            return cut
        cut = moved


def _index_within(text: str, budget: int) -> int:
    units = 0
    for index, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > budget:
            return index
    return len(text)


def _outside_entity(text: str, cut: int) -> int:
    start = text.rfind("&", max(0, cut - 4), cut)
    if start != -1 and any(text.startswith(e, start) and start + len(e) > cut for e in _ENTITIES):
        return start
    return cut


def _outside_token(text: str, cut: int) -> int:
    # Outside text has no raw "<" after escape(), so an unclosed one is ours.
    opening = text.rfind("<", 0, cut)
    if opening != -1 and text.find(">", opening, cut) == -1:
        return opening
    return cut


def _between_characters(text: str, cut: int, floor: int) -> int:
    """Back to the start of the character ``cut`` falls in, but not below ``floor``."""
    while floor < cut < len(text) and (_continues(text[cut]) or text[cut - 1] == _ZWJ or _splits_flag(text, cut)):
        cut -= 1
    return cut


def _continues(ch: str) -> bool:
    """A code point that belongs to the character before it."""
    code = ord(ch)
    return (
        unicodedata.combining(ch) != 0
        or ch in "\u200d\ufe0e\ufe0f"
        or 0x1F3FB <= code <= 0x1F3FF  # skin tones
        or 0xE0020 <= code <= 0xE007F  # tag sequences (subdivision flags)
    )


def _regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _splits_flag(text: str, cut: int) -> bool:
    """A flag is a pair of regional indicators; cutting after an odd one splits a pair."""
    if not (_regional(text[cut - 1]) and _regional(text[cut])):
        return False
    run = 0
    while cut - run - 1 >= 0 and _regional(text[cut - run - 1]):
        run += 1
    return run % 2 == 1


# --- Values the listeners read back ------------------------------------------------


def choice_value(key: str, choice: str) -> str:
    """The value of a menu option: the request key and the choice, e.g. ``SR-12|urgent``."""
    return f"{key}{CHOICE_SEPARATOR}{choice}"


def split_choice(value: str) -> tuple[str, str]:
    """``SR-12|urgent`` → ``("SR-12", "urgent")``; ValueError for anything else."""
    key, separator, choice = (value or "").partition(CHOICE_SEPARATOR)
    if not separator or not key or not choice:
        raise ValueError(f"{value!r} is not a request key and a choice")
    return key, choice


_KEYED_BUTTONS = frozenset({ACTION_CLAIM, ACTION_REPLY, ACTION_REQUEST_APPROVAL, ACTION_RESOLVE, ACTION_REOPEN})


def card_request_key(blocks: Sequence[Block]) -> str | None:
    """The request key of a triage card, read from its own buttons and menus.

    A ``users_select`` has no ``value``, so the Assign listener finds the key
    in the message the click came from (``body["message"]["blocks"]``).
    """
    for block in blocks:
        if block.get("type") != "actions":
            continue
        for element in block.get("elements", ()):
            if element.get("action_id") in _KEYED_BUTTONS and element.get("value"):
                return str(element["value"])
            for option in element.get("options", ()):
                try:
                    return split_choice(str(option.get("value", "")))[0]
                except ValueError:
                    continue
    return None


# --- Block builders (their text arguments are already escaped) ----------------------


def _plain(text: str, limit: int) -> Block:
    return {"type": "plain_text", "text": clip(text, limit), "emoji": True}


def _mrkdwn(text: str, limit: int) -> Block:
    # verbatim: no automatic linking of bare URLs, channel names or mentions;
    # the tokens written here (<@U…>, <!date…>) are still drawn.
    return {"type": "mrkdwn", "text": clip(text, limit), "verbatim": True}


def _header(text: str) -> Block:
    return {"type": "header", "text": _plain(text, HEADER_LIMIT)}


def _section(text: str) -> Block:
    return {"type": "section", "text": _mrkdwn(text, SECTION_LIMIT)}


def _fields(texts: Sequence[str]) -> Block:
    return {"type": "section", "fields": [_mrkdwn(t, FIELD_LIMIT) for t in texts[:MAX_FIELDS]]}


def _context(*texts: str) -> Block:
    return {"type": "context", "elements": [_mrkdwn(t, FIELD_LIMIT) for t in texts[:MAX_CONTEXT_ELEMENTS]]}


def _button(text: str, action_id: str, value: str, *, style: str | None = None,
            confirm: Block | None = None) -> Block:
    """A button; a value too long is refused, never cut, because a cut id would name something else."""
    if len(value) > VALUE_LIMIT:
        raise ValueError(f"a button value is at most {VALUE_LIMIT} characters")
    button: Block = {"type": "button", "action_id": action_id, "text": _plain(text, BUTTON_TEXT_LIMIT),
                     "value": value}
    if style:
        button["style"] = style
    if confirm:
        button["confirm"] = confirm
    return button


def _option(text: str, value: str) -> Block:
    """A menu option; like a button's value, its value is refused rather than cut."""
    if len(value) > OPTION_VALUE_LIMIT:
        raise ValueError(f"an option value is at most {OPTION_VALUE_LIMIT} characters")
    return {"text": _plain(text, OPTION_TEXT_LIMIT), "value": value}


def _fallback(text: str) -> str:
    """The message's top-level ``text``: notifications and screen readers; never empty."""
    return clip(" ".join(text.split()), FALLBACK_LIMIT) or "supportdesk"


# --- Small formatters ---------------------------------------------------------------


def mention(user_id: str | None) -> str:
    """``<@U123>`` for an id shaped like Slack's; anything else escaped, so no id can smuggle markup in."""
    if user_id and _USER_ID.match(user_id):
        return f"<@{user_id}>"
    return escape(user_id) or "somebody"


def _when(moment: datetime) -> str:
    """A date token: Slack shows it in the reader's own time zone, with UTC as the fallback text."""
    utc = moment.astimezone(timezone.utc)
    return f"<!date^{int(utc.timestamp())}^{{date_short_pretty}} {{time}}|{utc:%Y-%m-%d %H:%M} UTC>"


def _day(moment: datetime) -> str:
    return f"{moment.astimezone(timezone.utc):%Y-%m-%d}"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _short(text: str | None, limit: int = SHORT_LIMIT) -> str:
    """Outside text for a one-line slot: whitespace collapsed, escaped, clipped."""
    return clip(escape(_one_line(text)), limit) if text and text.strip() else "—"


def money(minor: int, currency: str) -> str:
    """1250, "EUR" → ``12.50 EUR``: minor units rendered with the currency's own decimals."""
    return f"{format_minor(minor, currency)} {escape(currency)}"


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes and hours < 6 else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def relative(due: datetime, now: datetime) -> str:
    """"due in 2 h" or "overdue by 15 min", as seen at ``now``."""
    seconds = (due - now).total_seconds()
    if seconds >= 0:
        return f"due in {_duration(seconds)}"
    return f"overdue by {_duration(-seconds)}"


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{max(1, round(size / 1024))} KB"
    return f"{size / (1024 * 1024):.1f} MB"


# --- The triage card ---------------------------------------------------------------

OPEN_STATES = ("new", "assigned", "waiting_on_customer", "pending_approval")

_STATUS_LABELS = {
    "new": "🆕 New",
    "assigned": "👤 Assigned",
    "waiting_on_customer": "⏸️ Waiting on customer",
    "pending_approval": "⏳ Pending approval",
    "resolved": "✅ Resolved",
    "closed": "🔒 Closed",
}
_PRIORITY_LABELS = {"urgent": "🔴 Urgent", "high": "🟠 High", "normal": "⚪ Normal", "low": "🔵 Low"}
_KYC_LABELS = {"verified": "✅ verified", "pending": "⏳ pending", "failed": "⛔ failed", "unknown": "❔ unknown"}
_AUTH_LABELS = {"pass": "✅ Authenticated", "fail": "⛔ Authentication failed", "none": "⚠️ Not authenticated"}
_FLAG_LABELS = {
    "unknown_sender": "❔ Unknown sender: not in the customer master",
    "unverified_sender": "⚠️ A verified customer's address, but the mail is not authenticated",
    "invoice_not_found": "🔎 An invoice number that is not this customer's",
    "amount_not_used": "🔎 An amount that does not fit the invoice",
}
_EVENT_WORDS = {
    "request.opened": "opened it",
    "request.claimed": "claimed it",
    "request.assigned": "assigned it",
    "request.reassigned": "reassigned it",
    "request.waiting_on_customer": "set it waiting on the customer",
    "request.customer_replied": "recorded a customer reply",
    "request.resolved": "resolved it",
    "request.reopened": "reopened it",
    "request.closed": "closed it",
    "request.dismissed": "closed it as not a request",
    "request.merged": "merged it into another request",
    "request.merge_received": "merged another request into it",
    "request.priority_changed": "changed the priority",
    "request.category_changed": "changed the category",
    "request.customer_linked": "linked the customer",
    "request.invoice_linked": "linked the invoice",
    "message.inbound": "wrote",
    "message.outbound": "replied to the customer",
    "message.note": "added a note",
    "message.automatic": "sent an automatic message",
    "approval.requested": "asked for an approval",
    "approval.approved": "approved an adjustment",
    "approval.rejected": "rejected an adjustment",
    "sla.warning": "warned that an SLA target is near",
    "sla.breached": "recorded an SLA breach",
    "mail.address_failing": "noted that mail to the requester bounces",
    "request.reminded": "reminded the customer we are waiting for them",
    "outbox.retried": "sent a failed notification again",
}


def triage_card(card: RequestCard, *, now: datetime) -> tuple[str, list[Block]]:
    """The card posted to the triage channel and updated in place: (fallback text, blocks)."""
    subject = _short(card.subject, HEADER_LIMIT)
    blocks = [_header(f"{escape(card.key)} · {subject}"), _fields(_request_fields(card, now))]
    notes = _request_notes(card)
    if notes:
        blocks.append(_section("\n".join(notes)))
    actions = _request_actions(card)
    if actions:
        # The key rides in the block id too: the person picker has no value of its own, and a click on
        # an ephemeral copy of the card (``/sd show``) comes without the message to read it from.
        blocks.append({"type": "actions", "block_id": f"{REQUEST_ACTIONS_BLOCK}:{card.key}", "elements": actions})
    blocks.append(_context(_last_change_text(card.last_change),
                           f"Opened via {escape(card.channel)} · {_when(card.created_at)}"))
    state = "merged" if card.merged_into else card.status.replace("_", " ")
    return _fallback(f"{escape(card.key)} ({state}): {subject}"), blocks


def _request_fields(card: RequestCard, now: datetime) -> list[str]:
    category = escape(card.category.replace("_", " "))
    fields = [
        f"*Requester*\n{_short(card.requester)}",
        f"*Customer*\n{_customer_text(card.customer)}",
        f"*Sender*\n{_sender_text(card)}",
        f"*Category · priority*\n{category} · {_PRIORITY_LABELS.get(card.priority, escape(card.priority))}",
    ]
    invoice = _invoice_text(card.invoice, card.disputed_amount_minor, card.disputed_currency)
    if invoice:
        fields.append(f"*Invoice*\n{invoice}")
    fields += [
        f"*Status*\n{_status_text(card)}",
        f"*Assignee*\n{mention(card.assignee) if card.assignee else 'Unassigned'}",
        f"*SLA*\n{_sla_text(card, now)}",
    ]
    return fields


def _customer_text(customer: CustomerRef | None) -> str:
    if customer is None:
        return "❔ Not in the customer master"
    kyc = _KYC_LABELS.get(customer.kyc_status, escape(customer.kyc_status))
    return f"{_short(customer.name)} ({_short(customer.external_ref)})\nKYC: {kyc}"


def _sender_text(card: RequestCard) -> str:
    if card.sender_auth is None:
        lines = ["❔ Not checked" if card.channel == "email" else f"Logged by an agent ({escape(card.channel)})"]
    else:
        lines = [_AUTH_LABELS.get(card.sender_auth, f"❔ {escape(card.sender_auth)}")]
    lines += [_FLAG_LABELS.get(flag, f"⚠️ {escape(flag)}") for flag in card.sender_flags]
    return "\n".join(lines)


def _invoice_text(invoice: InvoiceRef | None, disputed_minor: int | None, disputed_currency: str | None) -> str:
    lines = []
    if invoice is not None:
        lines.append(f"{_short(invoice.number)} · {money(invoice.amount_minor, invoice.currency)}")
        lines.append(f"due {invoice.due_on.isoformat()} · {_short(invoice.status)}")
    if disputed_minor is not None and disputed_currency is not None:
        lines.append(f"Disputed: *{money(disputed_minor, disputed_currency)}*")
    return "\n".join(lines)


def _status_text(card: RequestCard) -> str:
    if card.merged_into:
        lines = [f"🔀 Merged into *{escape(card.merged_into)}*"]
    else:
        lines = [_STATUS_LABELS.get(card.status, escape(card.status))]
    if card.pending_approvals:
        lines.append(f"{card.pending_approvals} approval{'s' if card.pending_approvals > 1 else ''} pending")
    if card.reopen_count:
        lines.append(f"reopened {card.reopen_count}×")
    return "\n".join(lines)


def _sla_text(card: RequestCard, now: datetime) -> str:
    """One line per target: met, paused, due in …, overdue by …; absolute times as date tokens."""
    if card.status == "closed":
        return "🔒 Closed" + (f" · {_when(card.closed_at)}" if card.closed_at else "")
    if card.status == "resolved":
        late = card.resolved_at and card.resolution_due_at and card.resolved_at > card.resolution_due_at
        when = f" · {_when(card.resolved_at)}" if card.resolved_at else ""
        return f"Resolution: ✅ resolved{when}{' (late)' if late else ''}"
    lines = [f"First response: {_first_response(card, now)}"]
    if card.next_reply_due_at is not None:
        lines.append(f"Next reply: {_target(card.next_reply_due_at, card.sla_paused, now)}")
    lines.append(f"Resolution: {_target(card.resolution_due_at, card.sla_paused, now)}")
    return "\n".join(lines)


def _first_response(card: RequestCard, now: datetime) -> str:
    if card.first_response_at is not None:
        due = card.first_response_due_at
        return "✅ answered late" if due is not None and card.first_response_at > due else "✅ answered"
    return _target(card.first_response_due_at, card.sla_paused, now)


def _target(due: datetime | None, paused: bool, now: datetime) -> str:
    if paused:
        return "⏸️ paused while waiting on the customer"
    if due is None:
        return "—"
    icon = "🔴 " if due <= now else ""
    return f"{icon}{relative(due, now)} ({_when(due)})"


def _request_notes(card: RequestCard) -> list[str]:
    notes = []
    if card.follows_up:
        notes.append(f"↩️ Follows up *{escape(card.follows_up)}*, which was closed.")
    if card.merged_into:
        notes.append(f"🔀 Merged into *{escape(card.merged_into)}*: its mail now lands there.")
    elif card.status == "closed":
        notes.append("🔒 Closed: a customer reply opens a new request.")
    if card.resolution_note and card.status in ("resolved", "closed"):
        notes.append(f"*Resolution:* {clip(escape(card.resolution_note), NOTE_LIMIT)}")
    return notes


def _request_actions(card: RequestCard) -> list[Block]:
    """What can still be done in this state (DESIGN §4); core checks it again when clicked."""
    key, status = card.key, card.status
    elements: list[Block] = []
    if status == "new":
        elements.append(_button("Claim", ACTION_CLAIM, key, style="primary"))
    if status in OPEN_STATES:
        elements.append(_assignee_picker(card))
    if status != "closed":
        elements.append(_button("Reply to customer", ACTION_REPLY, key))
    if status == "assigned":
        elements.append(_button("Request approval", ACTION_REQUEST_APPROVAL, key))
        elements.append(_button("Resolve", ACTION_RESOLVE, key, style="primary"))
    if status == "resolved":
        elements.append(_button("Reopen", ACTION_REOPEN, key))
    if status in OPEN_STATES:
        elements.append(_priority_menu(card))
    more = _more_options(card)
    if more:
        elements.append({"type": "overflow", "action_id": ACTION_MORE, "options": more})
    return elements


def _assignee_picker(card: RequestCard) -> Block:
    picker: Block = {"type": "users_select", "action_id": ACTION_ASSIGN,
                     "placeholder": _plain("Assign…", PLACEHOLDER_LIMIT)}
    if card.assignee and _USER_ID.match(card.assignee):
        picker["initial_user"] = card.assignee
    return picker


def _priority_menu(card: RequestCard) -> Block:
    """Priority is its own menu: four choices do not fit beside the others in a five-option overflow."""
    options = [_option(_PRIORITY_LABELS[p], choice_value(card.key, p)) for p in PRIORITIES]
    menu: Block = {"type": "static_select", "action_id": ACTION_SET_PRIORITY,
                   "placeholder": _plain("Priority", PLACEHOLDER_LIMIT), "options": options}
    if card.priority in PRIORITIES:
        menu["initial_option"] = options[PRIORITIES.index(card.priority)]
    return menu


def _more_options(card: RequestCard) -> list[Block]:
    status, options = card.status, []
    if status == "assigned":
        options.append(_option("Wait on customer", choice_value(card.key, MORE_WAIT_ON_CUSTOMER)))
    if status in ("new", "assigned", "waiting_on_customer"):
        options.append(_option("Merge into another request…", choice_value(card.key, MORE_MERGE)))
    if status in ("new", "assigned", "waiting_on_customer"):  # core's dismiss
        options.append(_option("Not a request", choice_value(card.key, MORE_NOT_A_REQUEST)))
    return options[:MAX_OVERFLOW_OPTIONS]


def _actor(change: ChangeView) -> str:
    kind, _, who = change.actor.partition(":")
    if kind == "agent":
        return mention(who) if _USER_ID.match(who) else _short(change.actor_name or who)
    if kind == "customer":
        return f"the customer ({_short(who)})"
    if kind == "system":
        return f"supportdesk ({_short(who)})" if who else "supportdesk"
    return _short(change.actor)


def _last_change_text(change: ChangeView | None) -> str:
    if change is None:
        return "No change recorded yet"
    what = _EVENT_WORDS.get(change.kind) or f"did {_short(change.kind)}"
    return f"Last change: {_actor(change)} {what} · {_when(change.at)}"


# --- The approval card ---------------------------------------------------------------

_KIND_LABELS = {"credit": "Credit", "refund": "Refund", "write_off": "Write-off"}
_APPROVAL_STATUS = {"pending": "⏳ Pending", "approved": "✅ Approved", "rejected": "❌ Rejected",
                    "withdrawn": "↩️ Withdrawn"}


def approval_card(card: ApprovalCard) -> tuple[str, list[Block]]:
    """The card posted to the approvals channel: the evidence, then the buttons or the decision."""
    kind = _KIND_LABELS.get(card.kind, _short(card.kind))
    amount = money(card.amount_minor, card.currency)
    key = escape(card.request_key)
    blocks = [
        _header(f"{kind} of {amount} · {key}"),
        _section(
            f"*{key}* · {_short(card.request_subject, SUBJECT_LIMIT)}\n"
            f"*Asked by* {mention(card.requested_by)} · {_when(card.requested_at)}\n"
            f"*Why:* {clip(escape(card.reason), REASON_LIMIT)}"
        ),
        _fields([
            f"*Customer*\n{_approval_customer(card.customer)}",
            f"*Invoice*\n{_approval_invoice(card.invoice)}",
            f"*Disputed vs requested*\n{_disputed_vs_requested(card)}",
            f"*Status*\n{_APPROVAL_STATUS.get(card.status, escape(card.status))}",
        ]),
        _section(_adjustments_text(card)),
    ]
    if card.status == "pending":
        blocks.append({"type": "actions", "block_id": APPROVAL_ACTIONS_BLOCK, "elements": [
            _button("Approve", ACTION_APPROVE, str(card.id), style="primary", confirm=_approve_confirm(card)),
            _button("Reject", ACTION_REJECT, str(card.id), style="danger"),
        ]})
        blocks.append(_context("An approver decides: not the one who asked, opened or holds the request, and "
                               "within their limit. Approving needs a KYC-verified customer."))
    else:
        blocks.append(_section(_decision_text(card)))
    return _fallback(f"{kind} of {amount} on {key}: {escape(card.status)}"), blocks


def _approval_customer(customer: CustomerRef | None) -> str:
    if customer is None:
        return "⛔ No customer linked: approving will be refused"
    text = _customer_text(customer)
    if customer.kyc_status != "verified":
        text += ": approving will be refused"
    return text


def _approval_invoice(invoice: InvoiceRef | None) -> str:
    if invoice is None:
        return "No invoice linked"
    return (f"{_short(invoice.number)} · {money(invoice.amount_minor, invoice.currency)}\n"
            f"due {invoice.due_on.isoformat()} · {_short(invoice.status)}")


def _disputed_vs_requested(card: ApprovalCard) -> str:
    requested = f"Requested: *{money(card.amount_minor, card.currency)}*"
    if card.disputed_amount_minor is None or card.disputed_currency is None:
        return f"Disputed: —\n{requested}"
    lines = [f"Disputed: {money(card.disputed_amount_minor, card.disputed_currency)}", requested]
    if card.disputed_currency == card.currency and card.amount_minor > card.disputed_amount_minor:
        lines.append("⚠️ more than the disputed amount")
    if card.invoice is not None and card.invoice.currency == card.currency \
            and card.amount_minor > card.invoice.amount_minor:
        lines.append("⚠️ more than the invoice")
    return "\n".join(lines)


def _adjustments_text(card: ApprovalCard) -> str:
    days = max(0, (card.requested_at - card.adjustments_since).days)
    title = f"*This customer's adjustments in the {days} days before this one*"
    if card.customer is None:
        return f"{title}\nNo customer linked, so no history."
    if card.recent_adjustment_count == 0:
        return f"{title}\nNone."
    shown = card.recent_adjustments[:ADJUSTMENT_LINES_SHOWN]
    lines = [title] + [_adjustment_line(line) for line in shown]
    if card.recent_adjustment_count > len(shown):
        lines.append(f"…and {card.recent_adjustment_count - len(shown)} more")
    return "\n".join(lines)


def _adjustment_line(line: AdjustmentLine) -> str:
    kind = _KIND_LABELS.get(line.kind, _short(line.kind))
    status = _APPROVAL_STATUS.get(line.status, escape(line.status))
    return (f"• {_day(line.requested_at)} · {kind} {money(line.amount_minor, line.currency)} · {status} · "
            f"{escape(line.request_key)}")


def _approve_confirm(card: ApprovalCard) -> Block:
    """The dialog before money moves: what, how much, for whom."""
    kind = _KIND_LABELS.get(card.kind, card.kind)
    customer = (f"{_short(card.customer.name)} ({_short(card.customer.external_ref)})"
                if card.customer else "an unknown customer")
    return {
        "title": _plain(f"Approve this {kind.lower()}?", CONFIRM_TITLE_LIMIT),
        "text": _plain(f"{kind} of {money(card.amount_minor, card.currency)} for {customer} on "
                       f"{escape(card.request_key)}. Your name is recorded with the decision.", CONFIRM_TEXT_LIMIT),
        "confirm": _plain("Approve", CONFIRM_BUTTON_LIMIT),
        "deny": _plain("Cancel", CONFIRM_BUTTON_LIMIT),
        "style": "primary",
    }


def _decision_text(card: ApprovalCard) -> str:
    label = _APPROVAL_STATUS.get(card.status, escape(card.status))
    who = f" by {mention(card.decided_by)}" if card.decided_by else ""
    when = f" · {_when(card.decided_at)}" if card.decided_at else ""
    text = f"{label}{who}{when}"
    if card.decision_note:
        heading = "Reason" if card.status == "rejected" else "Note"
        text += f"\n*{heading}:* {clip(escape(card.decision_note), REASON_LIMIT)}"
    return text


# --- Mail in the card's thread -------------------------------------------------------


def mirrored_message(message: MessageView, *, limit: int = 2900) -> tuple[str, list[Block]]:
    """A message posted into the card's thread: who, subject, the new text cut to ``limit``, attachments.

    ``limit`` counts the escaped text (at most a section's 3,000). When the
    text is cut, or the mail had quoted history removed, a button opens the
    whole message in a modal.
    """
    body = escape(message.body_text).strip()
    shown = clip(body, min(limit, SECTION_LIMIT)) if body else "_(no text)_"
    blocks = [_context(_origin(message))]
    if message.subject and message.subject.strip():
        blocks.append(_section(f"*{_short(message.subject, SUBJECT_LIMIT)}*"))
    blocks.append(_section(shown))
    if message.attachments:
        blocks.append(_section(_attachments_text(message.attachments)))
    if (body and shown != body) or message.full_text:
        blocks.append({"type": "actions", "block_id": MESSAGE_ACTIONS_BLOCK, "elements": [
            _button("Show full message", ACTION_SHOW_MESSAGE, str(message.id))]})
    sender = _short(message.from_address) if message.direction == "inbound" else "supportdesk"
    return _fallback(f"{_DIRECTION_WORDS.get(message.direction, 'Message')} {sender}: "
                     f"{_short(message.subject, SUBJECT_LIMIT)}"), blocks


_DIRECTION_WORDS = {"inbound": "Mail from", "outbound": "Reply from", "note": "Note from"}


def _origin(message: MessageView) -> str:
    when = _when(message.created_at)
    if message.direction == "outbound":
        by = f" by {mention(message.author)}" if message.author else ""
        return f"📤 Reply{by} to {_short(', '.join(message.to_addresses))} · {when}"
    if message.direction == "note":
        return f"📝 Note by {mention(message.author)} · {when}"
    parts = [f"📨 *{_short(message.from_address)}*", when]
    if message.auth_verdict:
        parts.append(_AUTH_LABELS.get(message.auth_verdict, f"❔ {escape(message.auth_verdict)}"))
    parts += [_FLAG_LABELS.get(flag, f"⚠️ {escape(flag)}") for flag in message.flags]
    if message.is_automatic:
        parts.append("🤖 sent automatically")
    return " · ".join(parts)


def _attachments_text(attachments: Sequence[AttachmentView]) -> str:
    lines = [
        f"📎 {_short(a.filename, FILE_NAME_LIMIT)} ({_size(a.size)}{', inline' if a.is_inline else ''})"
        for a in attachments[:ATTACHMENTS_SHOWN]
    ]
    if len(attachments) > ATTACHMENTS_SHOWN:
        lines.append(f"…and {len(attachments) - ATTACHMENTS_SHOWN} more attachments")
    return "\n".join(lines)


def full_message_modal(message: MessageView) -> Block:
    """The whole message in a modal: as many 3,000-character sections as it needs, up to the 100-block limit.

    Shows the text as received (quoted history included) when the gateway
    kept it; beyond the limit the last block says how much is not shown.
    """
    text = message.full_text if message.full_text is not None else message.body_text
    head = [_section(_heading(message))]
    tail = [_section(_attachments_text(message.attachments))] if message.attachments else []
    room = MAX_MODAL_BLOCKS - len(head) - len(tail)
    escaped = escape(text).strip()
    chunks, cut_short = _chunks(escaped, SECTION_LIMIT, room)
    if cut_short:
        chunks = chunks[: room - 1]  # one block for the note
        hidden = slack_len(escaped) - sum(slack_len(c) for c in chunks)
        tail.insert(0, _context(f"✂️ About {hidden:,} more characters are not shown: Slack shows at most "
                                f"{MAX_MODAL_BLOCKS} blocks. `supportdesk requests show` prints the whole message."))
    body = [_section(c) for c in chunks] or [_section("_(no text)_")]
    title = {"outbound": "Reply", "note": "Internal note"}.get(message.direction, "Customer message")
    return {
        "type": "modal",
        "title": _plain(title, MODAL_TITLE_LIMIT),
        "close": _plain("Close", MODAL_TITLE_LIMIT),
        "blocks": head + body + tail,
    }


def _heading(message: MessageView) -> str:
    lines = []
    if message.from_address:
        lines.append(f"*From:* {_short(message.from_address)}")
    if message.to_addresses:
        lines.append(f"*To:* {_short(', '.join(message.to_addresses))}")
    if message.subject and message.subject.strip():
        lines.append(f"*Subject:* {_short(message.subject, SUBJECT_LIMIT)}")
    lines.append(f"*Date:* {_when(message.created_at)}")
    return "\n".join(lines)


def _chunks(text: str, size: int, most: int) -> tuple[list[str], bool]:
    """Up to ``most`` pieces of ``text``, each at most ``size``, cut at a line end or space where one is near.

    Returns the pieces and whether text was left over. Pieces are stripped,
    because Slack refuses a section of blanks.
    """
    pieces: list[str] = []
    while text and len(pieces) < most:
        if slack_len(text) <= size:
            pieces.append(text)
            return pieces, False
        cut = _safe_cut(text, size) or _index_within(text, size)
        for separator in ("\n", " "):
            at = text.rfind(separator, cut // 2, cut)
            if at > 0:
                cut = _settle(text, at + 1) or cut
                break
        piece, text = text[:cut].strip(), text[cut:].lstrip()
        if piece:
            pieces.append(piece)
    return pieces, bool(text)


# --- SLA alerts and digests ------------------------------------------------------------

_TARGET_LABELS = {"first_response": "First response", "next_reply": "Next reply", "resolution": "Resolution"}


def sla_alert(view: AlertView) -> tuple[str, list[Block]]:
    """One SLA alert, drawn from its view as it stands now (met, paused, reassigned): (fallback text, blocks)."""
    text = render(
        "slack/sla_alert.md.j2",
        threshold=view.threshold, state=view.state, target_label=_TARGET_LABELS.get(view.target, view.target),
        request_key=escape(view.request_key), due=_when(view.due_at),
        met=_when(view.met_at) if view.met_at else None, subject=_short(view.subject, 200),
        priority=escape(view.priority), request_status=escape(view.request_status.replace("_", " ")),
        assignee=mention(view.assignee) if view.assignee else None,
        managers=[mention(m) for m in view.managers],
    ).strip()
    return _fallback(text), [_section(text)]


def digest_message(digest: DigestView) -> tuple[str, list[Block]]:
    """A digest as posted: its rendered text in sections (cut at blank lines) and the drill-down buttons."""
    sections: list[str] = []
    for part in digest.slack_text.strip().split("\n\n"):
        if sections and slack_len(sections[-1]) + slack_len(part) + 2 <= SECTION_LIMIT:
            sections[-1] += "\n\n" + part
        else:
            sections.append(part)
    blocks = [_section(part) for part in sections[:MAX_MESSAGE_BLOCKS - 1]]
    blocks.append({"type": "actions", "block_id": f"digest_{digest.id}", "elements": [
        _button(label, ACTION_DIGEST_LIST, value) for value, label in DIGEST_LISTS.items()]})
    return _fallback(digest.email_subject), blocks
