"""What an agent's App Home reads: the real store on SQLite and PostgreSQL, filled by the real services.

The queue must put what burns first, the approvals must be exactly those
core would let the agent approve at click time (checked by trying every
other one and being refused), and the team figures must be the numbers of
``compute_metrics`` for today: the Home tab may never contradict a card, a
click or ``supportdesk metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, select, update

from core import services
from core.clock import FixedClock
from core.errors import PermissionDenied
from core.metrics import compute_metrics
from core.models import Agent, Approval
from core.money import Money, parse_amount
from core.services import InboundMail
from core.services.home import APPROVALS_SHOWN, QUEUE_SHOWN, agent_home, today_period
from core.store import Store
from core.views import AgentHome
from tests import factories as f

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)  # a Monday; the business calendar opens at 09:00
SECOND_CUSTOMER_CSV = "external_ref,name,emails,domains,kyc_status\nC-TWO,Two Ltd,,two.test,verified\n"


def opened(store: Store, subject: str, *, priority: str = "normal", sender: str = "jane@acme.test",
           actor: str | None = f.AGENT) -> str:
    """A request opened on the command line by ``actor`` (or by mail when None)."""
    channel = "cli" if actor else "email"
    return services.open_request(store, channel=channel, priority=priority, actor=actor,
                                 mail=InboundMail(from_address=sender, subject=subject, body_text="Please help.")).key


def claimed(store: Store, subject: str, *, by: str = f.AGENT, **kwargs: object) -> str:
    key = opened(store, subject, **kwargs)  # type: ignore[arg-type]
    services.claim(store, key, actor=by)
    return key


def home_of(store: Store, user: str) -> AgentHome:
    home = agent_home(store, user)
    assert home is not None, f"{user} has no home"
    return home


@contextmanager
def counted_selects(store: Store) -> Iterator[list[str]]:
    statements: list[str] = []

    def seen(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)


# --- who has a home --------------------------------------------------------------------------


def test_someone_not_in_the_directory_or_deactivated_has_no_home(store: Store) -> None:
    f.seed(store)
    assert agent_home(store, "U0NOBODY1") is None
    assert agent_home(store, "") is None
    assert home_of(store, f.AGENT2).agent.slack_user_id == f.AGENT2
    with store.engine.begin() as conn:
        conn.execute(update(Agent).where(Agent.slack_user_id == f.AGENT2).values(active=False))
    assert agent_home(store, f.AGENT2) is None


# --- my queue --------------------------------------------------------------------------------


def test_the_queue_is_mine_and_open_breached_first_then_nearest_due_then_oldest(store: Store,
                                                                               clock: FixedClock) -> None:
    f.seed(store)
    # Due times on the business calendar (Mon-Fri 09:00-17:00 UTC), opened Monday 09:00:
    normal = claimed(store, "normal: first response due 17:00")
    low = claimed(store, "low: first response due Wednesday 17:00", priority="low")
    urgent = claimed(store, "urgent: first response due 10:00", priority="urgent")
    high = claimed(store, "high: first response due 13:00", priority="high")
    answered = claimed(store, "answered: only the resolution runs, due Jan 15")
    services.reply(store, answered, "We are on it.", actor=f.AGENT)
    waiting_old = claimed(store, "waiting on the customer since 09:00")
    services.wait_on_customer(store, waiting_old, actor=f.AGENT)
    resolved = claimed(store, "resolved")
    services.resolve(store, resolved, note="Done", actor=f.AGENT)
    dismissed = claimed(store, "dismissed")
    services.dismiss(store, dismissed, actor=f.AGENT)
    claimed(store, "Bob's", by=f.AGENT2, priority="urgent")
    opened(store, "nobody's yet", priority="urgent")

    clock.set(T0 + timedelta(minutes=30))
    later_urgent = claimed(store, "urgent opened 09:30: due 10:30", priority="urgent")
    waiting_new = claimed(store, "waiting on the customer since 09:30")
    services.wait_on_customer(store, waiting_new, actor=f.AGENT)

    clock.set(T0 + timedelta(hours=2))
    home = home_of(store, f.AGENT)

    assert [item.key for item in home.queue] == [
        urgent, later_urgent,  # breached, the longest overdue first
        high, normal, low, answered,  # by the nearest due time
        waiting_old, waiting_new,  # no running clock: oldest first
    ]
    assert home.queue_total == 8
    assert [item.key for item in home.queue if item.breached] == [urgent, later_urgent]
    by_key = {item.key: item for item in home.queue}
    assert by_key[urgent].next_due_at == T0 + timedelta(hours=1)
    assert by_key[high].next_due_at == T0 + timedelta(hours=4)
    assert by_key[answered].next_due_at == datetime(2026, 1, 15, 17, 0, tzinfo=timezone.utc)
    assert by_key[waiting_old].next_due_at is None and by_key[waiting_old].status == "waiting_on_customer"
    assert (by_key[urgent].subject, by_key[urgent].priority, by_key[urgent].status, by_key[urgent].customer_name) == (
        "urgent: first response due 10:00", "urgent", "assigned", "Acme Verified Ltd")
    assert by_key[urgent].requester == "jane@acme.test"


def test_a_request_without_a_customer_shows_its_requester(store: Store) -> None:
    f.seed(store)
    key = claimed(store, "Who am I?", sender="someone@unknown.test")
    (item,) = home_of(store, f.AGENT).queue
    assert (item.key, item.customer_name, item.requester) == (key, None, "someone@unknown.test")


def test_the_queue_shows_a_page_and_counts_the_rest_in_the_same_queries(store: Store) -> None:
    f.seed(store)
    claimed(store, "the only one", by=f.APPROVER)
    with counted_selects(store) as few:
        home_of(store, f.APPROVER)
    for n in range(QUEUE_SHOWN + 4):
        claimed(store, f"request {n}", by=f.APPROVER)
    for n in range(3):
        ask(store, claimed(store, f"needs money {n}"), "10.00")
    with counted_selects(store) as many:
        home = home_of(store, f.APPROVER)
    assert (len(home.queue), home.queue_total, len(home.approvals)) == (QUEUE_SHOWN, QUEUE_SHOWN + 5, 3)
    assert len(many) == len(few), "reading the home must not cost a query per request or approval"


# --- approvals waiting for me -------------------------------------------------------------------


def ask(store: Store, key: str, amount: str, *, currency: str = "EUR", by: str = f.AGENT) -> int:
    return services.request_approval(store, key, kind="credit", amount=parse_amount(amount, currency),
                                     reason="Charged twice", actor=by).id


@pytest.fixture
def approvals(store: Store, clock: FixedClock) -> dict[str, int]:
    """Pending approvals that Carol (approver, 500.00 EUR) may or may not decide, each for one reason."""
    f.seed(store)
    services.import_customers(store, SECOND_CUSTOMER_CSV)
    found = {
        "ok": ask(store, claimed(store, "Refund the duplicate", actor=None), "100.00"),
        "at_limit": ask(store, claimed(store, "Exactly the limit", actor=None), "500.00"),
        "over_limit": ask(store, claimed(store, "Too much for Carol", actor=None), "500.01"),
        "usd": ask(store, claimed(store, "Dollars", actor=None), "50.00", currency="USD"),
        "asked_by_carol": ask(store, claimed(store, "Carol asked", actor=None), "20.00", by=f.APPROVER),
        "opened_by_carol": ask(store, claimed(store, "Carol opened", actor=f.APPROVER), "20.00"),
        "held_by_carol": ask(store, claimed(store, "Carol holds it", by=f.APPROVER, actor=None), "20.00"),
        "kyc_lapsed": ask(store, claimed(store, "Customer no longer verified", sender="ap@two.test",
                                         actor=None), "20.00"),
    }
    # Decided already: never waiting for anybody.
    decided = ask(store, claimed(store, "Decided", actor=None), "30.00")
    services.decide_approval(store, decided, approve=True, actor=f.BIG_APPROVER)
    services.import_customers(store, SECOND_CUSTOMER_CSV.replace(",verified", ",pending"))
    clock.advance(timedelta(hours=1))
    return found


def test_an_approver_sees_exactly_the_approvals_core_would_let_them_approve(store: Store,
                                                                         approvals: dict[str, int]) -> None:
    carol = home_of(store, f.APPROVER)
    assert carol.decides_approvals and not carol.more_approvals
    assert [a.id for a in carol.approvals] == [approvals["ok"], approvals["at_limit"]]
    first = carol.approvals[0]
    assert (first.kind, first.amount_minor, first.currency, first.request_subject, first.requested_by,
            first.requested_by_name) == ("credit", 10000, "EUR", "Refund the duplicate", f.AGENT, "Alice Agent")
    assert first.request_key.startswith("SR-")

    dave = home_of(store, f.BIG_APPROVER)  # 10,000 EUR, holds and opened nothing
    assert {a.id for a in dave.approvals} == {approvals[k] for k in (
        "ok", "at_limit", "over_limit", "asked_by_carol", "opened_by_carol", "held_by_carol")}
    erin = home_of(store, f.USD_APPROVER)
    assert [a.id for a in erin.approvals] == [approvals["usd"]]


@pytest.mark.parametrize("who", [f.APPROVER, f.BIG_APPROVER, f.USD_APPROVER])
def test_every_approval_left_out_is_refused_at_click_time_and_every_one_listed_goes_through(
        store: Store, approvals: dict[str, int], who: str) -> None:
    listed = {a.id for a in home_of(store, who).approvals}
    with store.read() as session:
        pending = set(session.execute(select(Approval.id).where(Approval.status == "pending")).scalars())
    for approval_id in sorted(pending - listed):
        with pytest.raises(PermissionDenied):
            services.decide_approval(store, approval_id, approve=True, actor=who)
    for approval_id in sorted(listed):
        assert services.decide_approval(store, approval_id, approve=True, actor=who).status == "approved"
    assert home_of(store, who).approvals == ()


def test_people_without_the_approver_role_are_told_so_not_shown_an_empty_list(store: Store,
                                                                             approvals: dict[str, int]) -> None:
    for who in (f.AGENT, f.MANAGER):
        home = home_of(store, who)
        assert not home.decides_approvals and home.approvals == () and not home.more_approvals


def test_a_long_list_of_approvals_shows_the_oldest_page_and_says_there_are_more(store: Store) -> None:
    f.seed(store)
    ids = [ask(store, claimed(store, f"credit {n}", actor=None), "1.00") for n in range(APPROVALS_SHOWN + 2)]
    home = home_of(store, f.APPROVER)
    assert [a.id for a in home.approvals] == ids[:APPROVALS_SHOWN]
    assert home.more_approvals


# --- today's team figures ----------------------------------------------------------------------


def busy_day(store: Store, clock: FixedClock) -> None:
    """Yesterday's leftovers and today's work: answered in and out of SLA, resolved, breached."""
    f.seed(store)
    clock.set(T0 - timedelta(days=3))  # the Friday before
    old = claimed(store, "left over from last week", priority="urgent")
    clock.set(T0)
    fast = claimed(store, "answered in time")
    services.reply(store, fast, "Done.", actor=f.AGENT)
    clock.advance(timedelta(minutes=30))
    services.resolve(store, fast, note="Refunded", actor=f.AGENT)
    slow = claimed(store, "answered late", priority="urgent")
    clock.advance(timedelta(hours=3))
    services.reply(store, slow, "Sorry for the wait.", actor=f.AGENT)
    claimed(store, "not yet answered")
    services.resolve(store, old, note="Finally", actor=f.AGENT)
    clock.advance(timedelta(hours=1))


def test_the_team_figures_are_compute_metrics_for_today(store: Store, clock: FixedClock) -> None:
    busy_day(store, clock)
    home = home_of(store, f.AGENT)
    today = home.today
    report = compute_metrics(store, today_period(store, today.day), now=clock.now()).to_json()

    assert (today.day.isoformat(), today.timezone) == ("2026-01-05", "UTC")
    assert report["period"] == {"since": "2026-01-05T00:00:00Z", "until": "2026-01-06T00:00:00Z", "timezone": "UTC"}
    assert (today.since, today.until) == (T0 - timedelta(hours=9), T0 + timedelta(hours=15))
    assert today.resolved == report["resolution"]["count"] == 2
    assert today.backlog == report["backlog"]["total"] == 2
    assert today.first_responses == report["first_response"]["count"] == 2
    assert today.first_response_median_seconds == report["first_response"]["median_seconds"]
    sla = report["sla_compliance"]
    assert (today.first_response_in_sla.rate, today.first_response_in_sla.numerator,
            today.first_response_in_sla.denominator) == (sla["first_response"]["rate"],
                                                         sla["first_response"]["numerator"],
                                                         sla["first_response"]["denominator"])
    assert today.first_response_in_sla.rate == 0.5
    assert (today.resolution_in_sla.rate, today.resolution_in_sla.numerator,
            today.resolution_in_sla.denominator) == (sla["resolution"]["rate"], sla["resolution"]["numerator"],
                                                     sla["resolution"]["denominator"])
    assert today.open_breaches == sla["breaches_open"]["requests"]
    assert today.opened == 3  # the Friday request is not today's


def test_today_is_the_configured_time_zones_day(store: Store, clock: FixedClock) -> None:
    f.seed(store)
    clock.set(datetime(2026, 1, 4, 12, 0, tzinfo=timezone.utc))  # Sunday in London, already Monday 01:00 in Auckland
    opened(store, "early in Auckland")
    clock.set(T0)  # Monday 09:00 UTC, 22:00 in Auckland
    auckland = Store(store.engine, store.clock, replace(store.settings, timezone="Pacific/Auckland"))
    there, here = home_of(auckland, f.AGENT).today, home_of(store, f.AGENT).today
    assert (there.day.isoformat(), there.timezone, there.opened) == ("2026-01-05", "Pacific/Auckland", 1)
    assert there.since == datetime(2026, 1, 4, 11, 0, tzinfo=timezone.utc)
    assert (here.day.isoformat(), here.opened) == ("2026-01-05", 0)


def test_an_empty_store_has_a_quiet_home(store: Store) -> None:
    f.seed(store)
    home = home_of(store, f.APPROVER)
    assert (home.queue, home.queue_total, home.approvals, home.more_approvals) == ((), 0, (), False)
    today = home.today
    assert (today.opened, today.resolved, today.backlog, today.first_responses, today.open_breaches) == (0, 0, 0, 0, 0)
    assert today.first_response_median_seconds is None and today.first_response_in_sla.rate is None
    assert home.as_of == T0 and home.agent.name == "Carol Approver"


def test_money_in_the_view_is_the_approvals_own(store: Store) -> None:
    f.seed(store)
    key = claimed(store, "Refund", actor=None)
    services.request_approval(store, key, kind="refund", amount=Money(12345, "EUR"), reason="Twice", actor=f.AGENT)
    (waiting,) = home_of(store, f.APPROVER).approvals
    assert (waiting.kind, waiting.amount_minor, waiting.currency, waiting.request_key) == ("refund", 12345, "EUR", key)
