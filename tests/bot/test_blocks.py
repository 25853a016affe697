"""Block Kit drawing: pure views in, JSON out, checked against Slack's limits and slack_sdk's own models.

The inputs are the frozen views core returns, built here by hand; nothing is
mocked. Three families of checks run on every card: outside text can never
become markup (mentions, broadcasts, links), every text fits its Block Kit
limit whatever a customer sends, and the buttons match what the request's
state allows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from bot import blocks as b
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

NOW = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)

INJECTIONS = [
    "<!channel>",
    "<!here>",
    "<!everyone>",
    "<@U123>",
    "<#C123|general>",
    "<!subteam^S123>",
    "<https://evil.example/login|https://bank.example>",
    "&lt;!channel&gt;",
    "``` <!here> ```",
]
# The only markup the module writes itself: mentions of our agents and date tokens.
OUR_TOKENS = re.compile(r"<@U(?:AGENT1|AGENT2|APPROVE)>|<!date\^\d+\^\{date_short_pretty\} \{time\}\|[0-9: -]+ UTC>")
EMOJI_AND_SCRIPTS = "Привет 👋🏽 مرحبا 你好 👨‍👩‍👧 🇩🇪🇫🇷 é"


def request(**changes: Any) -> RequestCard:
    """A new request from Jane at Acme about INV-100, mailed and authenticated."""
    card = RequestCard(
        key="SR-7", subject="Charged twice", status="new", channel="email", category="billing_dispute",
        priority="normal", requester="jane@acme.test",
        customer=CustomerRef("C-VER", "Acme Verified Ltd", "verified"), assignee=None, assignee_name=None,
        invoice=InvoiceRef("INV-100", "C-VER", 120000, "EUR", date(2026, 1, 1), date(2026, 1, 31), "open"),
        disputed_amount_minor=15000, disputed_currency="EUR", sender_auth="pass", sender_flags=(),
        first_response_due_at=NOW + 2 * HOUR, first_response_at=None, next_reply_due_at=None,
        resolution_due_at=NOW + 50 * HOUR, resolved_at=None, closed_at=None, sla_paused=False,
        pending_approvals=0, merged_into=None, follows_up=None, resolution_note=None, reopen_count=0,
        created_at=NOW - HOUR, updated_at=NOW - HOUR,
        last_change=ChangeView("request.opened", "customer:jane@acme.test", None, NOW - HOUR),
    )
    return replace(card, **changes)


def in_state(state: str) -> RequestCard:
    """The sample request in each state a card can show."""
    assigned = {"assignee": "UAGENT1", "assignee_name": "Alice Agent"}
    return {
        "new": request(),
        "assigned": request(status="assigned", **assigned),
        "waiting": request(status="waiting_on_customer", sla_paused=True, **assigned),
        "pending_approval": request(status="pending_approval", pending_approvals=1, **assigned),
        "resolved": request(status="resolved", resolved_at=NOW, resolution_note="Refunded.", **assigned),
        "closed": request(status="closed", resolved_at=NOW - HOUR, closed_at=NOW, resolution_note="Done.", **assigned),
        "merged": request(status="closed", merged_into="SR-3", closed_at=NOW),
    }[state]


STATES = ["new", "assigned", "waiting", "pending_approval", "resolved", "closed", "merged"]


def approval(**changes: Any) -> ApprovalCard:
    """A pending credit of 120.00 EUR on SR-7, asked for by Alice, with one earlier adjustment."""
    card = ApprovalCard(
        id=42, kind="credit", amount_minor=12000, currency="EUR", reason="Charged twice in January",
        status="pending", requested_by="UAGENT1", requested_by_name="Alice Agent", requested_at=NOW,
        decided_by=None, decided_by_name=None, decided_at=None, decision_note=None,
        request_key="SR-7", request_subject="Charged twice",
        customer=CustomerRef("C-VER", "Acme Verified Ltd", "verified"),
        invoice=InvoiceRef("INV-100", "C-VER", 120000, "EUR", date(2026, 1, 1), date(2026, 1, 31), "open"),
        disputed_amount_minor=15000, disputed_currency="EUR", adjustments_since=NOW - timedelta(days=90),
        recent_adjustments=(adjustment(1),), recent_adjustment_count=1,
    )
    return replace(card, **changes)


def adjustment(n: int) -> AdjustmentLine:
    return AdjustmentLine(n, f"SR-{n}", "refund", 1000 + n, "EUR", "approved", NOW - timedelta(days=n),
                          NOW - timedelta(days=n))


def message(**changes: Any) -> MessageView:
    """An inbound mail from Jane with one attachment."""
    view = MessageView(
        id=314, direction="inbound", message_id="<m1@acme.test>", from_address="jane@acme.test",
        to_addresses=("support@localhost",), subject="Charged twice", body_text="Please refund the second charge.",
        author=None, is_automatic=False, created_at=NOW,
        attachments=(AttachmentView(1, "statement.pdf", "application/pdf", 48_000, "0" * 64, False),),
        auth_verdict="pass",
    )
    return replace(view, **changes)


# --- walking the output ---------------------------------------------------------------


def text_objects(node: Any) -> Iterator[dict[str, Any]]:
    """Every text object (plain_text or mrkdwn) anywhere in blocks, elements, options and dialogs."""
    if isinstance(node, dict):
        if node.get("type") in ("plain_text", "mrkdwn") and isinstance(node.get("text"), str):
            yield node
        for value in node.values():
            yield from text_objects(value)
    elif isinstance(node, list):
        for item in node:
            yield from text_objects(item)


def all_text(node: Any) -> str:
    return "\n".join(t["text"] for t in text_objects(node))


def units(text: str) -> int:
    """UTF-16 code units: the stricter way Slack may count."""
    return len(text.encode("utf-16-le")) // 2


def assert_inert(text: str) -> None:
    """Apart from our own tokens, no raw < or >: nothing Slack could parse as a mention, broadcast or link."""
    rest = OUR_TOKENS.sub("", text)
    assert "<" not in rest and ">" not in rest, rest


def assert_entities_whole(text: str) -> None:
    """Every & starts a whole &amp; / &lt; / &gt; (a cut never leaves half of one)."""
    for match in re.finditer("&", text):
        assert text.startswith(("&amp;", "&lt;", "&gt;"), match.start()), text[match.start():match.start() + 6]


def elements(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for block in blocks if block["type"] == "actions" for e in block["elements"]]


def action_ids(blocks: list[dict[str, Any]]) -> list[str]:
    return [e["action_id"] for e in elements(blocks)]


def overflow_choices(blocks: list[dict[str, Any]]) -> list[str]:
    return [b.split_choice(o["value"])[1] for e in elements(blocks) if e["type"] == "overflow" for o in e["options"]]


def check_limits(blocks: list[dict[str, Any]], *, most: int = b.MAX_MESSAGE_BLOCKS) -> None:
    """Every Block Kit limit the module promises, counted in UTF-16 units."""
    assert 0 < len(blocks) <= most
    for block in blocks:
        kind = block["type"]
        if kind == "header":
            assert block["text"]["type"] == "plain_text" and units(block["text"]["text"]) <= 150
        elif kind == "section":
            if "text" in block:
                assert units(block["text"]["text"]) <= 3000
            fields = block.get("fields", [])
            assert len(fields) <= 10 and all(units(f["text"]) <= 2000 for f in fields)
        elif kind == "context":
            assert 0 < len(block["elements"]) <= 10
        elif kind == "actions":
            assert 0 < len(block["elements"]) <= 25
        assert "block_id" not in block or len(block["block_id"]) <= 255
    for element in elements(blocks):
        assert len(element["action_id"]) <= 255
        if element["type"] == "button":
            assert units(element["text"]["text"]) <= 75 and 0 < len(element["value"]) <= 2000
        options = element.get("options", [])
        assert len(options) <= (5 if element["type"] == "overflow" else 100)
        for option in options:
            assert units(option["text"]["text"]) <= 75 and len(option["value"]) <= 150
        confirm = element.get("confirm")
        if confirm:
            assert units(confirm["title"]["text"]) <= 100 and units(confirm["text"]["text"]) <= 300
            assert units(confirm["confirm"]["text"]) <= 30 and units(confirm["deny"]["text"]) <= 30
    for text in text_objects(blocks):
        assert text["text"].strip(), "Slack refuses an empty text"


def slack_sdk_accepts(blocks: list[dict[str, Any]]) -> None:
    """slack_sdk parses every block into its model, validates it, and writes back exactly what we wrote."""
    for block in blocks:
        assert Block.parse(block).to_dict() == block  # to_dict() runs validate_json() on every level


def total_characters(blocks: list[dict[str, Any]]) -> int:
    return sum(units(t["text"]) for t in text_objects(blocks))


# --- escape and clip --------------------------------------------------------------------


def test_escape_turns_the_three_control_characters_into_entities() -> None:
    assert b.escape("<!channel> & <@U1> *bold*") == "&lt;!channel&gt; &amp; &lt;@U1&gt; *bold*"
    assert b.escape(None) == "" and b.escape("") == ""


def test_escape_is_applied_once_so_a_typed_entity_shows_as_typed() -> None:
    """Slack decodes once and never parses again: the customer sees "&lt;!channel&gt;", nobody is notified."""
    assert b.escape("&lt;!channel&gt;") == "&amp;lt;!channel&amp;gt;"


def test_escape_drops_controls_and_bidi_overrides_and_normalises_line_ends() -> None:
    """A right-to-left override would show "invoice\u202efdp.exe" as a PDF; tab and newline stay."""
    assert b.escape("invoice\u202efdp.exe") == "invoicefdp.exe"
    assert b.escape("a\r\nb\rc\x00d\te\x1b") == "a\nb\ncd\te"
    assert b.escape(EMOJI_AND_SCRIPTS) == EMOJI_AND_SCRIPTS


def test_clip_keeps_what_fits_and_marks_a_cut() -> None:
    assert b.clip("abc", 3) == "abc"
    assert b.clip("abcdef", 4) == "abc…"
    assert b.clip("abc   def", 7) == "abc…"  # no blanks before the mark
    with pytest.raises(ValueError):
        b.clip("abc", 0)


@pytest.mark.parametrize("text", [
    b.escape("a&b<c>d & e <<>> f&&&g " * 5),
    "x <@UAGENT1> y <!date^1767603600^{date_short_pretty} {time}|2026-01-05 09:00 UTC> z",
    "👍🏽👍🏽 👨‍👩‍👧👨‍👩‍👧 🇩🇪🇫🇷🇩🇪 éé 😀😀😀 Привет",
])
def test_clip_never_splits_an_entity_a_token_or_a_character(text: str) -> None:
    """At every limit: it fits, entities are whole, our tokens are whole, no modifier or flag half is left."""
    for limit in range(1, units(text) + 2):
        clipped = b.clip(text, limit)
        assert units(clipped) <= limit
        cut = clipped.removesuffix(b.ELLIPSIS)
        assert text.startswith(cut)
        assert_entities_whole(cut)
        assert cut.count("<") == cut.count(">")
        if cut and cut != text:
            nxt = text[len(cut):len(cut) + 1]
            assert not cut.endswith("\u200d") and nxt not in ("\u200d", "\ufe0f", "\u0301")
            assert not ("\U0001f3fb" <= nxt <= "\U0001f3ff")
            assert sum(1 for ch in cut if "\U0001f1e6" <= ch <= "\U0001f1ff") % 2 == 0


def test_clip_counts_emoji_as_two_units() -> None:
    """Slack may count UTF-16 units; 3,000 emoji would be 6,000 of them."""
    clipped = b.clip("😀" * 3000, 3000)
    assert units(clipped) <= 3000 and clipped.endswith(b.ELLIPSIS) and len(clipped) == 1500


def test_a_long_run_of_combining_marks_is_cut_anyway() -> None:
    """Zalgo text is not one character: a cut may split it rather than lose the whole text."""
    clipped = b.clip("a" + "\u0301" * 5000, 100)
    assert units(clipped) <= 100 and len(clipped) > 50


def test_mention_only_for_ids_shaped_like_slacks() -> None:
    assert b.mention("UAGENT1") == "<@UAGENT1>"
    assert b.mention("U1><!channel") == "U1&gt;&lt;!channel"
    assert b.mention(None) == "somebody"


def test_choice_values_round_trip_and_refuse_garbage() -> None:
    assert b.split_choice(b.choice_value("SR-7", "urgent")) == ("SR-7", "urgent")
    for bad in ("", "SR-7", "|urgent", "SR-7|"):
        with pytest.raises(ValueError):
            b.split_choice(bad)


def test_money_and_durations() -> None:
    assert b.money(120000, "EUR") == "1200.00 EUR"
    assert b.money(1500, "JPY") == "1500 JPY"
    assert b.money(5, "KWD") == "0.005 KWD"
    assert b.relative(NOW + 2 * HOUR, NOW) == "due in 2 h"
    assert b.relative(NOW + timedelta(minutes=90), NOW) == "due in 1 h 30 min"
    assert b.relative(NOW - timedelta(minutes=15), NOW) == "overdue by 15 min"
    assert b.relative(NOW + timedelta(seconds=20), NOW) == "due in under a minute"
    assert b.relative(NOW + timedelta(days=3, hours=4), NOW) == "due in 3 d 4 h"


# --- the triage card ---------------------------------------------------------------------


def test_the_triage_card_shows_what_triage_needs() -> None:
    text, blocks = b.triage_card(request(sender_flags=("invoice_not_found",)), now=NOW)
    shown = all_text(blocks)

    assert blocks[0] == {"type": "header", "text": {"type": "plain_text", "text": "SR-7 · Charged twice", "emoji": True}}
    for expected in ("jane@acme.test", "Acme Verified Ltd (C-VER)", "KYC: ✅ verified", "✅ Authenticated",
                     "🔎 An invoice number that is not this customer's", "billing dispute · ⚪ Normal",
                     "INV-100 · 1200.00 EUR", "due 2026-01-31 · open", "Disputed: *150.00 EUR*", "🆕 New",
                     "Unassigned", "First response: due in 2 h (<!date^1767610800^", "Resolution: due in 2 d 2 h",
                     "Last change: the customer (jane@acme.test) opened it · <!date^1767600000^",
                     "Opened via email"):
        assert expected in shown, expected
    assert text == "SR-7 (new): Charged twice"
    check_limits(blocks)
    slack_sdk_accepts(blocks)


@pytest.mark.parametrize("state, ids, more", [
    ("new", ["claim", "assign", "reply", "set_priority", "more"], ["merge", "not_a_request"]),
    ("assigned", ["assign", "reply", "request_approval", "resolve", "set_priority", "more"],
     ["wait_on_customer", "merge", "not_a_request"]),
    ("waiting", ["assign", "reply", "set_priority", "more"], ["merge", "not_a_request"]),
    ("pending_approval", ["assign", "reply", "set_priority"], []),
    ("resolved", ["reply", "reopen"], []),
    ("closed", [], []),
    ("merged", [], []),
])
def test_each_state_offers_only_what_it_allows(state: str, ids: list[str], more: list[str]) -> None:
    """DESIGN §4: claim only when new, resolve and ask for approval only when assigned, reopen only when resolved."""
    _, blocks = b.triage_card(in_state(state), now=NOW)
    assert action_ids(blocks) == ids
    assert overflow_choices(blocks) == more
    check_limits(blocks)
    slack_sdk_accepts(blocks)


@pytest.mark.parametrize("state", STATES)
def test_every_action_carries_the_request_key_in_its_value_and_the_actions_block_id(state: str) -> None:
    """Values carry the key; the actions block's id too, for the person picker, which has no value."""
    _, blocks = b.triage_card(in_state(state), now=NOW)
    for element in elements(blocks):
        if element["type"] == "button":
            assert element["value"] == "SR-7"
        for option in element.get("options", []):
            assert b.split_choice(option["value"])[0] == "SR-7"
    actions = [block for block in blocks if block["type"] == "actions"]
    assert [block["block_id"] for block in actions] == ([f"{b.REQUEST_ACTIONS_BLOCK}:SR-7"] if actions else [])
    assert b.card_request_key(blocks) == ("SR-7" if elements(blocks) else None)


def test_the_action_ids_are_the_constants_listeners_import() -> None:
    assert (b.ACTION_CLAIM, b.ACTION_ASSIGN, b.ACTION_REPLY, b.ACTION_REQUEST_APPROVAL, b.ACTION_RESOLVE,
            b.ACTION_MORE, b.ACTION_APPROVE, b.ACTION_REJECT, b.ACTION_SHOW_MESSAGE) == (
        "claim", "assign", "reply", "request_approval", "resolve", "more", "approve", "reject", "show_message")


def test_the_assign_picker_starts_at_the_assignee_and_the_priority_menu_at_the_priority() -> None:
    _, blocks = b.triage_card(replace(in_state("assigned"), priority="urgent"), now=NOW)
    picker, menu = (next(e for e in elements(blocks) if e["action_id"] == a) for a in ("assign", "set_priority"))
    assert (picker["type"], picker["initial_user"]) == ("users_select", "UAGENT1")
    assert menu["type"] == "static_select"
    assert [o["value"] for o in menu["options"]] == ["SR-7|urgent", "SR-7|high", "SR-7|normal", "SR-7|low"]
    assert menu["initial_option"]["value"] == "SR-7|urgent"


@pytest.mark.parametrize("state, status, sla", [
    ("assigned", "👤 Assigned", "First response: due in 2 h"),
    ("waiting", "⏸️ Waiting on customer", "First response: ⏸️ paused while waiting on the customer"),
    ("pending_approval", "1 approval pending", "Resolution: due in 2 d 2 h"),
    ("resolved", "✅ Resolved", "Resolution: ✅ resolved · <!date^"),
    ("closed", "🔒 Closed", "🔒 Closed · <!date^"),
    ("merged", "🔀 Merged into *SR-3*", "🔒 Closed · <!date^"),
])
def test_each_state_is_named_with_its_clocks(state: str, status: str, sla: str) -> None:
    text, blocks = b.triage_card(in_state(state), now=NOW)
    shown = all_text(blocks)
    assert status in shown and sla in shown
    if state != "new":
        assert "<@UAGENT1>" in shown or state == "merged"
    assert text.startswith(f"SR-7 ({'merged' if state == 'merged' else in_state(state).status.replace('_', ' ')})")


def test_closed_and_merged_cards_say_what_happens_next() -> None:
    assert "a customer reply opens a new request" in all_text(b.triage_card(in_state("closed"), now=NOW)[1])
    assert "its mail now lands there" in all_text(b.triage_card(in_state("merged"), now=NOW)[1])
    assert "*Resolution:* Refunded." in all_text(b.triage_card(in_state("resolved"), now=NOW)[1])
    follow_up = all_text(b.triage_card(request(follows_up="SR-2"), now=NOW)[1])
    assert "Follows up *SR-2*, which was closed." in follow_up


def test_the_clocks_as_seen_now() -> None:
    card = request(status="assigned", assignee="UAGENT1", first_response_due_at=NOW - timedelta(minutes=15),
                   next_reply_due_at=NOW + 3 * HOUR)
    shown = all_text(b.triage_card(card, now=NOW)[1])
    assert "First response: 🔴 overdue by 15 min" in shown
    assert "Next reply: due in 3 h" in shown
    answered = all_text(b.triage_card(replace(card, first_response_at=NOW - timedelta(minutes=5)), now=NOW)[1])
    assert "First response: ✅ answered late" in answered
    on_time = all_text(b.triage_card(replace(card, first_response_at=NOW - timedelta(minutes=30),
                                             first_response_due_at=NOW), now=NOW)[1])
    assert "First response: ✅ answered\n" in on_time


@pytest.mark.parametrize("verdict, flags, badge", [
    ("pass", (), "✅ Authenticated"),
    ("fail", (), "⛔ Authentication failed"),
    ("none", ("unknown_sender",), "⚠️ Not authenticated\n❔ Unknown sender"),
    ("none", ("unverified_sender",), "A verified customer's address, but the mail is not authenticated"),
    (None, (), "❔ Not checked"),
    ("pass", ("<!here>",), "⚠️ &lt;!here&gt;"),
])
def test_the_sender_badge(verdict: str | None, flags: tuple[str, ...], badge: str) -> None:
    shown = all_text(b.triage_card(request(sender_auth=verdict, sender_flags=flags), now=NOW)[1])
    assert badge in shown


def test_a_request_logged_by_an_agent_says_so_and_an_unknown_customer_too() -> None:
    card = request(channel="slack", sender_auth=None, customer=None, invoice=None, disputed_amount_minor=None,
                   disputed_currency=None)
    shown = all_text(b.triage_card(card, now=NOW)[1])
    assert "Logged by an agent (slack)" in shown and "❔ Not in the customer master" in shown
    assert "*Invoice*" not in shown


@pytest.mark.parametrize("change, line", [
    (ChangeView("request.claimed", "agent:UAGENT2", "Bob Agent", NOW), "Last change: <@UAGENT2> claimed it · "),
    (ChangeView("message.inbound", "customer:jane@acme.test", None, NOW),
     "Last change: the customer (jane@acme.test) wrote · "),
    (ChangeView("sla.breached", "system:sla", None, NOW), "Last change: supportdesk (sla) recorded an SLA breach · "),
    (ChangeView("request.dismissed", "agent:UAGENT1", "Alice Agent", NOW),
     "Last change: <@UAGENT1> closed it as not a request · "),
    (ChangeView("request.frobbed", "agent:not an id", "Eve <@U9>", NOW),
     "Last change: Eve &lt;@U9&gt; did request.frobbed · "),
    (None, "No change recorded yet"),
])
def test_the_last_change_says_who_did_what(change: ChangeView | None, line: str) -> None:
    assert line in all_text(b.triage_card(request(last_change=change), now=NOW)[1])


@pytest.mark.parametrize("injection", INJECTIONS)
def test_customer_text_on_the_triage_card_cannot_mention_broadcast_or_link(injection: str) -> None:
    card = request(
        subject=f"Refund {injection}", requester=f"{injection}@acme.test",
        customer=CustomerRef(f"C-{injection}", f"Acme {injection}", "verified"),
        invoice=InvoiceRef(f"INV {injection}", "C-VER", 100, "EUR", date(2026, 1, 1), date(2026, 1, 31),
                           f"open {injection}"),
        category=f"cat {injection}", resolution_note=f"note {injection}", status="resolved",
        last_change=ChangeView("request.resolved", f"customer:{injection}", None, NOW),
    )
    text, blocks = b.triage_card(card, now=NOW)
    assert_inert(text)
    assert_inert(all_text(blocks))
    assert b.escape(injection) in all_text(blocks)
    slack_sdk_accepts(blocks)


def test_formatting_emoji_and_other_scripts_survive() -> None:
    subject = f"*bold* _it_ {EMOJI_AND_SCRIPTS}"
    text, blocks = b.triage_card(request(subject=subject, customer=CustomerRef("C-1", EMOJI_AND_SCRIPTS, "pending")),
                                 now=NOW)
    assert blocks[0]["text"]["text"] == f"SR-7 · {subject}"
    assert f"{EMOJI_AND_SCRIPTS} (C-1)\nKYC: ⏳ pending" in all_text(blocks)
    assert subject in text


def test_the_longest_values_stay_within_every_limit() -> None:
    """A 998-character subject, huge names and notes: clipped, and the whole card far below Slack's ceiling."""
    huge = ("&<>" + "x" * 50 + "😀") * 2000
    card = request(subject=huge[:998], requester=huge, customer=CustomerRef(huge, huge, "verified"),
                   invoice=InvoiceRef(huge, "C", 10**15, "EUR", date(2026, 1, 1), date(2026, 1, 31), huge),
                   category=huge, resolution_note=huge, status="resolved", follows_up="SR-1",
                   sender_flags=tuple(huge[i:i + 40] for i in range(0, 4000, 40)),
                   last_change=ChangeView("x", f"customer:{huge}", None, NOW))
    text, blocks = b.triage_card(card, now=NOW)
    check_limits(blocks)
    slack_sdk_accepts(blocks)
    assert units(text) <= b.FALLBACK_LIMIT and text
    assert blocks[0]["text"]["text"].endswith(b.ELLIPSIS)
    assert total_characters(blocks) < 12_000
    for t in text_objects(blocks):
        assert_entities_whole(t["text"])


# --- the approval card -------------------------------------------------------------------


def test_a_pending_approval_shows_the_evidence_and_both_buttons() -> None:
    text, blocks = b.approval_card(approval())
    shown = all_text(blocks)

    assert blocks[0]["text"]["text"] == "Credit of 120.00 EUR · SR-7"
    for expected in ("*SR-7* · Charged twice", "*Asked by* <@UAGENT1> · <!date^", "*Why:* Charged twice in January",
                     "Acme Verified Ltd (C-VER)\nKYC: ✅ verified", "INV-100 · 1200.00 EUR\ndue 2026-01-31 · open",
                     "Disputed: 150.00 EUR\nRequested: *120.00 EUR*", "⏳ Pending",
                     "adjustments in the 90 days before this one",
                     "• 2026-01-04 · Refund 10.01 EUR · ✅ Approved · SR-1"):
        assert expected in shown, expected
    approve, reject = elements(blocks)
    assert (approve["action_id"], approve["value"], approve["style"]) == ("approve", "42", "primary")
    assert (reject["action_id"], reject["value"], reject["style"]) == ("reject", "42", "danger")
    assert "confirm" not in reject
    confirm = approve["confirm"]
    assert confirm["title"]["text"] == "Approve this credit?"
    assert "Credit of 120.00 EUR for Acme Verified Ltd (C-VER) on SR-7" in confirm["text"]["text"]
    assert (confirm["confirm"]["text"], confirm["deny"]["text"]) == ("Approve", "Cancel")
    assert text == "Credit of 120.00 EUR on SR-7: pending"
    check_limits(blocks)
    slack_sdk_accepts(blocks)


@pytest.mark.parametrize("status, line", [
    ("approved", "✅ Approved by <@UAPPROVE> · <!date^"),
    ("rejected", "❌ Rejected by <@UAPPROVE> · <!date^"),
])
def test_a_decided_approval_loses_its_buttons_and_says_who_decided(status: str, line: str) -> None:
    card = approval(status=status, decided_by="UAPPROVE", decided_by_name="Carol Approver", decided_at=NOW + HOUR,
                    decision_note="Checked <!channel> the statement")
    text, blocks = b.approval_card(card)
    shown = all_text(blocks)
    assert action_ids(blocks) == []
    assert line in shown
    heading = "Reason" if status == "rejected" else "Note"
    assert f"*{heading}:* Checked &lt;!channel&gt; the statement" in shown
    assert text.endswith(status)
    check_limits(blocks)
    slack_sdk_accepts(blocks)


def test_a_withdrawn_approval_has_no_buttons() -> None:
    _, blocks = b.approval_card(approval(status="withdrawn"))
    assert action_ids(blocks) == [] and "↩️ Withdrawn" in all_text(blocks)


@pytest.mark.parametrize("count, shown_lines, more", [(0, 0, None), (10, 10, None), (15, 10, "…and 5 more"),
                                                      (55, 10, "…and 45 more")])
def test_at_most_ten_adjustments_then_how_many_more(count: int, shown_lines: int, more: str | None) -> None:
    lines = tuple(adjustment(n) for n in range(1, min(count, 50) + 1))
    shown = all_text(b.approval_card(approval(recent_adjustments=lines, recent_adjustment_count=count))[1])
    assert shown.count("\n• ") == shown_lines
    if more:
        assert more in shown
    if count == 0:
        assert "before this one*\nNone." in shown


def test_warnings_an_approver_must_see() -> None:
    """KYC not verified, no customer at all, more than disputed or than the invoice."""
    pending_kyc = all_text(b.approval_card(approval(customer=CustomerRef("C-P", "Pending Corp", "pending")))[1])
    assert "KYC: ⏳ pending: approving will be refused" in pending_kyc
    nobody = all_text(b.approval_card(approval(customer=None))[1])
    assert "⛔ No customer linked: approving will be refused" in nobody and "no history" in nobody
    too_much = all_text(b.approval_card(approval(amount_minor=200000))[1])
    assert "⚠️ more than the disputed amount" in too_much and "⚠️ more than the invoice" in too_much
    no_dispute = all_text(b.approval_card(approval(disputed_amount_minor=None, disputed_currency=None, invoice=None))[1])
    assert "Disputed: —\nRequested: *120.00 EUR*" in no_dispute and "No invoice linked" in no_dispute


@pytest.mark.parametrize("injection", INJECTIONS)
def test_outside_text_on_the_approval_card_cannot_mention_broadcast_or_link(injection: str) -> None:
    """Approver phishing: a reason or a customer name that tries to add a link or a broadcast stays text."""
    card = approval(reason=f"Approve via {injection}", request_subject=injection,
                    customer=CustomerRef(injection, f"Acme {injection}", "verified"),
                    invoice=InvoiceRef(injection, "C", 100, "EUR", date(2026, 1, 1), date(2026, 1, 31), injection),
                    recent_adjustments=(replace(adjustment(1), request_key=injection, status=injection),))
    for view in (card, replace(card, status="rejected", decided_by="UAPPROVE", decision_note=injection)):
        text, blocks = b.approval_card(view)
        assert_inert(text)
        assert_inert(all_text(blocks))
        slack_sdk_accepts(blocks)


def test_the_longest_approval_stays_within_every_limit() -> None:
    huge = "&<>😀" * 30_000
    card = approval(reason=huge, request_subject=huge, customer=CustomerRef(huge, huge, huge),
                    recent_adjustments=tuple(adjustment(n) for n in range(1, 51)), recent_adjustment_count=500,
                    amount_minor=10**17)
    for view in (card, replace(card, status="rejected", decided_by="UAPPROVE", decision_note=huge)):
        text, blocks = b.approval_card(view)
        check_limits(blocks)
        slack_sdk_accepts(blocks)
        assert text and units(text) <= b.FALLBACK_LIMIT
        assert total_characters(blocks) < 12_000


# --- mail mirrored into the thread ---------------------------------------------------------


def test_a_short_mail_is_mirrored_whole_without_a_button() -> None:
    text, blocks = b.mirrored_message(message())
    shown = all_text(blocks)
    assert "📨 *jane@acme.test* · <!date^" in shown and "✅ Authenticated" in shown
    assert "*Charged twice*" in shown and "Please refund the second charge." in shown
    assert "📎 statement.pdf (47 KB)" in shown
    assert action_ids(blocks) == []
    assert text == "Mail from jane@acme.test: Charged twice"
    check_limits(blocks)
    slack_sdk_accepts(blocks)


def test_a_50000_character_mail_is_cut_with_a_button_for_the_rest() -> None:
    body = ("Line of the complaint & more <details>\n" * 1300)[:50_000]
    _, blocks = b.mirrored_message(message(body_text=body))
    body_block = next(block for block in blocks if block["type"] == "section"
                      and block["text"]["text"].startswith("Line of"))
    assert units(body_block["text"]["text"]) <= 2900 and body_block["text"]["text"].endswith(b.ELLIPSIS)
    assert_entities_whole(body_block["text"]["text"])
    (button,) = elements(blocks)
    assert (button["action_id"], button["value"], button["text"]["text"]) == ("show_message", "314", "Show full message")
    check_limits(blocks)
    slack_sdk_accepts(blocks)


def test_the_limit_is_the_callers_up_to_a_sections() -> None:
    body = "x" * 5000
    short = b.mirrored_message(message(body_text=body), limit=100)[1]
    assert any(block.get("text", {}).get("text") == "x" * 99 + b.ELLIPSIS for block in short)
    long = b.mirrored_message(message(body_text=body), limit=10_000)[1]
    assert all(units(block["text"]["text"]) <= 3000 for block in long if "text" in block)


def test_quoted_history_left_out_is_one_click_away() -> None:
    _, blocks = b.mirrored_message(message(full_text="Please refund.\n\n> On Monday you wrote: ..."))
    assert action_ids(blocks) == ["show_message"]


@pytest.mark.parametrize("injection", INJECTIONS)
def test_mail_cannot_mention_broadcast_or_link(injection: str) -> None:
    view = message(from_address=f"{injection}@evil.test", subject=f"Re: {injection}", body_text=f"Hi {injection}",
                   to_addresses=(injection,), flags=(injection,), auth_verdict=injection,
                   attachments=(AttachmentView(1, f"{injection}.pdf", injection, 10, "0" * 64, True),))
    text, blocks = b.mirrored_message(view)
    modal = b.full_message_modal(view)
    assert_inert(text)
    assert_inert(all_text(blocks))
    assert_inert(all_text(modal))
    assert f"Hi {b.escape(injection)}" in all_text(blocks)
    assert f"📎 {b.escape(injection)}.pdf (10 B, inline)" in all_text(blocks)


def test_emoji_and_other_scripts_are_mirrored_as_written() -> None:
    _, blocks = b.mirrored_message(message(body_text=EMOJI_AND_SCRIPTS, subject=EMOJI_AND_SCRIPTS))
    assert EMOJI_AND_SCRIPTS in [block["text"]["text"] for block in blocks if "text" in block]


def test_an_empty_mail_and_many_attachments() -> None:
    files = tuple(AttachmentView(n, f"scan-{n}.png", "image/png", 3 * 1024 * 1024, "0" * 64, False)
                  for n in range(25))
    _, blocks = b.mirrored_message(message(body_text="  \n", subject="", attachments=files))
    shown = all_text(blocks)
    assert "_(no text)_" in shown and "scan-19.png (3.0 MB)" in shown and "…and 5 more attachments" in shown
    assert "scan-20.png" not in shown
    check_limits(blocks)


def test_replies_and_notes_say_who_wrote_them() -> None:
    reply = message(direction="outbound", author="UAGENT1", from_address="support@localhost",
                    to_addresses=("jane@acme.test",), auth_verdict=None)
    note = message(direction="note", author="UAGENT2", from_address=None, to_addresses=(), subject=None,
                   auth_verdict=None)
    assert "📤 Reply by <@UAGENT1> to jane@acme.test · " in all_text(b.mirrored_message(reply)[1])
    assert "📝 Note by <@UAGENT2> · " in all_text(b.mirrored_message(note)[1])
    assert b.mirrored_message(reply)[0] == "Reply from supportdesk: Charged twice"


# --- the full message in a modal -------------------------------------------------------------


def modal_body(modal: dict[str, Any]) -> list[str]:
    return [block["text"]["text"] for block in modal["blocks"][1:] if block["type"] == "section"
            and not block["text"]["text"].startswith("📎")]


def slack_sdk_accepts_view(modal: dict[str, Any]) -> None:
    view = View(**modal)
    view.validate_json()
    assert view.to_dict() == modal


def test_the_modal_shows_a_50000_character_mail_whole_in_sections() -> None:
    body = "Paragraph with <angles> & ampersands, ünïcödé and 😀.\n" * 1000
    body = body[:50_000]
    modal = b.full_message_modal(message(body_text=body))
    pieces = modal_body(modal)
    assert modal["type"] == "modal" and modal["title"]["text"] == "Customer message"
    assert len(modal["blocks"]) <= 100 and len(pieces) >= 17
    assert all(units(p) <= 3000 for p in pieces)
    for piece in pieces:
        assert_entities_whole(piece)
    assert "".join("".join(pieces).split()) == "".join(b.escape(body).split())
    assert "*From:* jane@acme.test" in all_text(modal) and "📎 statement.pdf" in all_text(modal)
    check_limits(modal["blocks"], most=b.MAX_MODAL_BLOCKS)
    slack_sdk_accepts_view(modal)


def test_beyond_100_blocks_the_modal_says_how_much_is_not_shown() -> None:
    body = "word " * 100_000  # 500,000 characters
    modal = b.full_message_modal(message(body_text=body))
    assert len(modal["blocks"]) == b.MAX_MODAL_BLOCKS
    note = all_text(modal["blocks"][-2])
    assert note.startswith("✂️ About ") and "more characters are not shown" in note
    hidden = int(re.search(r"About ([\d,]+)", note).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert 0 < hidden < 500_000 - 96 * 2900
    check_limits(modal["blocks"], most=b.MAX_MODAL_BLOCKS)
    slack_sdk_accepts_view(modal)


def test_the_modal_shows_the_mail_as_received_when_history_was_left_out() -> None:
    modal = b.full_message_modal(message(body_text="Short.", full_text="Short.\n\n> On Monday you <@U1> wrote"))
    assert modal_body(modal) == ["Short.\n\n&gt; On Monday you &lt;@U1&gt; wrote"]


def test_a_modal_of_an_empty_mail_or_a_note() -> None:
    empty = b.full_message_modal(message(body_text="", attachments=()))
    assert modal_body(empty) == ["_(no text)_"]
    slack_sdk_accepts_view(empty)
    note = b.full_message_modal(message(direction="note", body_text="internal"))
    assert note["title"]["text"] == "Internal note"
