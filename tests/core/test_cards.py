"""What the Slack cards read: request and approval cards from the real store, on SQLite and PostgreSQL.

Each card is built by the real services (open, claim, reply, approve …) and
then read back; the expectations are what an agent or an approver must see.
Reading a card changes nothing and costs the same few queries however long
the request's history is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import event, select

from core import services
from core.clock import FixedClock
from core.errors import InvalidInput, NotFound
from core.models import Request
from core.money import Money
from core.services import InboundMail, cards
from core.services.cards import approval_card, request_card
from core.store import Store
from core.views import AdjustmentLine, ApprovalView, ChangeView, CustomerRef, InvoiceRef, RequestCard
from tests import factories as f
from tests.core.snapshots import unchanged

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
ACME = CustomerRef("C-VER", "Acme Verified Ltd", "verified")
INV_100 = InvoiceRef("INV-100", "C-VER", 120000, "EUR", date(2026, 1, 1), date(2026, 1, 31), "open")
OTHER_CUSTOMER_CSV = "external_ref,name,emails,domains,kyc_status\nC-TWO,Two Ltd,,two.test,verified\n"


def mail(message_id: str, *, sender: str = "jane@acme.test", subject: str = "Charged twice for INV-100",
         body: str = "Please refund the second charge.", auth: str | None = "pass",
         flags: tuple[str, ...] = ()) -> InboundMail:
    return InboundMail(from_address=sender, subject=subject, body_text=body, message_id=message_id,
                       auth_verdict=auth, flags=flags)


def mailed_request(store: Store, *, flags: tuple[str, ...] = ()) -> str:
    """A request opened by the e-mail of Jane at Acme (customer C-VER) about INV-100, 150.00 EUR disputed."""
    opened = services.open_request(store, channel="email", mail=mail("<first@acme.test>", flags=flags),
                                   invoice_number="INV-100", disputed=f.euros("150.00"))
    return opened.key


def stored_sla(store: Store, key: str) -> tuple[datetime | None, ...]:
    """The SLA columns as stored on the request row: what the card must repeat."""
    with store.read() as session:
        row = session.execute(select(Request).where(Request.number == int(key[3:]))).scalar_one()
        return (row.first_response_due_at, row.first_response_at, row.next_reply_due_at, row.resolution_due_at)


def sla_of(card: RequestCard) -> tuple[datetime | None, ...]:
    return (card.first_response_due_at, card.first_response_at, card.next_reply_due_at, card.resolution_due_at)


@contextmanager
def counted_selects(store: Store) -> Iterator[list[str]]:
    """The SELECT statements the block sends to the database."""
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)


# --- the request card ------------------------------------------------------------


def test_a_new_mailed_request_shows_everything_triage_needs(store: Store) -> None:
    """Customer with KYC, invoice and disputed amount, the first mail's verdict and flags, the clocks, who opened it."""
    f.seed(store)
    key = mailed_request(store, flags=("amount_not_used",))

    card = request_card(store, key)

    assert (card.key, card.subject, card.status, card.channel) == (key, "Charged twice for INV-100", "new", "email")
    assert (card.category, card.priority, card.requester) == ("billing_dispute", "normal", "jane@acme.test")
    assert card.customer == ACME
    assert card.invoice == INV_100
    assert (card.disputed_amount_minor, card.disputed_currency) == (15000, "EUR")
    assert (card.sender_auth, card.sender_flags) == ("pass", ("amount_not_used",))
    assert (card.assignee, card.assignee_name) == (None, None)
    assert sla_of(card) == stored_sla(store, key)
    assert card.first_response_due_at is not None and card.resolution_due_at is not None
    assert (card.sla_paused, card.pending_approvals, card.reopen_count) == (False, 0, 0)
    assert (card.merged_into, card.follows_up, card.resolution_note) == (None, None, None)
    assert (card.created_at, card.updated_at, card.resolved_at, card.closed_at) == (T0, T0, None, None)
    assert card.last_change == ChangeView("request.opened", "customer:jane@acme.test", None, T0)


def test_the_verdict_is_the_first_inbound_messages_not_the_latest(store: Store, clock: FixedClock) -> None:
    """A later unauthenticated reply does not change whether the request itself came from the customer."""
    f.seed(store)
    key = mailed_request(store)
    clock.advance(timedelta(minutes=5))
    services.add_inbound_message(store, key, mail("<second@acme.test>", auth="fail", flags=("unverified_sender",)))

    card = request_card(store, key)

    assert (card.sender_auth, card.sender_flags) == ("pass", ())
    assert card.last_change == ChangeView("message.inbound", "customer:jane@acme.test", None, T0 + timedelta(minutes=5))


def test_a_request_an_agent_logged_has_no_verdict_and_names_the_agent(store: Store) -> None:
    """Opened on the command line: no sender authentication to show; the last change names the agent."""
    f.seed(store)
    key = f.open_request(store, sender="someone@elsewhere.test").key

    card = request_card(store, key)

    assert (card.channel, card.customer, card.invoice, card.disputed_amount_minor) == ("cli", None, None, None)
    assert (card.sender_auth, card.sender_flags) == (None, ())
    assert card.last_change == ChangeView("request.opened", "agent:UAGENT1", "Alice Agent", T0)


def test_a_claimed_request_names_its_assignee_and_who_claimed_it(store: Store, clock: FixedClock) -> None:
    f.seed(store)
    key = mailed_request(store)
    clock.advance(timedelta(minutes=3))
    services.claim(store, key, actor=f.AGENT2)

    card = request_card(store, key)

    assert (card.status, card.assignee, card.assignee_name) == ("assigned", "UAGENT2", "Bob Agent")
    assert card.last_change == ChangeView("request.claimed", "agent:UAGENT2", "Bob Agent", T0 + timedelta(minutes=3))
    assert card.updated_at == T0 + timedelta(minutes=3)


def test_waiting_on_the_customer_pauses_the_clock(store: Store) -> None:
    f.seed(store)
    key = mailed_request(store)
    services.claim(store, key, actor=f.AGENT)
    services.wait_on_customer(store, key, actor=f.AGENT)

    card = request_card(store, key)

    assert (card.status, card.sla_paused) == ("waiting_on_customer", True)
    assert sla_of(card) == stored_sla(store, key)


def test_a_reply_and_the_customers_answer_move_the_clocks(store: Store, clock: FixedClock) -> None:
    """First response met, a next-reply clock running: the card repeats the stored columns."""
    f.seed(store)
    key = mailed_request(store)
    services.claim(store, key, actor=f.AGENT)
    clock.advance(timedelta(hours=1))
    services.reply(store, key, "We are looking into it.", actor=f.AGENT)
    clock.advance(timedelta(hours=1))
    services.add_inbound_message(store, key, mail("<third@acme.test>"))

    card = request_card(store, key)

    assert card.first_response_at == T0 + timedelta(hours=1)
    assert card.next_reply_due_at is not None
    assert sla_of(card) == stored_sla(store, key)


def test_a_pending_approval_is_counted(store: Store) -> None:
    f.seed(store)
    key = mailed_request(store)
    services.claim(store, key, actor=f.AGENT)
    services.request_approval(store, key, kind="credit", amount=f.euros("100.00"), reason="Double charge", actor=f.AGENT)

    card = request_card(store, key)

    assert (card.status, card.pending_approvals) == ("pending_approval", 1)
    assert card.last_change is not None and card.last_change.kind == "approval.requested"


def test_a_resolved_request_shows_its_note(store: Store, clock: FixedClock) -> None:
    f.seed(store)
    key = mailed_request(store)
    services.claim(store, key, actor=f.AGENT)
    clock.advance(timedelta(hours=2))
    services.resolve(store, key, note="Refunded the second charge.", actor=f.AGENT)

    card = request_card(store, key)

    assert (card.status, card.resolution_note, card.resolved_at) == (
        "resolved", "Refunded the second charge.", T0 + timedelta(hours=2))
    assert card.last_change == ChangeView("request.resolved", "agent:UAGENT1", "Alice Agent", T0 + timedelta(hours=2))


def test_a_merged_request_names_the_survivor_and_the_survivor_says_so(store: Store) -> None:
    f.seed(store)
    survivor = f.open_request(store, subject="First").key
    duplicate = f.open_request(store, subject="Same again").key
    services.merge(store, duplicate, into=survivor, actor=f.AGENT)

    merged, target = request_card(store, duplicate), request_card(store, survivor)

    assert (merged.status, merged.merged_into, merged.closed_at) == ("closed", survivor, T0)
    assert target.merged_into is None
    assert target.last_change == ChangeView("request.merge_received", "agent:UAGENT1", "Alice Agent", T0)


def test_a_reply_to_a_closed_request_opens_a_follow_up_that_points_back(store: Store) -> None:
    f.seed(store)
    old = mailed_request(store)
    services.claim(store, old, actor=f.AGENT)
    services.resolve(store, old, note="Done", actor=f.AGENT)
    services.close(store, old, actor=f.AGENT)
    new = services.add_inbound_message(store, old, mail("<later@acme.test>", subject="Still charged twice")).key

    card = request_card(store, new)

    assert new != old
    assert (card.follows_up, card.status, card.subject) == (old, "new", "Still charged twice")
    assert card.customer == ACME


def test_an_unknown_or_malformed_key_is_refused_clearly(store: Store) -> None:
    with pytest.raises(NotFound, match="there is no request SR-99"):
        request_card(store, "SR-99")
    with pytest.raises(InvalidInput, match="is not a request key like SR-12"):
        request_card(store, "ticket 7")


def test_reading_a_card_writes_nothing(store: Store) -> None:
    """No row, no audit event, no outbox message: looking is not a change."""
    f.seed(store)
    key = mailed_request(store)
    services.claim(store, key, actor=f.AGENT)
    approval = services.request_approval(store, key, kind="refund", amount=f.euros("20.00"), reason="x", actor=f.AGENT)
    with unchanged(store):
        request_card(store, key)
        approval_card(store, approval.id)


def test_a_request_card_costs_the_same_few_queries_however_long_its_history(store: Store) -> None:
    """No query per message, event or approval: a busy request reads like a fresh one."""
    f.seed(store)
    quiet, busy = f.open_request(store).key, f.open_request(store).key
    services.claim(store, busy, actor=f.AGENT)
    for n in range(6):
        services.add_note(store, busy, f"Note {n}", actor=f.AGENT)
        services.add_inbound_message(store, busy, mail(f"<busy-{n}@acme.test>"))
        services.reply(store, busy, f"Answer {n}", actor=f.AGENT)
        approval = services.request_approval(store, busy, kind="credit", amount=f.euros("1.00"), reason="r",
                                              actor=f.AGENT)
        services.decide_approval(store, approval.id, approve=False, note="no", actor=f.APPROVER)

    with counted_selects(store) as fresh:
        request_card(store, quiet)
    with counted_selects(store) as long:
        request_card(store, busy)

    assert len(long) == len(fresh) <= 5


# --- the approval card --------------------------------------------------------------


def claimed(store: Store, *, sender: str = "jane@acme.test", invoice: str | None = "INV-100",
            disputed: str | None = "150.00") -> str:
    key = f.open_request(store, sender=sender, invoice=invoice, disputed=disputed).key
    services.claim(store, key, actor=f.AGENT)
    return key


def ask(store: Store, key: str, amount: str, *, kind: str = "credit", reason: str = "Charged twice") -> ApprovalView:
    return services.request_approval(store, key, kind=kind, amount=f.euros(amount), reason=reason, actor=f.AGENT)


def test_a_pending_approval_shows_its_evidence(store: Store) -> None:
    """Request, invoice, disputed vs requested, KYC, who asks and why; no earlier adjustments yet."""
    f.seed(store)
    key = claimed(store)
    asked = ask(store, key, "120.00", reason="Charged twice in January")

    card = approval_card(store, asked.id)

    assert (card.id, card.kind, card.amount_minor, card.currency) == (asked.id, "credit", 12000, "EUR")
    assert (card.reason, card.status) == ("Charged twice in January", "pending")
    assert (card.requested_by, card.requested_by_name, card.requested_at) == ("UAGENT1", "Alice Agent", T0)
    assert (card.decided_by, card.decided_by_name, card.decided_at, card.decision_note) == (None, None, None, None)
    assert (card.request_key, card.request_subject) == (key, "Charged twice")
    assert card.customer == ACME
    assert card.invoice == INV_100
    assert (card.disputed_amount_minor, card.disputed_currency) == (15000, "EUR")
    assert card.adjustments_since == T0 - timedelta(days=90)
    assert (card.recent_adjustments, card.recent_adjustment_count) == ((), 0)


@pytest.mark.parametrize("approve, status", [(True, "approved"), (False, "rejected")])
def test_a_decided_approval_says_who_decided_when_and_why(store: Store, clock: FixedClock, approve: bool,
                                                          status: str) -> None:
    f.seed(store)
    asked = ask(store, claimed(store), "80.00")
    clock.advance(timedelta(minutes=7))
    services.decide_approval(store, asked.id, approve=approve, note="Checked the bank statement", actor=f.APPROVER)

    card = approval_card(store, asked.id)

    assert card.status == status
    assert (card.decided_by, card.decided_by_name, card.decided_at, card.decision_note) == (
        "UAPPROVE", "Carol Approver", T0 + timedelta(minutes=7), "Checked the bank statement")


def test_the_kyc_status_is_the_customers_now(store: Store) -> None:
    """Approving re-checks KYC at click time, so the card shows today's status, not the one when asked."""
    f.seed(store)
    asked = ask(store, claimed(store), "10.00")
    services.import_customers(store, f.CUSTOMERS_CSV.replace("acme.test,verified", "acme.test,pending"))

    assert approval_card(store, asked.id).customer == replace(ACME, kyc_status="pending")


def test_the_evidence_is_the_customers_adjustments_of_the_90_days_before(store: Store, clock: FixedClock) -> None:
    """Earlier ones of the same customer within 90 days, newest first; not older, not later, not another customer's."""
    f.seed(store)
    services.import_customers(store, OTHER_CUSTOMER_CSV)
    day = timedelta(days=1)

    too_old = ask(store, claimed(store), "11.00")  # 91 days before the one on the card
    services.decide_approval(store, too_old.id, approve=True, actor=f.APPROVER)
    clock.advance(day)
    edge_key = claimed(store)
    edge = ask(store, edge_key, "12.00", kind="refund")  # exactly 90 days before
    services.decide_approval(store, edge.id, approve=True, note="ok", actor=f.APPROVER)
    clock.advance(30 * day)
    rejected_key = claimed(store)
    rejected = ask(store, rejected_key, "13.00", kind="write_off")
    services.decide_approval(store, rejected.id, approve=False, note="no", actor=f.APPROVER)
    still_pending_key = claimed(store)
    still_pending = ask(store, still_pending_key, "14.00")
    ask(store, claimed(store, sender="ap@two.test", invoice=None, disputed=None), "15.00")  # another customer
    clock.set(T0 + 91 * day)
    on_card_key = claimed(store)
    on_card = ask(store, on_card_key, "16.00")
    later = ask(store, claimed(store), "17.00")  # same moment, asked after: not evidence for the one before

    card = approval_card(store, on_card.id)

    assert card.adjustments_since == T0 + day
    assert card.recent_adjustments == (
        AdjustmentLine(still_pending.id, still_pending_key, "credit", 1400, "EUR", "pending", T0 + 31 * day, None),
        AdjustmentLine(rejected.id, rejected_key, "write_off", 1300, "EUR", "rejected", T0 + 31 * day,
                       T0 + 31 * day),
        AdjustmentLine(edge.id, edge_key, "refund", 1200, "EUR", "approved", T0 + day, T0 + day),
    )
    assert card.recent_adjustment_count == 3
    assert [line.approval_id for line in approval_card(store, later.id).recent_adjustments] == [
        on_card.id, still_pending.id, rejected.id, edge.id]


def test_beyond_a_page_of_adjustments_the_card_counts_the_rest(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    f.seed(store)
    monkeypatch.setattr(cards, "ADJUSTMENT_PAGE", 3)
    earlier = []
    key = claimed(store)
    for amount in ("1.00", "2.00", "3.00", "4.00", "5.00"):
        approval = ask(store, key, amount)
        services.decide_approval(store, approval.id, approve=True, actor=f.APPROVER)
        earlier.append(approval.id)
    last = ask(store, key, "6.00")

    card = approval_card(store, last.id)

    assert [line.approval_id for line in card.recent_adjustments] == earlier[:1:-1]
    assert card.recent_adjustment_count == 5


def test_an_approval_card_costs_the_same_few_queries_however_many_adjustments(store: Store) -> None:
    f.seed(store)
    first = ask(store, claimed(store), "1.00")
    services.decide_approval(store, first.id, approve=True, actor=f.APPROVER)
    for n in range(12):
        approval = ask(store, claimed(store), f"{n + 2}.00")
        services.decide_approval(store, approval.id, approve=n % 2 == 0, note="r", actor=f.APPROVER)
    last = ask(store, claimed(store), "99.00")

    with counted_selects(store) as few:
        approval_card(store, first.id)
    with counted_selects(store) as many:
        card = approval_card(store, last.id)

    assert card.recent_adjustment_count == 13
    assert len(many) == len(few) <= 3


def test_an_unknown_approval_is_refused_clearly(store: Store) -> None:
    with pytest.raises(NotFound, match="there is no approval 999"):
        approval_card(store, 999)


def test_money_is_never_a_float(store: Store) -> None:
    """Amounts stay integer minor units with their currency, exactly as stored."""
    f.seed(store)
    card = approval_card(store, ask(store, claimed(store), "0.10").id)
    assert Money(card.amount_minor, card.currency) == Money(10, "EUR")
    assert isinstance(card.amount_minor, int) and isinstance(card.disputed_amount_minor, int)
