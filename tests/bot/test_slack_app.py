"""The Slack app over real HTTP: signed requests in, Web API calls out to the fake Slack. Both databases.

Every test drives the real Bolt app the way Slack does (signed slash
commands, clicks, modal submissions and events on ``/slack/events``) and
checks what Slack would see (the acknowledgment, ephemeral answers on the
``response_url``, cards posted and updated) and what the store recorded.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
import time
import urllib.request

import pytest
from sqlalchemy import select

from core import services
from core.models import Message, OutboxMessage
from core.queries import RequestFilter, get_request_detail, list_requests
from core.services import InboundMail
from core.store import Store
from tests import factories as f
from tests.bot.slack_harness import ALICE, APPROVALS_CHANNEL, BOB, CAROL, MALLORY, STRANGER, RunningSlack, running_slack
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import (
    EXTERNAL_USER,
    TRIAGE_CHANNEL,
    Signing,
    SlackUser,
    block_actions,
    button,
    event_callback,
    message_action,
    message_event,
    signed_event,
    signed_interaction,
    signed_slash_command,
    slash_command,
    static_select,
    text_input,
    users_select,
    view_submission,
)


@pytest.fixture
def slack(store: Store, fake_slack: FakeSlack) -> RunningSlack:
    f.seed(store)
    with running_slack(store, fake_slack) as running:
        yield running


def email_request(slack: RunningSlack, subject: str = "Charged twice", body: str = "Please help.",
                  sender: str = "jane@acme.test") -> str:
    return services.open_request(
        slack.store, channel="email",
        mail=InboundMail(from_address=sender, subject=subject, body_text=body, message_id=f"<{time.time()}@x>"),
    ).key


def command(slack: RunningSlack, fake: FakeSlack, text: str, user=ALICE, **signing):  # type: ignore[no-untyped-def]
    return slack.post(signed_slash_command(slash_command("/sd", text, user=user, response_url=fake.webhook_url()),
                                           Signing(**signing)))


def click(slack: RunningSlack, fake: FakeSlack, action: dict, user=ALICE, **kwargs):  # type: ignore[no-untyped-def]
    return slack.post(signed_interaction(block_actions(action, user=user, response_url=fake.webhook_url(), **kwargs)))


def ephemeral_texts(fake: FakeSlack, count: int = 1) -> list[str]:
    return [p.args.get("text", "") for p in fake.wait_for_webhook_posts(count, timeout=5)]


def card_post(fake: FakeSlack) -> dict:
    (call,) = [c for c in fake.calls("chat.postMessage") if c.ok and c.args.get("channel") == TRIAGE_CHANNEL.id
               and not c.args.get("thread_ts")]
    return call.args


# --- the door: signatures, health ------------------------------------------------------------


def test_a_bad_signature_or_a_stale_timestamp_is_401_and_changes_nothing(slack: RunningSlack,
                                                                         fake_slack: FakeSlack) -> None:
    key = email_request(slack)
    assert command(slack, fake_slack, f"claim {key}", wrong_signature=True).status == 401
    assert command(slack, fake_slack, f"claim {key}", stale=True).status == 401
    assert get_request_detail(slack.store, key).request.status == "new"
    assert fake_slack.webhook_posts() == []


def test_health_answers_with_the_store(slack: RunningSlack) -> None:
    with urllib.request.urlopen(slack.health_url, timeout=5) as response:
        body = json.load(response)
    assert response.status == 200 and body["store"] is True and body["parts"]["slack"] == "http"


# --- the slash command -------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "help", "frobnicate SR-1", "list everything", "assign SR-1 bob"])
def test_help_and_unknown_input_answer_with_usage_ephemerally(slack: RunningSlack, fake_slack: FakeSlack,
                                                              text: str) -> None:
    answer = command(slack, fake_slack, text)
    assert answer.status == 200 and answer.elapsed < 3
    body = answer.json()
    assert body["response_type"] == "ephemeral" and "/sd show SR-12" in body["text"]


def test_claim_by_command_assigns_and_answers_privately(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    key = email_request(slack)
    answer = command(slack, fake_slack, f"claim {key.lower()}")
    assert answer.status == 200 and answer.elapsed < 3
    (text,) = ephemeral_texts(fake_slack)
    assert text.startswith(f"You have {key}")
    assert get_request_detail(slack.store, key).request.assignee == ALICE.id


def test_a_refusal_from_core_is_one_ephemeral_sentence(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    key = email_request(slack)
    services.claim(slack.store, key, actor=BOB.id)
    command(slack, fake_slack, f"claim {key}")
    (text,) = ephemeral_texts(fake_slack)
    assert "already claimed by Bob Agent" in text
    assert get_request_detail(slack.store, key).request.assignee == BOB.id


def test_list_show_assign_resolve_reopen_and_sla(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    first = email_request(slack, subject="First <!channel>")
    second = email_request(slack, subject="Second")
    command(slack, fake_slack, "list unassigned")
    (listing,) = ephemeral_texts(fake_slack)
    assert f"`{second}`" in listing and f"`{first}`" in listing and "&lt;!channel&gt;" in listing
    assert "<!channel>" not in listing

    command(slack, fake_slack, f"assign {first} <@{BOB.id}|bob>")
    assert ephemeral_texts(fake_slack, 2)[1] == f"{first} is now with <@{BOB.id}>."
    command(slack, fake_slack, f"resolve {first} Refunded the duplicate charge")
    assert ephemeral_texts(fake_slack, 3)[2].startswith(f"{first} is resolved")
    command(slack, fake_slack, f"reopen {first}")
    assert ephemeral_texts(fake_slack, 4)[3].startswith(f"{first} is open again")
    command(slack, fake_slack, f"show {second}")
    show = ephemeral_texts(fake_slack, 5)[4]
    assert second in show
    command(slack, fake_slack, f"sla {second}")
    sla = ephemeral_texts(fake_slack, 6)[5]
    assert "first response" in sla and "due" in sla


def test_quarantine_lists_mail_set_aside(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    command(slack, fake_slack, "quarantine")
    assert ephemeral_texts(fake_slack) == ["No mail is in quarantine."]


# --- who may use it ----------------------------------------------------------------------------


@pytest.mark.parametrize("user", [STRANGER, EXTERNAL_USER], ids=["not an agent", "slack connect"])
def test_strangers_are_refused_and_nothing_changes(slack: RunningSlack, fake_slack: FakeSlack, user) -> None:  # type: ignore[no-untyped-def]
    key = email_request(slack)
    answer = command(slack, fake_slack, f"claim {key}", user=user)
    assert answer.status == 200 and answer.json()["response_type"] == "ephemeral"
    assert "did nothing" in answer.json()["text"]
    click(slack, fake_slack, button("claim", key), user=user)
    (text,) = ephemeral_texts(fake_slack)
    assert "did nothing" in text
    assert get_request_detail(slack.store, key).request.status == "new"


# --- cards -------------------------------------------------------------------------------------


def test_a_new_request_gets_a_card_that_every_change_updates_in_place(slack: RunningSlack,
                                                                      fake_slack: FakeSlack) -> None:
    key = email_request(slack, subject="Refund <!channel> <@U0BOSS> <https://evil.test|your bank>",
                        body="Hi <!here>, please call me.")
    report = slack.deliver()
    assert report.failed == 0 and report.sent >= 1
    posted = card_post(fake_slack)
    dumped = json.dumps(posted)
    assert key in posted["text"]
    assert "<!channel>" not in dumped and "<@U0BOSS>" not in dumped and "<https://evil.test" not in dumped
    assert posted["unfurl_links"] in (False, "false", "0", 0) and not posted.get("link_names")
    mirrored = [c for c in fake_slack.calls("chat.postMessage") if c.args.get("thread_ts")]
    assert mirrored and "<!here>" not in json.dumps(mirrored[0].args)

    click(slack, fake_slack, button("claim", key))
    fake_slack_ts = fake_slack.calls("chat.postMessage")[0].response["ts"]
    deadline = time.monotonic() + 5  # the claim is made after the click was acknowledged
    while get_request_detail(slack.store, key).request.assignee != ALICE.id and time.monotonic() < deadline:
        time.sleep(0.02)
    slack.deliver()
    (update,) = fake_slack.calls("chat.update")
    assert update.args["ts"] == fake_slack_ts and update.args["channel"] == TRIAGE_CHANNEL.id
    assert ALICE.id in json.dumps(update.args["blocks"])
    assert len([c for c in fake_slack.calls("chat.postMessage") if not c.args.get("thread_ts")]) == 1


def test_two_agents_claiming_at_once_make_one_decision(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    key = email_request(slack)
    answers = []
    start = threading.Barrier(2)

    def claim_as(user) -> None:  # type: ignore[no-untyped-def]
        start.wait()
        answers.append(click(slack, fake_slack, button("claim", key), user=user))

    threads = [threading.Thread(target=claim_as, args=(u,)) for u in (ALICE, BOB)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status for a in answers] == [200, 200] and all(a.elapsed < 3 for a in answers)
    (refusal,) = ephemeral_texts(fake_slack)
    winner = get_request_detail(slack.store, key).request.assignee
    assert winner in (ALICE.id, BOB.id) and "already claimed by" in refusal
    claimed = [e for e in get_request_detail(slack.store, key).events if e.kind == "request.claimed"]
    assert len(claimed) == 1


def test_assign_priority_wait_and_not_a_request_from_the_card(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    key = email_request(slack)
    click(slack, fake_slack, users_select("assign", BOB.id, block_id=f"request_actions:{key}"))
    click(slack, fake_slack, static_select("set_priority", f"{key}|urgent"))
    click(slack, fake_slack, static_select("more", f"{key}|wait_on_customer"))
    deadline = time.monotonic() + 5
    while get_request_detail(slack.store, key).request.status != "waiting_on_customer" and time.monotonic() < deadline:
        time.sleep(0.05)
    request = get_request_detail(slack.store, key).request
    assert (request.assignee, request.priority, request.status) == (BOB.id, "urgent", "waiting_on_customer")

    other = email_request(slack, subject="Thanks!")
    click(slack, fake_slack, static_select("more", f"{other}|not_a_request"))
    deadline = time.monotonic() + 5
    while get_request_detail(slack.store, other).request.status != "closed" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get_request_detail(slack.store, other).request.status == "closed"
    assert fake_slack.webhook_posts() == []  # nothing was refused


def test_resolve_opens_a_modal_whose_submission_resolves_and_an_empty_note_is_refused_in_it(
    slack: RunningSlack, fake_slack: FakeSlack
) -> None:
    key = email_request(slack)
    services.claim(slack.store, key, actor=ALICE.id)
    click(slack, fake_slack, button("resolve", key))
    (opened,) = fake_slack.wait_for_calls("views.open")
    view = opened.args["view"]
    assert view["callback_id"] == "resolve_modal" and json.loads(view["private_metadata"]) == {"key": key}

    empty = slack.post(signed_interaction(view_submission("resolve_modal", {"note": {"value": text_input("  ")}},
                                                          private_metadata=view["private_metadata"], user=ALICE)))
    assert empty.status == 200 and empty.json()["response_action"] == "errors" and "note" in empty.json()["errors"]
    assert get_request_detail(slack.store, key).request.status == "assigned"

    done = slack.post(signed_interaction(view_submission(
        "resolve_modal", {"note": {"value": text_input("Refunded")}}, private_metadata=view["private_metadata"],
        user=ALICE)))
    assert done.status == 200 and done.text in ("", "{}")
    assert get_request_detail(slack.store, key).request.resolution_note == "Refunded"


def test_reply_to_customer_shows_recipient_and_subject_and_queues_the_mail(slack: RunningSlack,
                                                                          fake_slack: FakeSlack) -> None:
    key = email_request(slack, subject="Where is my refund?", body="I am still waiting <b>.")
    services.claim(slack.store, key, actor=ALICE.id)
    click(slack, fake_slack, button("reply", key))
    (opened,) = fake_slack.wait_for_calls("views.open")
    shown = json.dumps(opened.args["view"])
    assert "jane@acme.test" in shown and f"Where is my refund? [{key}]" in shown and "&lt;b&gt;" in shown
    slack.post(signed_interaction(view_submission("reply_modal", {"body": {"value": text_input("It is on its way.")}},
                                                  private_metadata=opened.args["view"]["private_metadata"],
                                                  user=ALICE)))
    with slack.store.read() as session:
        outbound = session.execute(select(Message).where(Message.direction == "outbound")).scalars().all()
        topics = session.execute(select(OutboxMessage.topic).where(OutboxMessage.channel == "email")).scalars().all()
    assert [m.body_text for m in outbound] == ["It is on its way."] and "reply" in topics


def test_approval_is_asked_in_a_modal_posted_with_evidence_and_decided_once(slack: RunningSlack,
                                                                           fake_slack: FakeSlack) -> None:
    key = f.open_request(slack.store, invoice="INV-100", disputed="120.00").key
    services.claim(slack.store, key, actor=ALICE.id)
    click(slack, fake_slack, button("request_approval", key))
    (opened,) = fake_slack.wait_for_calls("views.open")
    meta = opened.args["view"]["private_metadata"]
    bad = slack.post(signed_interaction(view_submission("request_approval_modal", {
        "kind": {"value": {"type": "static_select", "selected_option": {"value": "credit"}}},
        "amount": {"value": text_input("12.345")}, "currency": {"value": text_input("EUR")},
        "reason": {"value": text_input("Duplicate charge")}}, private_metadata=meta, user=ALICE)))
    assert bad.json()["response_action"] == "errors" and "amount" in bad.json()["errors"]
    slack.post(signed_interaction(view_submission("request_approval_modal", {
        "kind": {"value": {"type": "static_select", "selected_option": {"value": "credit"}}},
        "amount": {"value": text_input("120.00")}, "currency": {"value": text_input("EUR")},
        "reason": {"value": text_input("Duplicate charge")}}, private_metadata=meta, user=ALICE)))
    (approval,) = get_request_detail(slack.store, key).approvals
    slack.deliver()
    (card,) = [c for c in fake_slack.calls("chat.postMessage") if c.args["channel"] == APPROVALS_CHANNEL]
    assert "INV-100" in json.dumps(card.args["blocks"]) and "approve" in json.dumps(card.args["blocks"])

    click(slack, fake_slack, button("approve", str(approval.id)), user=ALICE)  # their own request: refused
    (refusal,) = ephemeral_texts(fake_slack)
    assert "did nothing" not in refusal and get_request_detail(slack.store, key).approvals[0].status == "pending"
    click(slack, fake_slack, button("approve", str(approval.id)), user=CAROL)
    deadline = time.monotonic() + 5
    while get_request_detail(slack.store, key).approvals[0].status == "pending" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get_request_detail(slack.store, key).approvals[0].status == "approved"
    slack.deliver()
    (update,) = [c for c in fake_slack.calls("chat.update") if c.args["channel"] == APPROVALS_CHANNEL]
    assert '"approve"' not in json.dumps(update.args["blocks"]) and CAROL.id in json.dumps(update.args["blocks"])


# --- the card's thread -------------------------------------------------------------------------


def test_an_agents_thread_reply_is_a_note_once_however_often_slack_delivers_it(slack: RunningSlack,
                                                                              fake_slack: FakeSlack) -> None:
    key = email_request(slack)
    slack.deliver()
    card_ts = fake_slack.calls("chat.postMessage")[0].response["ts"]
    event = event_callback(message_event("Checked the ledger: it is a duplicate.", user=ALICE, thread_ts=card_ts),
                           event_id="Ev0NOTE001")
    assert slack.post(signed_event(event)).status == 200
    assert slack.post(signed_event(event, Signing(retry_num=1))).status == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        notes = [m for m in get_request_detail(slack.store, key).messages if m.direction == "note"]
        if notes:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # a second note, if there were one, would have landed by now
    notes = [m for m in get_request_detail(slack.store, key).messages if m.direction == "note"]
    assert [n.body_text for n in notes] == ["Checked the ledger: it is a duplicate."]


# --- Slack trouble -----------------------------------------------------------------------------


def test_a_rate_limit_is_waited_out_and_nothing_is_lost(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    email_request(slack)
    fake_slack.rate_limit("chat.postMessage", times=2, retry_after=1)
    first = slack.deliver()
    assert first.retried >= 1 and fake_slack.calls("chat.postMessage")[-1].status == 429
    with slack.store.read() as session:
        row = session.execute(select(OutboxMessage).where(OutboxMessage.topic == "triage_card")).scalar_one()
        assert "retry after 1 s" in (row.last_error or "")
    slack.store.clock.advance(timedelta(seconds=2))
    slack.deliver()
    card_post(fake_slack)


def test_slack_down_delays_cards_and_they_arrive_after_it_recovers(slack: RunningSlack,
                                                                  fake_slack: FakeSlack) -> None:
    key = email_request(slack)
    fake_slack.down()
    assert slack.deliver().retried >= 1
    fake_slack.up()
    slack.store.clock.advance(timedelta(minutes=5))
    slack.deliver()
    assert key in card_post(fake_slack)["text"]


# --- logging requests from Slack, customers and figures ----------------------------------------


def new_request_values(requester: str, subject: str, body: str) -> dict:  # type: ignore[type-arg]
    return {"requester": {"value": text_input(requester)}, "subject": {"value": text_input(subject)},
            "body": {"value": text_input(body)},
            "priority": {"value": {"type": "static_select", "selected_option": {"value": "high"}}}}


def test_sd_new_opens_a_form_that_logs_a_request_and_a_bad_address_is_answered_in_it(
    slack: RunningSlack, fake_slack: FakeSlack
) -> None:
    assert command(slack, fake_slack, "new").status == 200
    (opened,) = fake_slack.wait_for_calls("views.open")
    assert opened.args["view"]["callback_id"] == "new_request_modal"
    bad = slack.post(signed_interaction(view_submission("new_request_modal",
                                                        new_request_values("not an address", "Help", "x"),
                                                        private_metadata=opened.args["view"]["private_metadata"],
                                                        user=ALICE)))
    assert bad.json()["response_action"] == "errors" and "requester" in bad.json()["errors"]
    good = slack.post(signed_interaction(view_submission("new_request_modal",
                                                         new_request_values("ops@pending.test", "VPN down", "Since 9"),
                                                         private_metadata=opened.args["view"]["private_metadata"],
                                                         user=ALICE)))
    assert good.status == 200
    request = get_request_detail(slack.store, "SR-1").request
    assert (request.channel, request.subject, request.priority, request.opened_by) == ("slack", "VPN down", "high",
                                                                                       ALICE.id)
    assert request.customer is not None and request.customer.external_ref == "C-PEND"


def test_a_message_shortcut_prefills_the_form_and_one_message_logs_one_request(slack: RunningSlack,
                                                                               fake_slack: FakeSlack) -> None:
    fake_slack.add_user("U0CUSTOMR", email="ops@pending.test")
    shortcut = message_action("create_request", "Our VPN is down\nsince this morning", message_ts="1700000001.000100",
                              message_user="U0CUSTOMR", user=ALICE)
    slack.post(signed_interaction(shortcut))
    (opened,) = fake_slack.wait_for_calls("views.open")
    view = opened.args["view"]
    initial = {b["block_id"]: b["element"].get("initial_value") for b in view["blocks"] if b["type"] == "input"}
    assert initial["requester"] == "ops@pending.test" and initial["subject"] == "Our VPN is down"
    for _ in range(2):
        slack.post(signed_interaction(view_submission("new_request_modal", new_request_values(
            "ops@pending.test", "Our VPN is down", "since this morning"), private_metadata=view["private_metadata"],
            user=ALICE)))
    assert [r.key for r in list_requests(slack.store, RequestFilter(status="all"))] == ["SR-1"]


def test_customer_shows_kyc_open_requests_invoices_and_adjustments(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    key = f.open_request(slack.store, invoice="INV-100", disputed="120.00").key
    services.claim(slack.store, key, actor=ALICE.id)
    services.request_approval(slack.store, key, kind="credit", amount=f.euros("50.00"), reason="goodwill",
                              actor=ALICE.id)
    command(slack, fake_slack, "customer C-VER")
    (text,) = ephemeral_texts(fake_slack)
    assert "Acme Verified Ltd" in text and "KYC *verified*" in text and f"`{key}`" in text
    assert "INV-100" in text and "credit" in text and "pending" in text
    command(slack, fake_slack, "customer C-NOPE")
    assert "no customer with reference" in ephemeral_texts(fake_slack, 2)[1]


def test_metrics_prints_the_same_numbers_as_the_metrics_report(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    key = email_request(slack)
    services.claim(slack.store, key, actor=ALICE.id)
    command(slack, fake_slack, "metrics today")
    (text,) = ephemeral_texts(fake_slack)
    assert text.startswith("*Team figures, today*") and "Backlog: 1 open" in text
    assert "/sd metrics" in command(slack, fake_slack, "metrics forever").json()["text"]


def test_merge_reopen_and_full_message_from_the_card(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    survivor = email_request(slack, subject="Charged twice")
    duplicate = email_request(slack, subject="Charged twice again", body="Same problem. " * 400)
    click(slack, fake_slack, static_select("more", f"{duplicate}|merge"))
    (opened,) = fake_slack.wait_for_calls("views.open")
    assert opened.args["view"]["callback_id"] == "merge_modal"
    meta = opened.args["view"]["private_metadata"]
    itself = slack.post(signed_interaction(view_submission("merge_modal", {"into": {"value": text_input(duplicate)}},
                                                           private_metadata=meta, user=ALICE)))
    assert itself.json()["response_action"] == "errors" and "into itself" in itself.json()["errors"]["into"]
    slack.post(signed_interaction(view_submission("merge_modal", {"into": {"value": text_input(survivor.lower())}},
                                                  private_metadata=meta, user=ALICE)))
    assert get_request_detail(slack.store, duplicate).request.merged_into == survivor

    message_id = get_request_detail(slack.store, duplicate).messages[0].id
    click(slack, fake_slack, button("show_message", str(message_id)))
    full = fake_slack.wait_for_calls("views.open", 2)[1].args["view"]
    assert full["type"] == "modal" and "Same problem." in json.dumps(full)

    services.claim(slack.store, survivor, actor=ALICE.id)
    services.resolve(slack.store, survivor, note="Refunded", actor=ALICE.id)
    click(slack, fake_slack, button("reopen", survivor))
    deadline = time.monotonic() + 5
    while get_request_detail(slack.store, survivor).request.status != "assigned" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert get_request_detail(slack.store, survivor).request.reopen_count == 1


def test_reject_needs_a_reason_and_then_decides(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    key = f.open_request(slack.store, invoice="INV-100", disputed="120.00").key
    services.claim(slack.store, key, actor=ALICE.id)
    approval = services.request_approval(slack.store, key, kind="refund", amount=f.euros("30.00"), reason="late",
                                         actor=ALICE.id)
    click(slack, fake_slack, button("reject", str(approval.id)), user=CAROL)
    (opened,) = fake_slack.wait_for_calls("views.open")
    assert opened.args["view"]["callback_id"] == "reject_modal" and "30.00" in json.dumps(opened.args["view"])
    meta = opened.args["view"]["private_metadata"]
    empty = slack.post(signed_interaction(view_submission("reject_modal", {"reason": {"value": text_input(" ")}},
                                                          private_metadata=meta, user=CAROL)))
    assert empty.json()["response_action"] == "errors" and "reason" in empty.json()["errors"]
    assert get_request_detail(slack.store, key).approvals[0].status == "pending"
    slack.post(signed_interaction(view_submission("reject_modal", {"reason": {"value": text_input("Not owed")}},
                                                  private_metadata=meta, user=CAROL)))
    decided = get_request_detail(slack.store, key).approvals[0]
    assert (decided.status, decided.decided_by, decided.decision_note) == ("rejected", CAROL.id, "Not owed")


def test_slack_errors_that_retrying_cannot_fix_fail_the_row_with_slacks_reason(slack: RunningSlack,
                                                                             fake_slack: FakeSlack) -> None:
    email_request(slack)
    fake_slack.fail("chat.postMessage", "channel_not_found", times=5)
    assert slack.deliver().failed >= 1
    with slack.store.read() as session:
        row = session.execute(select(OutboxMessage).where(OutboxMessage.topic == "triage_card")).scalar_one()
    assert row.status == "failed" and "channel_not_found" in (row.last_error or "")


def test_a_server_error_is_retried_later_and_the_card_then_arrives(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    key = email_request(slack)
    fake_slack.server_error("chat.postMessage", times=10)
    assert slack.deliver().retried >= 1
    fake_slack.clear_faults()
    slack.store.clock.advance(timedelta(minutes=5))
    slack.deliver()
    assert key in card_post(fake_slack)["text"]


def test_two_approvers_approving_at_once_make_one_decision(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    key = f.open_request(slack.store, invoice="INV-100", disputed="120.00").key
    services.claim(slack.store, key, actor=ALICE.id)
    approval = services.request_approval(slack.store, key, kind="credit", amount=f.euros("40.00"), reason="dup",
                                         actor=ALICE.id)
    dave = SlackUser(f.BIG_APPROVER, "dave", CAROL.team_id)
    answers = []
    start = threading.Barrier(2)

    def approve_as(user) -> None:  # type: ignore[no-untyped-def]
        start.wait()
        answers.append(click(slack, fake_slack, button("approve", str(approval.id)), user=user))

    threads = [threading.Thread(target=approve_as, args=(u,)) for u in (CAROL, dave)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status for a in answers] == [200, 200]
    (refusal,) = ephemeral_texts(fake_slack)
    decided = get_request_detail(slack.store, key).approvals[0]
    assert decided.status == "approved" and decided.decided_by in (CAROL.id, f.BIG_APPROVER)
    assert "approv" in refusal
    events = [e for e in get_request_detail(slack.store, key).events if e.kind == "approval.approved"]
    assert len(events) == 1


def test_a_thread_reply_the_store_refuses_is_not_lost_silently(slack: RunningSlack, fake_slack: FakeSlack) -> None:
    """Mallory is a manager, not an agent: her reply is refused as a note, and she is told so privately."""
    key = email_request(slack)
    slack.deliver()
    card_ts = fake_slack.calls("chat.postMessage")[0].response["ts"]
    event = event_callback(message_event("I think we should refund.", user=MALLORY, thread_ts=card_ts))
    assert slack.post(signed_event(event)).status == 200
    (told,) = fake_slack.wait_for_calls("chat.postEphemeral", timeout=5)
    assert told.args["user"] == MALLORY.id and told.args["thread_ts"] == card_ts
    assert f"Your note on {key} was not kept" in told.args["text"]
    assert [m for m in get_request_detail(slack.store, key).messages if m.direction == "note"] == []
