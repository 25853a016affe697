"""The service functions against the real store, on SQLite and on PostgreSQL.

Every lifecycle transition goes through the service that performs it and
writes exactly one event recording ``status: {from, to}``; every refusal names
the current state and leaves every table exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from core import services
from core.clock import FixedClock
from core.errors import InvalidInput, NotFound, TransitionRefused
from core.lifecycle import TRANSITIONS, Action, Status
from core.models import Approval, Message, Request
from core.money import parse_amount
from core.queries import get_request_detail
from core.services import InboundMail
from core.store import Store
from core.views import RequestDetail, RequestView
from tests import factories as f
from tests.core.snapshots import Written, events_after, last_seq, outbox_of, unchanged

AGENT, AGENT2, APPROVER = f.AGENT, f.AGENT2, f.APPROVER
STATES = [s.value for s in Status]


# --- helpers -----------------------------------------------------------------


def inbound(
    message_id: str | None = None,
    *,
    sender: str = "jane@acme.test",
    subject: str = "Charged twice",
    references: tuple[str, ...] = (),
) -> InboundMail:
    return InboundMail(from_address=sender, subject=subject, body_text="Hello, about my invoice.",
                       message_id=message_id, in_reply_to=references[-1] if references else None,
                       references=references)


def open_by_email(store: Store, message_id: str = "<m1@acme.test>", sender: str = "jane@acme.test") -> RequestView:
    return services.open_request(store, channel="email", mail=inbound(message_id, sender=sender))


def detail(store: Store, key: str) -> RequestDetail:
    return get_request_detail(store, key)


def bring_to(store: Store, status: str) -> str:
    """Open a request from the verified customer C-VER and drive it to ``status`` through the services."""
    key = f.open_request(store).key
    if status == "new":
        return key
    services.claim(store, key, actor=AGENT)
    if status == "assigned":
        return key
    if status == "waiting_on_customer":
        services.wait_on_customer(store, key, actor=AGENT)
        return key
    if status == "pending_approval":
        services.request_approval(store, key, kind="credit", amount=f.euros("120.00"), reason="Duplicate charge",
                                  actor=AGENT)
        return key
    services.resolve(store, key, note="Refunded the duplicate", actor=AGENT)
    if status == "resolved":
        return key
    assert status == "closed"
    services.close(store, key, actor=AGENT)
    return key


def pending_approval_id(store: Store, key: str) -> int:
    (approval,) = [a for a in detail(store, key).approvals if a.status == "pending"]
    return approval.id


def perform(store: Store, action: Action, key: str, other: str) -> None:
    """Do ``action`` on ``key`` through its service; ``other`` is a second, open request (merge target)."""
    if action is Action.CLAIM:
        services.claim(store, key, actor=AGENT2)
    elif action is Action.ASSIGN:
        services.assign(store, key, to=AGENT2, actor=AGENT)
    elif action is Action.WAIT_ON_CUSTOMER:
        services.wait_on_customer(store, key, actor=AGENT)
    elif action is Action.CUSTOMER_REPLIED:
        services.customer_replied(store, key, actor=AGENT)
    elif action is Action.REQUEST_APPROVAL:
        services.request_approval(store, key, kind="refund", amount=f.euros("40.00"), reason="Goodwill", actor=AGENT)
    elif action is Action.APPROVE:
        services.decide_approval(store, pending_approval_id(store, key), approve=True, actor=APPROVER)
    elif action is Action.REJECT:
        services.decide_approval(store, pending_approval_id(store, key), approve=False, note="Not owed",
                                 actor=APPROVER)
    elif action is Action.RESOLVE:
        services.resolve(store, key, note="Fixed", actor=AGENT)
    elif action is Action.REOPEN:
        services.reopen(store, key, actor=AGENT)
    elif action is Action.CLOSE:
        services.close(store, key, actor=AGENT)
    elif action is Action.MERGE:
        services.merge(store, key, into=other, actor=AGENT)
    elif action is Action.DISMISS:
        services.dismiss(store, key, reason="a thank-you note", actor=AGENT)
    else:  # pragma: no cover
        raise AssertionError(action)


def only_event(store: Store, seq: int) -> Written:
    written = events_after(store, seq)
    assert len(written) == 1, written
    return written[0]


# --- every allowed transition: one service, one event ---------------------------

KIND = {
    Action.CLAIM: "request.claimed",
    Action.ASSIGN: "request.reassigned",
    Action.WAIT_ON_CUSTOMER: "request.waiting_on_customer",
    Action.CUSTOMER_REPLIED: "request.customer_replied",
    Action.REQUEST_APPROVAL: "approval.requested",
    Action.APPROVE: "approval.approved",
    Action.REJECT: "approval.rejected",
    Action.RESOLVE: "request.resolved",
    Action.REOPEN: "request.reopened",
    Action.CLOSE: "request.closed",
    Action.MERGE: "request.merged",
    Action.DISMISS: "request.dismissed",
}

SERVICE_TRANSITIONS = [
    (Action.CLAIM, "new", "assigned"),
    (Action.ASSIGN, "new", "assigned"),
    (Action.ASSIGN, "assigned", "assigned"),
    (Action.ASSIGN, "waiting_on_customer", "waiting_on_customer"),
    (Action.ASSIGN, "pending_approval", "pending_approval"),
    (Action.WAIT_ON_CUSTOMER, "assigned", "waiting_on_customer"),
    (Action.CUSTOMER_REPLIED, "waiting_on_customer", "assigned"),
    (Action.CUSTOMER_REPLIED, "resolved", "assigned"),
    (Action.REQUEST_APPROVAL, "assigned", "pending_approval"),
    (Action.APPROVE, "pending_approval", "assigned"),
    (Action.REJECT, "pending_approval", "assigned"),
    (Action.RESOLVE, "assigned", "resolved"),
    (Action.REOPEN, "resolved", "assigned"),
    (Action.CLOSE, "resolved", "closed"),
    (Action.MERGE, "new", "closed"),
    (Action.MERGE, "assigned", "closed"),
    (Action.MERGE, "waiting_on_customer", "closed"),
    (Action.DISMISS, "new", "closed"),
    (Action.DISMISS, "assigned", "closed"),
    (Action.DISMISS, "waiting_on_customer", "closed"),
]
# A customer reply while we hold the request changes nothing; only mail does that (tested below).
_NO_OP_REPLIES = {(Action.CUSTOMER_REPLIED, s) for s in (Status.NEW, Status.ASSIGNED, Status.PENDING_APPROVAL)}


def test_service_transitions_cover_the_lifecycle_table() -> None:
    """The list driven below is every transition of the table, with the table's target states."""
    table = {(a, s): t for a, row in TRANSITIONS.items() for s, t in row.items() if (a, s) not in _NO_OP_REPLIES}
    assert {(a, Status(s)): Status(t) for a, s, t in SERVICE_TRANSITIONS} == table


@pytest.mark.parametrize(("action", "before", "after"), SERVICE_TRANSITIONS, ids=lambda v: str(v))
def test_each_transition_writes_exactly_one_status_event(
    store: Store, action: Action, before: str, after: str
) -> None:
    """The service moves the request and writes exactly one event carrying status from/to."""
    f.seed(store)
    key = bring_to(store, before)
    other = f.open_request(store, subject="Same problem again").key
    seq = last_seq(store)

    perform(store, action, key, other)

    written = events_after(store, seq)
    on_key = [e for e in written if e.request == key]
    assert len(on_key) == 1, written
    kind = "request.assigned" if (action, before) == (Action.ASSIGN, "new") else KIND[action]
    assert on_key[0].kind == kind
    assert on_key[0].data["status"] == {"from": before, "to": after}
    assert detail(store, key).request.status == after
    # Only a merge touches a second request, and that event is not a transition.
    elsewhere = [(e.kind, e.request, "status" in e.data) for e in written if e.request != key]
    assert elsewhere == ([("request.merge_received", other, False)] if action is Action.MERGE else [])


def test_claim_sets_assignee_and_first_assignment_time(store: Store, clock: FixedClock) -> None:
    """Claiming takes a new request: assignee and first_assigned_at are set, the event names the claimer."""
    f.seed(store)
    key = f.open_request(store).key
    clock.advance(timedelta(minutes=7))
    seq = last_seq(store)

    view = services.claim(store, key, actor=AGENT2)

    assert (view.status, view.assignee, view.first_assigned_at) == ("assigned", AGENT2, clock.now())
    event = only_event(store, seq)
    assert event == Written("request.claimed", key, "agent:UAGENT2",
                            {"assignee": AGENT2, "status": {"from": "new", "to": "assigned"}})


@pytest.mark.parametrize("state", ["assigned", "waiting_on_customer", "pending_approval"])
def test_reassign_keeps_state_and_first_assignment_time(store: Store, clock: FixedClock, state: str) -> None:
    """Handing over keeps the state it finds and the time of the first assignment."""
    f.seed(store)
    key = bring_to(store, state)
    first = detail(store, key).request.first_assigned_at
    clock.advance(timedelta(hours=2))
    seq = last_seq(store)

    view = services.assign(store, key, to=AGENT2, actor=AGENT)

    assert (view.status, view.assignee, view.first_assigned_at) == (state, AGENT2, first)
    assert first is not None and first < clock.now()
    assert only_event(store, seq) == Written(
        "request.reassigned", key, "agent:UAGENT1",
        {"assignee": AGENT2, "previous": AGENT, "status": {"from": state, "to": state}},
    )


def test_assign_to_current_assignee_is_refused(store: Store) -> None:
    """Assigning a request to the agent who already has it is refused and changes nothing."""
    f.seed(store)
    key = bring_to(store, "assigned")
    with unchanged(store), pytest.raises(InvalidInput, match=f"{key} is already assigned to Alice Agent"):
        services.assign(store, key, to=AGENT, actor=AGENT2)


def test_customer_replied_on_resolved_reopens(store: Store, clock: FixedClock) -> None:
    """The customer_replied service on a resolved request: back to assigned, reopen_count 1, resolved_at cleared."""
    f.seed(store)
    key = bring_to(store, "resolved")
    assert detail(store, key).request.resolved_at == clock.now()
    clock.advance(timedelta(hours=1))

    view = services.customer_replied(store, key, actor=AGENT)

    assert (view.status, view.reopen_count, view.resolved_at) == ("assigned", 1, None)


def test_customer_replied_on_waiting_does_not_count_a_reopen(store: Store) -> None:
    """Answering a question moves waiting_on_customer back to assigned without counting a reopen."""
    f.seed(store)
    key = bring_to(store, "waiting_on_customer")
    view = services.customer_replied(store, key, actor=AGENT)
    assert (view.status, view.reopen_count) == ("assigned", 0)


@pytest.mark.parametrize(
    ("state", "after", "kind", "reopens"),
    [
        ("new", "new", "message.inbound", 0),
        ("assigned", "assigned", "message.inbound", 0),
        ("pending_approval", "pending_approval", "message.inbound", 0),
        ("waiting_on_customer", "assigned", "request.customer_replied", 0),
        ("resolved", "assigned", "request.customer_replied", 1),
    ],
)
def test_inbound_mail_moves_waiting_and_resolved_requests(
    store: Store, clock: FixedClock, state: str, after: str, kind: str, reopens: int
) -> None:
    """A customer mail joins the request and writes one event; waiting and resolved go back to assigned."""
    f.seed(store)
    key = bring_to(store, state)
    clock.advance(timedelta(hours=3))
    seq = last_seq(store)

    view = services.add_inbound_message(store, key, inbound("<reply-1@acme.test>"))

    assert (view.key, view.status, view.reopen_count, view.resolved_at) == (key, after, reopens, None)
    event = only_event(store, seq)
    assert (event.kind, event.request, event.actor) == (kind, key, "customer:jane@acme.test")
    assert event.data["status"] == {"from": state, "to": after}
    messages = detail(store, key).messages
    assert [m.message_id for m in messages if m.direction == "inbound"][-1] == "<reply-1@acme.test>"


def test_two_customer_replies_on_resolved_count_two_reopens(store: Store) -> None:
    """Each reply to a resolved request counts one reopen."""
    f.seed(store)
    key = bring_to(store, "resolved")
    services.add_inbound_message(store, key, inbound("<r1@acme.test>"))
    services.resolve(store, key, note="Done again", actor=AGENT)
    view = services.add_inbound_message(store, key, inbound("<r2@acme.test>"))
    assert (view.status, view.reopen_count) == ("assigned", 2)


def test_request_approval_stores_the_approval(store: Store, clock: FixedClock) -> None:
    """Asking for a credit makes a pending approval in minor units and moves the request to pending_approval."""
    f.seed(store)
    key = bring_to(store, "assigned")
    seq = last_seq(store)

    approval = services.request_approval(store, key, kind="write-off", amount=f.euros("99.90"),
                                         reason="Bank fees", actor=AGENT)

    assert (approval.kind, approval.amount_minor, approval.currency, approval.status) == ("write_off", 9990, "EUR",
                                                                                          "pending")
    assert (approval.requested_by, approval.requested_at) == (AGENT, clock.now())
    assert detail(store, key).request.status == "pending_approval"
    assert only_event(store, seq).data == {
        "approval_id": approval.id, "kind": "write_off", "amount": {"amount_minor": 9990, "currency": "EUR"},
        "reason": "Bank fees", "status": {"from": "assigned", "to": "pending_approval"},
    }


@pytest.mark.parametrize(("approve", "note", "status"), [(True, None, "approved"), (False, "Not owed", "rejected")])
def test_decide_approval_records_the_decision(
    store: Store, clock: FixedClock, approve: bool, note: str | None, status: str
) -> None:
    """Approving or rejecting stores who decided, when and why, and hands the request back to assigned."""
    f.seed(store)
    key = bring_to(store, "pending_approval")
    approval_id = pending_approval_id(store, key)
    clock.advance(timedelta(minutes=30))

    decided = services.decide_approval(store, approval_id, approve=approve, note=note, actor=APPROVER)

    assert (decided.status, decided.decided_by, decided.decided_at, decided.decision_note) == (
        status, APPROVER, clock.now(), note)
    assert detail(store, key).request.status == "assigned"


def test_resolve_stores_note_code_and_time_and_notifies_customer(store: Store, clock: FixedClock) -> None:
    """Resolving records note, code and resolved_at, and queues the resolution e-mail."""
    f.seed(store)
    key = bring_to(store, "assigned")
    clock.advance(timedelta(hours=5))

    view = services.resolve(store, key, note="Refund issued", code="Refunded", actor=AGENT)

    assert (view.status, view.resolution_note, view.resolution_code, view.resolved_at) == (
        "resolved", "Refund issued", "refunded", clock.now())
    assert [(c, t) for c, t, _ in outbox_of(store, key)] == [("email", "resolution_notice")]


def test_reopen_counts_and_clears_resolution_time(store: Store) -> None:
    """Reopening a resolved request: assigned again, reopen_count 1, resolved_at cleared."""
    f.seed(store)
    key = bring_to(store, "resolved")
    view = services.reopen(store, key, actor=AGENT)
    assert (view.status, view.reopen_count, view.resolved_at) == ("assigned", 1, None)


def test_close_sets_closed_at(store: Store, clock: FixedClock) -> None:
    """Closing a resolved request records when."""
    f.seed(store)
    key = bring_to(store, "resolved")
    clock.advance(timedelta(days=3))
    view = services.close(store, key, actor=AGENT)
    assert (view.status, view.closed_at) == ("closed", clock.now())


def test_dismiss_closes_without_resolution_or_mail_to_the_sender(store: Store, clock: FixedClock) -> None:
    """"Not a request": closed now, no resolution recorded, and nothing in the e-mail outbox."""
    f.seed(store)
    key = open_by_email(store).key
    outbox_before = outbox_of(store, key)
    clock.advance(timedelta(minutes=3))

    view = services.dismiss(store, key, reason="  a thank-you note ", actor=AGENT)

    assert (view.status, view.closed_at, view.resolved_at, view.resolution_note) == ("closed", clock.now(), None, None)
    assert [o for o in outbox_of(store, key)[len(outbox_before):] if o[0] == "email"] == []
    assert detail(store, key).events[-1].data["reason"] == "a thank-you note"


def test_merge_closes_the_duplicate_and_links_both_ways(store: Store, clock: FixedClock) -> None:
    """A merged request is closed, points to the survivor, and the survivor lists it."""
    f.seed(store)
    survivor = f.open_request(store).key
    duplicate = f.open_request(store, subject="Charged twice (again)").key
    clock.advance(timedelta(minutes=5))

    view = services.merge(store, duplicate, into=survivor, actor=AGENT)

    assert (view.status, view.merged_into, view.closed_at) == ("closed", survivor, clock.now())
    assert detail(store, survivor).merged_from == (duplicate,)
    assert detail(store, survivor).request.status == "new"


# --- refusals: the message names the state, the store stays as it was ---------

ALLOWED = {(a, s) for a, s, _ in SERVICE_TRANSITIONS}
REFUSED = [
    (a, s)
    for a in (Action.CLAIM, Action.ASSIGN, Action.WAIT_ON_CUSTOMER, Action.CUSTOMER_REPLIED,
              Action.REQUEST_APPROVAL, Action.RESOLVE, Action.REOPEN, Action.CLOSE, Action.MERGE, Action.DISMISS)
    for s in STATES
    if (a, s) not in ALLOWED
]


@pytest.mark.parametrize(("action", "state"), REFUSED, ids=lambda v: str(v))
def test_refused_transition_names_state_and_changes_nothing(store: Store, action: Action, state: str) -> None:
    """Every transition the lifecycle does not draw is refused by its service, naming the current state."""
    f.seed(store)
    key = bring_to(store, state)
    other = f.open_request(store, subject="Another one").key
    with unchanged(store), pytest.raises(TransitionRefused) as refused:
        perform(store, action, key, other)
    message = str(refused.value)
    assert message.startswith(f"{key} ")
    assert f"is {state}" in message


def test_resolve_while_approval_pending_says_why(store: Store) -> None:
    """Resolving is refused while an approval is pending, and the message says so."""
    f.seed(store)
    key = bring_to(store, "pending_approval")
    with unchanged(store), pytest.raises(TransitionRefused) as refused:
        services.resolve(store, key, note="Done", actor=AGENT)
    message = str(refused.value)
    assert message.startswith(f"{key} is pending_approval")
    assert "an approval is still pending" in message


def test_claim_of_assigned_request_names_who_claimed_it(store: Store) -> None:
    """The loser of a claim learns who has the request."""
    f.seed(store)
    key = bring_to(store, "assigned")
    with unchanged(store), pytest.raises(TransitionRefused) as refused:
        services.claim(store, key, actor=AGENT2)
    assert str(refused.value) == f"{key} was already claimed by Alice Agent (UAGENT1); it is assigned"


@pytest.mark.parametrize("state", ["new", "assigned", "waiting_on_customer", "pending_approval"])
def test_close_of_unresolved_request_names_state_and_last_change(store: Store, state: str) -> None:
    """Only resolved requests close; the refusal says the state and who changed it last."""
    f.seed(store)
    key = bring_to(store, state)
    with unchanged(store), pytest.raises(TransitionRefused) as refused:
        services.close(store, key, actor=AGENT2)
    message = str(refused.value)
    assert message.startswith(f"{key} is {state}, last changed by ")
    assert "cannot close; that is allowed only when it is resolved" in message


def test_reopen_of_closed_request_is_refused(store: Store) -> None:
    """Closed stays closed: reopen is refused and explains that a reply opens a new request."""
    f.seed(store)
    key = bring_to(store, "closed")
    with unchanged(store), pytest.raises(TransitionRefused) as refused:
        services.reopen(store, key, actor=AGENT)
    message = str(refused.value)
    assert message.startswith(f"{key} is closed")
    assert "a customer reply opens a new request" in message


def test_reply_on_closed_request_is_refused(store: Store) -> None:
    """No reply goes out on a closed request."""
    f.seed(store)
    key = bring_to(store, "closed")
    with unchanged(store), pytest.raises(TransitionRefused, match=f"^{key} is closed: cannot reply"):
        services.reply(store, key, "Anything else?", actor=AGENT)


def test_reply_on_merged_request_names_the_survivor(store: Store) -> None:
    """Replying on a merged request is refused and points to the request it was merged into."""
    f.seed(store)
    survivor = f.open_request(store).key
    duplicate = f.open_request(store).key
    services.merge(store, duplicate, into=survivor, actor=AGENT)
    merged = rf"^{duplicate} is closed \(merged into {survivor}\)"
    with unchanged(store), pytest.raises(TransitionRefused, match=merged):
        services.reply(store, duplicate, "Hello", actor=AGENT)


def test_merge_into_closed_request_is_refused(store: Store) -> None:
    """The survivor of a merge must be open."""
    f.seed(store)
    closed = bring_to(store, "closed")
    duplicate = f.open_request(store).key
    with unchanged(store), pytest.raises(TransitionRefused, match=f"^{closed} is closed: cannot receive {duplicate}"):
        services.merge(store, duplicate, into=closed, actor=AGENT)


@pytest.mark.parametrize("into", ["SR-1", "sr-1", "SR1"])
def test_merge_into_itself_is_refused(store: Store, into: str) -> None:
    """A request cannot be merged into itself, however its key is spelled."""
    f.seed(store)
    f.open_request(store)
    with unchanged(store), pytest.raises(InvalidInput, match="cannot merge SR-1 into itself"):
        services.merge(store, "SR-1", into=into, actor=AGENT)


# --- mail: follow-ups, merges, duplicates ---------------------------------------


def test_mail_to_closed_request_opens_a_follow_up(store: Store, clock: FixedClock) -> None:
    """A reply to a closed request opens a new request that links back; the closed one is untouched."""
    f.seed(store)
    old = bring_to(store, "closed")
    old_before = detail(store, old)
    clock.advance(timedelta(days=10))
    seq = last_seq(store)

    view = services.add_inbound_message(store, old, inbound("<late@acme.test>", subject="Re: Charged twice"))

    assert view.key == "SR-2" and view.key != old
    assert (view.status, view.follows_up, view.channel, view.created_at) == ("new", old, "email", clock.now())
    assert view.customer is not None and view.customer.external_ref == "C-VER"
    assert [m.message_id for m in detail(store, view.key).messages] == ["<late@acme.test>"]
    assert detail(store, old) == old_before
    event = only_event(store, seq)
    assert (event.kind, event.request, event.data["follows_up"], event.data["status"]) == (
        "request.opened", "SR-2", old, {"from": None, "to": "new"})
    assert [(c, t) for c, t, _ in outbox_of(store, view.key)] == [("email", "acknowledgment")]


def test_mail_to_merged_request_lands_on_the_survivor(store: Store) -> None:
    """Mail to a merged request joins the request it was merged into."""
    f.seed(store)
    survivor = bring_to(store, "waiting_on_customer")
    duplicate = f.open_request(store).key
    services.merge(store, duplicate, into=survivor, actor=AGENT)
    seq = last_seq(store)

    view = services.add_inbound_message(store, duplicate, inbound("<to-dup@acme.test>"))

    assert (view.key, view.status) == (survivor, "assigned")
    assert "<to-dup@acme.test>" in [m.message_id for m in detail(store, survivor).messages]
    assert "<to-dup@acme.test>" not in [m.message_id for m in detail(store, duplicate).messages]
    assert only_event(store, seq).request == survivor


def test_same_message_id_opens_one_request(store: Store) -> None:
    """A mail delivered twice is stored once: the second open_request returns the first request, changing nothing."""
    f.seed(store)
    first = open_by_email(store, "<dup@acme.test>")
    with unchanged(store):
        again = open_by_email(store, "<dup@acme.test>")
    assert again.key == first.key == "SR-1"
    assert len(detail(store, "SR-1").messages) == 1


def test_same_message_id_on_a_request_is_stored_once(store: Store) -> None:
    """A reply delivered twice to a resolved request reopens it once."""
    f.seed(store)
    key = bring_to(store, "resolved")
    services.add_inbound_message(store, key, inbound("<twice@acme.test>"))
    with unchanged(store):
        view = services.add_inbound_message(store, key, inbound("<twice@acme.test>"))
    assert (view.key, view.status, view.reopen_count) == (key, "assigned", 1)
    ids = [m.message_id for m in detail(store, key).messages]
    assert ids.count("<twice@acme.test>") == 1


def test_opening_message_redelivered_as_reply_is_stored_once(store: Store) -> None:
    """The first message of a request, delivered again through add_inbound_message, changes nothing."""
    f.seed(store)
    key = open_by_email(store, "<first@acme.test>").key
    with unchanged(store):
        view = services.add_inbound_message(store, key, inbound("<first@acme.test>"))
    assert view.key == key


# --- replies, acknowledgments, notes --------------------------------------------


def test_first_response_is_set_by_the_first_reply_only(store: Store, clock: FixedClock) -> None:
    """first_response_at is the time of the first reply; a second reply does not move it."""
    f.seed(store)
    key = open_by_email(store).key
    clock.advance(timedelta(minutes=42))
    first_time = clock.now()
    services.reply(store, key, "We are on it.", actor=AGENT)
    clock.advance(timedelta(hours=1))
    services.reply(store, key, "Refund sent.", actor=AGENT2)
    assert detail(store, key).request.first_response_at == first_time


def test_reply_threads_on_the_last_inbound_message(store: Store) -> None:
    """Outbound Message-IDs are unique; In-Reply-To and References follow the customer's last mail."""
    f.seed(store)
    key = open_by_email(store, "<m1@acme.test>").key
    services.add_inbound_message(store, key, inbound("<m2@acme.test>", references=("<m1@acme.test>",)))

    one = services.reply(store, key, "First answer", actor=AGENT)
    two = services.reply(store, key, "Second answer", actor=AGENT)

    assert one.message_id and two.message_id and one.message_id != two.message_id
    with store.read() as session:
        token = session.execute(select(Request.reply_token).where(Request.number == 1)).scalar_one()
    assert token and len(token) == 16
    # Our Message-IDs carry the request's reply token, so an answer threads even without headers.
    assert one.message_id.startswith("<") and one.message_id.endswith(f".{token}@localhost>")
    with store.read() as session:
        rows = session.execute(
            select(Message.message_id, Message.in_reply_to, Message.references, Message.to_addresses, Message.subject)
            .where(Message.direction == "outbound").order_by(Message.id)
        ).all()
    assert [r[0] for r in rows] == [one.message_id, two.message_id]
    for row in rows:
        assert row[1:] == ("<m2@acme.test>", "<m1@acme.test> <m2@acme.test>", "jane@acme.test",
                           f"Re: Charged twice [{key}]")


def test_reply_queues_one_reply_email(store: Store) -> None:
    """A reply writes one event and one e-mail outbox row with topic reply pointing at the message."""
    f.seed(store)
    key = f.open_request(store).key
    seq = last_seq(store)
    message = services.reply(store, key, "Looking into it", actor=AGENT)
    event = only_event(store, seq)
    assert (event.kind, event.data["message_id"], event.data["rfc_message_id"]) == (
        "message.outbound", message.id, message.message_id)
    assert outbox_of(store, key) == [("email", "reply", {"request_key": key, "message_id": message.id})]


def test_email_request_is_acknowledged_and_cli_request_is_not(store: Store) -> None:
    """Opening by e-mail queues an acknowledgment; opening from the command line queues no e-mail."""
    f.seed(store)
    by_mail = open_by_email(store).key
    by_cli = f.open_request(store).key
    assert outbox_of(store, by_mail) == [("email", "acknowledgment", {"request_key": by_mail})]
    assert outbox_of(store, by_cli) == []


@pytest.mark.parametrize("state", ["assigned", "closed"])
def test_note_writes_no_email(store: Store, state: str) -> None:
    """A note is internal: one message.note event, no outbox row, allowed even on a closed request."""
    f.seed(store)
    key = bring_to(store, state)
    outbox_before = outbox_of(store, key)
    seq = last_seq(store)

    note = services.add_note(store, key, "Customer called, see CRM", actor=AGENT2)

    assert (note.direction, note.message_id, note.author) == ("note", None, AGENT2)
    assert only_event(store, seq) == Written("message.note", key, "agent:UAGENT2", {"message_id": note.id})
    assert outbox_of(store, key) == outbox_before


# --- customers, invoices, priority, category ------------------------------------


def test_link_customer_to_unknown_sender(store: Store) -> None:
    """A request from an unknown address can be linked to a customer; the event records its KYC status."""
    f.seed(store)
    key = f.open_request(store, sender="someone@gmail.test").key
    assert detail(store, key).request.customer is None
    seq = last_seq(store)
    view = services.link_customer(store, key, "C-PEND", actor=AGENT)
    assert view.customer is not None and view.customer.external_ref == "C-PEND"
    assert only_event(store, seq).data == {"customer_ref": "C-PEND", "previous": None, "kyc_status": "pending"}


@pytest.mark.parametrize(
    ("customer", "error", "match"),
    [
        ("C-VER", InvalidInput, "SR-1 is already linked to customer C-VER"),
        ("C-NOPE", NotFound, "there is no customer with reference 'C-NOPE'"),
    ],
)
def test_link_customer_refusals(store: Store, customer: str, error: type[Exception], match: str) -> None:
    """Linking the same customer again, or an unknown one, is refused and changes nothing."""
    f.seed(store)
    f.open_request(store)
    with unchanged(store), pytest.raises(error, match=match):
        services.link_customer(store, "SR-1", customer, actor=AGENT)


def test_link_customer_refused_when_invoice_belongs_to_another(store: Store) -> None:
    """A request about C-VER's invoice cannot be moved to another customer."""
    f.seed(store)
    key = f.open_request(store, invoice="INV-100").key
    with unchanged(store), pytest.raises(InvalidInput, match="linked to invoice INV-100 of another customer"):
        services.link_customer(store, key, "C-PEND", actor=AGENT)


def test_link_invoice_with_disputed_amount(store: Store) -> None:
    """The invoice and the disputed amount are stored, the amount as integer minor units."""
    f.seed(store)
    key = f.open_request(store).key
    seq = last_seq(store)
    view = services.link_invoice(store, key, "INV-100", disputed=f.euros("150.25"), actor=AGENT)
    assert view.invoice is not None and view.invoice.number == "INV-100"
    assert (view.disputed_amount_minor, view.disputed_currency) == (15025, "EUR")
    with store.read() as session:
        stored = session.execute(select(Request.disputed_amount_minor).where(Request.number == 1)).scalar_one()
    assert stored == 15025 and type(stored) is int
    assert only_event(store, seq).data == {"invoice": "INV-100",
                                           "disputed_amount": {"amount_minor": 15025, "currency": "EUR"}}


def test_link_invoice_dispute_may_equal_the_invoice_amount(store: Store) -> None:
    """Disputing the whole invoice (1200.00 EUR) is allowed."""
    f.seed(store)
    key = f.open_request(store).key
    view = services.link_invoice(store, key, "INV-100", disputed=f.euros("1200.00"), actor=AGENT)
    assert view.disputed_amount_minor == 120000


@pytest.mark.parametrize(
    ("invoice", "amount", "currency", "error", "match"),
    [
        ("INV-100", "10.00", "USD", InvalidInput, "is in USD but invoice INV-100 is in EUR"),
        ("INV-100", "1200.01", "EUR", InvalidInput, r"more than invoice INV-100 \(1200.00 EUR\)"),
        ("INV-100", "0", "EUR", InvalidInput, "must be more than zero"),
        ("INV-200", "10.00", "EUR", InvalidInput, "invoice INV-200 belongs to another customer, not C-VER"),
        ("INV-999", "10.00", "EUR", NotFound, "there is no invoice 'INV-999'"),
    ],
)
def test_link_invoice_refusals(
    store: Store, invoice: str, amount: str, currency: str, error: type[Exception], match: str
) -> None:
    """Wrong currency, more than the invoice, zero, another customer's or an unknown invoice: refused, unchanged."""
    f.seed(store)
    key = f.open_request(store).key
    with unchanged(store), pytest.raises(error, match=match):
        services.link_invoice(store, key, invoice, disputed=parse_amount(amount, currency), actor=AGENT)


def test_link_invoice_needs_a_customer(store: Store) -> None:
    """A request with no customer cannot have an invoice linked."""
    f.seed(store)
    key = f.open_request(store, sender="someone@gmail.test").key
    with unchanged(store), pytest.raises(InvalidInput, match="has no customer yet"):
        services.link_invoice(store, key, "INV-100", actor=AGENT)


@pytest.mark.parametrize(
    ("amount", "currency", "match"),
    [("50.00", "USD", "is in USD but invoice INV-100 is in EUR"), ("5000.00", "EUR", "more than invoice INV-100")],
)
def test_link_invoice_checks_an_existing_disputed_amount(store: Store, amount: str, currency: str, match: str) -> None:
    """A disputed amount given at opening must agree with the invoice linked later (currency, not above it)."""
    f.seed(store)
    key = f.open_request(store, disputed=amount, currency=currency).key
    with unchanged(store), pytest.raises(InvalidInput, match=match):
        services.link_invoice(store, key, "INV-100", actor=AGENT)


def test_set_priority_and_category(store: Store) -> None:
    """Priority and category change with one event each, naming the previous value."""
    f.seed(store)
    key = f.open_request(store).key
    seq = last_seq(store)
    assert services.set_priority(store, key, "Urgent", actor=AGENT).priority == "urgent"
    assert services.set_category(store, key, "technical", actor=AGENT).category == "technical"
    written = events_after(store, seq)
    assert [(e.kind, e.data) for e in written] == [
        ("request.priority_changed", {"priority": "urgent", "previous": "normal"}),
        ("request.category_changed", {"category": "technical", "previous": "general"}),
    ]


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("priority", "critical", "priority 'critical' is not one of urgent, high, normal, low"),
        ("priority", "", "priority '' is not one of urgent, high, normal, low"),
        ("priority", "normal", "SR-1 already has priority normal"),
        ("category", "Billing Dispute", "category 'Billing Dispute' must be a lower-case word such as billing_dispute"),
        ("category", "1st-line", "category '1st-line' must be a lower-case word"),
        ("category", "general", "SR-1 already has category general"),
    ],
)
def test_invalid_priority_and_category_are_refused(store: Store, field: str, value: str, match: str) -> None:
    """Unknown priorities, malformed categories and no-op changes are refused with a clear message."""
    f.seed(store)
    f.open_request(store)
    change = services.set_priority if field == "priority" else services.set_category
    with unchanged(store), pytest.raises(InvalidInput, match=match):
        change(store, "SR-1", value, actor=AGENT)


@pytest.mark.parametrize(
    "change",
    [
        lambda s, k: services.set_priority(s, k, "high", actor=AGENT),
        lambda s, k: services.set_category(s, k, "account", actor=AGENT),
        lambda s, k: services.link_customer(s, k, "C-PEND", actor=AGENT),
        lambda s, k: services.link_invoice(s, k, "INV-100", actor=AGENT),
    ],
    ids=["priority", "category", "customer", "invoice"],
)
def test_closed_request_cannot_be_changed(store: Store, change: Callable[[Store, str], object]) -> None:
    """Priority, category, customer and invoice are frozen once a request is closed."""
    f.seed(store)
    key = bring_to(store, "closed")
    with unchanged(store), pytest.raises(TransitionRefused, match=f"^{key} is closed: cannot"):
        change(store, key)


# --- keys -------------------------------------------------------------------------


def test_keys_are_sequential_and_a_refused_open_uses_no_number(store: Store) -> None:
    """Keys run SR-1, SR-2, ...; a refused open consumes no number; a follow-up takes the next one."""
    f.seed(store)
    assert f.open_request(store).key == "SR-1"
    assert open_by_email(store).key == "SR-2"
    with unchanged(store), pytest.raises(InvalidInput, match="belongs to another customer"):
        f.open_request(store, invoice="INV-200")
    assert f.open_request(store).key == "SR-3"
    services.resolve(store, bring_to(store, "assigned"), note="ok", actor=AGENT)  # SR-4
    services.close(store, "SR-4", actor=AGENT)
    assert services.add_inbound_message(store, "SR-4", inbound("<again@acme.test>")).key == "SR-5"
    assert [r.key for r in (detail(store, f"SR-{n}").request for n in range(1, 6))] == [
        "SR-1", "SR-2", "SR-3", "SR-4", "SR-5"]


@pytest.mark.parametrize("key", ["sr-1", "SR1", " SR-1 "])
def test_key_spellings_are_accepted(store: Store, key: str) -> None:
    """Keys are read case-insensitively, with or without the dash."""
    f.seed(store)
    f.open_request(store)
    assert services.claim(store, key, actor=AGENT).key == "SR-1"


@pytest.mark.parametrize("key", ["SR-x", "", "SR-", "12", "SR--1", "SR-1.5", "INV-1"])
def test_bad_keys_are_invalid_input(store: Store, key: str) -> None:
    """A key that is not SR-<number> is InvalidInput, naming what was given."""
    f.seed(store)
    f.open_request(store)
    with unchanged(store), pytest.raises(InvalidInput, match="is not a request key like SR-12"):
        services.claim(store, key, actor=AGENT)


@pytest.mark.parametrize("key", ["SR-2", "SR-0", "SR-999999"])
def test_unknown_key_is_not_found(store: Store, key: str) -> None:
    """A well-formed key of a request that does not exist is NotFound."""
    f.seed(store)
    f.open_request(store)
    with unchanged(store), pytest.raises(NotFound, match=f"there is no request {key}"):
        services.resolve(store, key, note="x", actor=AGENT)


def test_key_beyond_integer_range_is_not_found(store: Store) -> None:
    """SR-999999999999 parses (12 digits) but names no request: NotFound, not PostgreSQL's 'integer out of range'."""
    f.seed(store)
    f.open_request(store)
    with unchanged(store), pytest.raises(NotFound, match="there is no request SR-999999999999"):
        services.claim(store, "SR-999999999999", actor=AGENT)


# --- money --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("12.50", "EUR", 1250), ("12.5", "eur", 1250), ("7", "EUR", 700), ("0.01", "USD", 1),
        ("1500", "JPY", 1500), ("1500.0", "JPY", 1500), ("12.345", "KWD", 12345), ("0.001", "KWD", 1),
    ],
)
def test_parse_amount_gives_minor_units(text: str, currency: str, minor: int) -> None:
    """Decimal strings become integer minor units with the currency's exponent (JPY 0, KWD 3)."""
    money = parse_amount(text, currency)
    assert (money.minor, money.currency) == (minor, currency.upper())
    assert type(money.minor) is int


@pytest.mark.parametrize(
    ("text", "currency", "match"),
    [
        ("1.234", "EUR", "has more than 2 decimal places for EUR"),
        ("1500.5", "JPY", "has more than 0 decimal places for JPY"),
        ("1.2345", "KWD", "has more than 3 decimal places for KWD"),
        ("1,234.00", "EUR", "is not a positive decimal number"),
        ("12,50", "EUR", "is not a positive decimal number"),
        ("-5", "EUR", "is not a positive decimal number"),
        ("1e3", "EUR", "is not a positive decimal number"),
        ("", "EUR", "is not a positive decimal number"),
        (".5", "EUR", "is not a positive decimal number"),
        ("12.50", "EURO", "is not a three-letter ISO 4217 code"),
    ],
)
def test_parse_amount_refuses_bad_amounts(text: str, currency: str, match: str) -> None:
    """Excess precision, separators, signs, exponents and bad currencies are refused, never rounded."""
    with pytest.raises(InvalidInput, match=match):
        parse_amount(text, currency)


@pytest.mark.parametrize(("text", "currency", "minor"), [("1500", "JPY", 1500), ("12.345", "KWD", 12345),
                                                         ("99.99", "EUR", 9999)])
def test_approval_amount_is_stored_in_minor_units(store: Store, text: str, currency: str, minor: int) -> None:
    """Approval.amount_minor holds the integer minor units of the currency asked for."""
    f.seed(store)
    key = bring_to(store, "assigned")
    services.request_approval(store, key, kind="credit", amount=parse_amount(text, currency), reason="Goodwill",
                              actor=AGENT)
    with store.read() as session:
        amount, stored_currency = session.execute(select(Approval.amount_minor, Approval.currency)).one()
    assert (amount, stored_currency) == (minor, currency)
    assert type(amount) is int


def test_disputed_amount_at_opening_is_stored_in_minor_units(store: Store) -> None:
    """A disputed amount given when opening is stored as integer minor units with the invoice."""
    f.seed(store)
    view = f.open_request(store, invoice="INV-100", disputed="99.99")
    assert (view.category, view.disputed_amount_minor, view.disputed_currency) == ("billing_dispute", 9999, "EUR")
    with store.read() as session:
        stored = session.execute(select(Request.disputed_amount_minor, Request.disputed_currency)).one()
    assert tuple(stored) == (9999, "EUR")


def test_adjustment_currency_must_match_the_invoice(store: Store) -> None:
    """An approval on a request about an EUR invoice cannot be in USD."""
    f.seed(store)
    key = f.open_request(store, invoice="INV-100").key
    services.claim(store, key, actor=AGENT)
    with unchanged(store), pytest.raises(InvalidInput, match="adjustment is in USD but invoice INV-100 is in EUR"):
        services.request_approval(store, key, kind="refund", amount=parse_amount("10", "USD"), reason="x",
                                  actor=AGENT)


def test_amount_too_large_to_store_is_invalid_input(store: Store) -> None:
    """An amount beyond a BIGINT is refused as bad input, not OverflowError (SQLite) or DataError (PostgreSQL)."""
    f.seed(store)
    key = bring_to(store, "assigned")
    with unchanged(store), pytest.raises(InvalidInput):
        services.request_approval(store, key, kind="credit", amount=parse_amount("100000000000000000000", "EUR"),
                                  reason="Typo", actor=AGENT)
