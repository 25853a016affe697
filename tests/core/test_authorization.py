"""Who may do what (DESIGN §8), each rule through the service functions on the real store.

Roles come from the store and are checked at the moment of the change: only
agents act on requests; only approvers decide, within their limit and
currency, never on an approval they asked for or a request they hold; money
moves only for KYC-verified customers. Every refusal leaves the store as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from core import services
from core.clock import FixedClock
from core.errors import Conflict, InvalidInput, NotFound, PermissionDenied, TransitionRefused
from core.money import Money, parse_amount
from core.queries import get_request_detail
from core.services import InboundMail
from core.store import Store
from core.views import ApprovalView
from tests import factories as f
from tests.core.snapshots import events_after, last_seq, unchanged

AGENT, AGENT2, APPROVER, BIG_APPROVER, USD_APPROVER, MANAGER = (
    f.AGENT, f.AGENT2, f.APPROVER, f.BIG_APPROVER, f.USD_APPROVER, f.MANAGER)
NON_AGENTS = {
    MANAGER: "Mallory Manager (UMANAGER)",
    USD_APPROVER: "Erin Approver (UUSDAPPR)",
    BIG_APPROVER: "Dave Director (UBIGBOSS)",
}


# --- helpers -----------------------------------------------------------------


def assigned_request(store: Store, *, sender: str = "jane@acme.test", invoice: str | None = None,
                     assignee: str = AGENT) -> str:
    """A request opened by Alice from ``sender`` and claimed by ``assignee``."""
    key = f.open_request(store, sender=sender, invoice=invoice).key
    services.claim(store, key, actor=assignee)
    return key


def ask(store: Store, key: str, amount: Money, *, actor: str = AGENT, kind: str = "credit") -> ApprovalView:
    return services.request_approval(store, key, kind=kind, amount=amount, reason="Charged twice", actor=actor)


def pending(store: Store, amount: Money = f.euros("120.00"), **kwargs: str) -> ApprovalView:
    """A pending approval on a fresh request of the verified customer C-VER, asked for by Alice."""
    return ask(store, assigned_request(store), amount, **kwargs)


def set_kyc(store: Store, ref: str, status: str) -> None:
    """Re-import the customer master with one customer's KYC status changed."""
    lines = f.CUSTOMERS_CSV.splitlines()
    changed = [",".join(line.split(",")[:-1] + [status]) if line.startswith(f"{ref},") else line for line in lines]
    assert changed != lines
    services.import_customers(store, "\n".join(changed) + "\n")


def status_of(store: Store, key: str) -> str:
    return get_request_detail(store, key).request.status


# --- only agents act on requests -------------------------------------------------

AGENT_ACTIONS: dict[str, tuple[str, Callable[[Store, str, str], object]]] = {
    # name: (state the request is in, the call)
    "claim": ("new", lambda s, k, who: services.claim(s, k, actor=who)),
    "reply": ("new", lambda s, k, who: services.reply(s, k, "Hello", actor=who)),
    "note": ("new", lambda s, k, who: services.add_note(s, k, "Internal", actor=who)),
    "assign": ("new", lambda s, k, who: services.assign(s, k, to=AGENT, actor=who)),
    "resolve": ("assigned", lambda s, k, who: services.resolve(s, k, note="Done", actor=who)),
    "wait": ("assigned", lambda s, k, who: services.wait_on_customer(s, k, actor=who)),
    "approval": ("assigned", lambda s, k, who: services.request_approval(
        s, k, kind="credit", amount=f.euros("10.00"), reason="x", actor=who)),
    "priority": ("new", lambda s, k, who: services.set_priority(s, k, "high", actor=who)),
    "merge": ("new", lambda s, k, who: services.merge(s, k, into="SR-1", actor=who)),
}


def request_in(store: Store, state: str) -> str:
    """SR-1 stays open as a merge target; the request acted on is SR-2, in ``state``."""
    f.open_request(store, subject="Merge target")
    key = f.open_request(store).key
    if state == "assigned":
        services.claim(store, key, actor=AGENT)
    return key


@pytest.mark.parametrize("who", sorted(NON_AGENTS))
@pytest.mark.parametrize("action", sorted(AGENT_ACTIONS))
def test_only_agents_act_on_requests(store: Store, who: str, action: str) -> None:
    """Managers and approvers without the agent role cannot work requests; the message says the role is missing."""
    f.seed(store)
    state, call = AGENT_ACTIONS[action]
    key = request_in(store, state)
    with unchanged(store), pytest.raises(PermissionDenied) as refused:
        call(store, key, who)
    message = str(refused.value)
    assert message.startswith(f"{NON_AGENTS[who]} cannot ")
    assert message.endswith("that needs the agent role")


@pytest.mark.parametrize("action", sorted(AGENT_ACTIONS))
def test_the_same_calls_work_for_an_agent(store: Store, action: str) -> None:
    """Control for the test above: each call succeeds when an agent makes it."""
    f.seed(store)
    state, call = AGENT_ACTIONS[action]
    key = request_in(store, state)
    seq = last_seq(store)
    call(store, key, AGENT2)
    assert len(events_after(store, seq)) >= 1


@pytest.mark.parametrize("action", sorted(AGENT_ACTIONS))
def test_unknown_slack_id_is_not_found(store: Store, action: str) -> None:
    """A Slack user id that is not in the directory gets NotFound naming the id."""
    f.seed(store)
    state, call = AGENT_ACTIONS[action]
    key = request_in(store, state)
    with unchanged(store), pytest.raises(NotFound, match="no agent has the Slack user id 'UNOBODY'"):
        call(store, key, "UNOBODY")


def test_requests_cannot_be_assigned_to_a_non_agent(store: Store) -> None:
    """An agent cannot hand a request to a manager."""
    f.seed(store)
    key = f.open_request(store).key
    with unchanged(store), pytest.raises(PermissionDenied, match="Mallory Manager \\(UMANAGER\\) cannot be assigned"):
        services.assign(store, key, to=MANAGER, actor=AGENT)


@pytest.mark.parametrize("channel", ["cli", "slack"])
def test_a_manager_cannot_open_a_request(store: Store, channel: str) -> None:
    """Requests typed in Slack or the CLI are opened by an agent only."""
    f.seed(store)
    mail = InboundMail(from_address="jane@acme.test", subject="Help", body_text="x")
    with unchanged(store), pytest.raises(PermissionDenied, match="needs the agent role"):
        services.open_request(store, channel=channel, mail=mail, actor=MANAGER)


def test_a_manager_cannot_record_a_customer_message(store: Store) -> None:
    """Recording a customer's mail on someone's behalf is agent work too."""
    f.seed(store)
    key = f.open_request(store).key
    mail = InboundMail(from_address="jane@acme.test", subject="Re", body_text="x", message_id="<x@acme.test>")
    with unchanged(store), pytest.raises(PermissionDenied, match="needs the agent role"):
        services.add_inbound_message(store, key, mail, actor=MANAGER)


# --- only approvers decide, within their limit and currency ----------------------


@pytest.mark.parametrize(("who", "name"), [(AGENT2, "Bob Agent (UAGENT2)"), (MANAGER, "Mallory Manager (UMANAGER)")])
def test_only_approvers_decide(store: Store, who: str, name: str) -> None:
    """An agent or a manager without the approver role cannot decide."""
    f.seed(store)
    approval = pending(store)
    with unchanged(store), pytest.raises(PermissionDenied) as refused:
        services.decide_approval(store, approval.id, approve=True, actor=who)
    assert str(refused.value) == f"{name} cannot decide approval {approval.id}: that needs the approver role"


def test_unknown_approver_is_not_found(store: Store) -> None:
    """Deciding with a Slack id nobody has is NotFound."""
    f.seed(store)
    approval = pending(store)
    with unchanged(store), pytest.raises(NotFound, match="'UNOBODY'"):
        services.decide_approval(store, approval.id, approve=True, actor="UNOBODY")


def test_unknown_approval_is_not_found(store: Store) -> None:
    """Deciding an approval id that does not exist is NotFound."""
    f.seed(store)
    pending(store)
    with unchanged(store), pytest.raises(NotFound, match="there is no approval 999"):
        services.decide_approval(store, 999, approve=True, actor=APPROVER)


def test_amount_above_the_limit_is_refused(store: Store) -> None:
    """Carol's limit is 500.00 EUR: 500.01 EUR is refused, naming amount and limit."""
    f.seed(store)
    approval = pending(store, f.euros("500.01"))
    with unchanged(store), pytest.raises(PermissionDenied) as refused:
        services.decide_approval(store, approval.id, approve=True, actor=APPROVER)
    assert str(refused.value) == "500.01 EUR is above the approval limit of Carol Approver (UAPPROVE) (500.00 EUR)"


@pytest.mark.parametrize("approve", [True, False])
def test_amount_exactly_at_the_limit_is_allowed(store: Store, approve: bool) -> None:
    """Exactly 500.00 EUR is within Carol's limit, for approving and for rejecting."""
    f.seed(store)
    approval = pending(store, f.euros("500.00"))
    decided = services.decide_approval(store, approval.id, approve=approve, note="Checked", actor=APPROVER)
    assert (decided.status, decided.decided_by) == ("approved" if approve else "rejected", APPROVER)


def test_a_higher_limit_decides_what_a_lower_cannot(store: Store) -> None:
    """Dave (limit 10000.00 EUR, approver without the agent role) approves the 500.01 EUR Carol could not."""
    f.seed(store)
    approval = pending(store, f.euros("500.01"))
    decided = services.decide_approval(store, approval.id, approve=True, actor=BIG_APPROVER)
    assert (decided.status, decided.decided_by) == ("approved", BIG_APPROVER)
    assert status_of(store, approval.request_key) == "assigned"


def test_limit_lowered_after_the_request_applies_at_decision(store: Store) -> None:
    """The limit is read when deciding: lowering Carol's limit to 100.00 refuses a 120.00 approval asked earlier."""
    f.seed(store)
    approval = pending(store, f.euros("120.00"))
    services.import_agents(store, f.AGENTS_CSV.replace("agent;approver,500.00,EUR", "agent;approver,100.00,EUR"))
    with unchanged(store), pytest.raises(PermissionDenied, match=r"above the approval limit .*\(100.00 EUR\)"):
        services.decide_approval(store, approval.id, approve=True, actor=APPROVER)


def test_eur_approver_cannot_decide_a_usd_approval(store: Store) -> None:
    """Carol's limit is in EUR, so she cannot decide 10.00 USD, however small."""
    f.seed(store)
    approval = pending(store, parse_amount("10.00", "USD"))
    with unchanged(store), pytest.raises(PermissionDenied) as refused:
        services.decide_approval(store, approval.id, approve=True, actor=APPROVER)
    assert str(refused.value) == "Carol Approver (UAPPROVE) has no approval limit in USD, so cannot decide 10.00 USD"


def test_usd_approver_cannot_decide_an_eur_approval(store: Store) -> None:
    """Erin's limit is in USD, so she cannot decide EUR."""
    f.seed(store)
    approval = pending(store, f.euros("10.00"))
    with unchanged(store), pytest.raises(PermissionDenied, match="has no approval limit in EUR"):
        services.decide_approval(store, approval.id, approve=True, actor=USD_APPROVER)


def test_usd_approver_decides_a_usd_approval_on_a_usd_invoice(store: Store) -> None:
    """Control: Erin approves a USD credit on a request about the USD invoice INV-101."""
    f.seed(store)
    key = assigned_request(store, invoice="INV-101")
    approval = ask(store, key, parse_amount("80.00", "USD"), kind="refund")
    decided = services.decide_approval(store, approval.id, approve=True, actor=USD_APPROVER)
    assert (decided.status, decided.amount_minor, decided.currency) == ("approved", 8000, "USD")


# --- never one's own approval, never on a request one holds ----------------------


def test_approver_cannot_decide_an_approval_they_asked_for(store: Store) -> None:
    """Carol (agent and approver) asks for a credit on Alice's request; she cannot decide it, Dave can."""
    f.seed(store)
    approval = pending(store, actor=APPROVER)
    with unchanged(store), pytest.raises(PermissionDenied) as refused:
        services.decide_approval(store, approval.id, approve=True, actor=APPROVER)
    assert str(refused.value) == f"Carol Approver (UAPPROVE) asked for approval {approval.id} and cannot decide it"
    assert services.decide_approval(store, approval.id, approve=True, actor=BIG_APPROVER).status == "approved"


def test_approver_cannot_decide_on_a_request_they_are_assigned_to(store: Store) -> None:
    """Carol holds the request and Alice asks: Carol cannot decide until the request is handed to someone else."""
    f.seed(store)
    key = assigned_request(store, assignee=APPROVER)
    approval = ask(store, key, f.euros("50.00"), actor=AGENT)
    with unchanged(store), pytest.raises(PermissionDenied) as refused:
        services.decide_approval(store, approval.id, approve=True, actor=APPROVER)
    assert str(refused.value) == (
        f"Carol Approver (UAPPROVE) is assigned to {key} and cannot decide its approval {approval.id}")
    services.assign(store, key, to=AGENT2, actor=AGENT)
    assert services.decide_approval(store, approval.id, approve=True, actor=APPROVER).status == "approved"


def test_handing_a_pending_request_to_the_approver_blocks_their_decision(store: Store) -> None:
    """The assignee is checked at decision time: reassigning to Carol after the ask takes the decision from her."""
    f.seed(store)
    approval = pending(store)
    services.assign(store, approval.request_key, to=APPROVER, actor=AGENT)
    with unchanged(store), pytest.raises(PermissionDenied, match="is assigned to"):
        services.decide_approval(store, approval.id, approve=False, note="No", actor=APPROVER)


# --- KYC -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "match"),
    [
        ("ops@pending.test", "customer C-PEND has KYC status pending, and adjustments need a verified customer"),
        ("ar@failed.test", "customer C-FAIL has KYC status failed, and adjustments need a verified customer"),
        ("someone@gmail.test", "it is not linked to a customer"),
    ],
)
def test_asking_for_an_adjustment_needs_a_verified_customer(store: Store, sender: str, match: str) -> None:
    """A credit cannot even be asked for unless the request's customer is KYC verified."""
    f.seed(store)
    key = assigned_request(store, sender=sender)
    with unchanged(store), pytest.raises(PermissionDenied, match=f"^cannot ask for a credit on {key}: {match}"):
        ask(store, key, f.euros("10.00"))
    assert status_of(store, key) == "assigned"


def test_asking_becomes_possible_once_the_customer_is_verified(store: Store) -> None:
    """Control: after C-PEND is re-imported as verified, the same ask succeeds."""
    f.seed(store)
    key = assigned_request(store, sender="ops@pending.test")
    set_kyc(store, "C-PEND", "verified")
    assert ask(store, key, f.euros("10.00")).status == "pending"


@pytest.mark.parametrize("kyc", ["pending", "failed", "unknown"])
def test_approving_needs_the_customer_still_verified(store: Store, kyc: str) -> None:
    """KYC is checked again at decision: a customer re-imported as not verified blocks the approval."""
    f.seed(store)
    approval = pending(store)
    set_kyc(store, "C-VER", kyc)
    with unchanged(store), pytest.raises(PermissionDenied) as refused:
        services.decide_approval(store, approval.id, approve=True, actor=APPROVER)
    assert str(refused.value) == (
        f"cannot approve a credit on {approval.request_key}: customer C-VER has KYC status {kyc}, "
        "and adjustments need a verified customer")
    assert status_of(store, approval.request_key) == "pending_approval"


def test_a_request_whose_customer_lost_kyc_can_still_be_rejected(store: Store) -> None:
    """Rejecting moves no money: it must stay possible, or the request is stuck in pending_approval for good."""
    f.seed(store)
    approval = pending(store)
    set_kyc(store, "C-VER", "failed")
    decided = services.decide_approval(store, approval.id, approve=False, note="KYC failed", actor=APPROVER)
    assert decided.status == "rejected"
    assert status_of(store, approval.request_key) == "assigned"


def test_pending_approval_blocks_resolving_and_relinking_the_customer(store: Store) -> None:
    """Why the bug above traps the request: while the approval is pending it can be neither resolved nor relinked."""
    f.seed(store)
    approval = pending(store)
    key = approval.request_key
    set_kyc(store, "C-VER", "failed")
    with unchanged(store):
        with pytest.raises(TransitionRefused, match="an approval is still pending"):
            services.resolve(store, key, note="Give up", actor=AGENT)
        with pytest.raises(TransitionRefused, match=f"{key} has a pending approval; its customer cannot change now"):
            services.link_customer(store, key, "C-PEND", actor=AGENT)


# --- the decision itself ------------------------------------------------------------


@pytest.mark.parametrize("note", [None, "", "   "])
def test_a_rejection_needs_a_reason(store: Store, note: str | None) -> None:
    """Rejecting without a reason is InvalidInput and changes nothing."""
    f.seed(store)
    approval = pending(store)
    with unchanged(store), pytest.raises(InvalidInput, match="a rejection needs a reason"):
        services.decide_approval(store, approval.id, approve=False, note=note, actor=APPROVER)


def test_an_approval_needs_no_note(store: Store) -> None:
    """Approving without a note is fine; the note stays empty."""
    f.seed(store)
    approval = pending(store)
    decided = services.decide_approval(store, approval.id, approve=True, note="  ", actor=APPROVER)
    assert (decided.status, decided.decision_note) == ("approved", None)


@pytest.mark.parametrize(("first", "second_approve", "second_actor"),
                         [(True, False, BIG_APPROVER), (False, True, BIG_APPROVER), (True, True, APPROVER)])
def test_a_decided_approval_cannot_be_decided_again(
    store: Store, clock: FixedClock, first: bool, second_approve: bool, second_actor: str
) -> None:
    """The second decision is a Conflict that names who decided first, how and when."""
    f.seed(store)
    approval = pending(store)
    clock.advance(timedelta(hours=1, minutes=2, seconds=3))
    services.decide_approval(store, approval.id, approve=first, note="Checked", actor=APPROVER)
    clock.advance(timedelta(minutes=1))
    with unchanged(store), pytest.raises(Conflict) as refused:
        services.decide_approval(store, approval.id, approve=second_approve, note="Late", actor=second_actor)
    verdict = "approved" if first else "rejected"
    assert str(refused.value) == (
        f"approval {approval.id} on {approval.request_key} was already {verdict} by Carol Approver (UAPPROVE) "
        "at 2026-01-05 10:02:03 UTC")


def test_an_approver_cannot_decide_on_a_request_they_opened(store: Store) -> None:
    """Separation of duties: whoever logged the request for the customer cannot approve its money."""
    f.seed(store)
    key = f.open_request(store, sender="billing@acme.test", actor=APPROVER).key
    services.claim(store, key, actor=AGENT)
    approval = services.request_approval(store, key, kind="refund", amount=f.euros("40"), reason="dup",
                                         actor=AGENT)
    with unchanged(store), pytest.raises(PermissionDenied) as refused:
        services.decide_approval(store, approval.id, approve=True, actor=APPROVER)
    assert str(refused.value) == (
        f"Carol Approver (UAPPROVE) opened {key} and cannot decide its approval {approval.id}")
    assert services.decide_approval(store, approval.id, approve=True, actor=BIG_APPROVER).status == "approved"
