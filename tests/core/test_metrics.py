"""The managers' numbers against a fixed history whose every timestamp is known, on SQLite and PostgreSQL.

The history is made through the real service functions with the fixed clock
set before each call; every expected number below is computed by hand in
the comment next to it. The same expectations hold on both databases, which
is the point: the digest, Slack and the command line must agree wherever
they run.

Percentiles are percentile_cont's: h = p(n-1) over the sorted values,
v[floor h] + (h - floor h)(v[floor h + 1] - v[floor h]); shown values are
rounded half up to whole seconds.
"""

from __future__ import annotations

import json
import random
from datetime import date, datetime, timedelta, timezone
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select, text, update

from core import metrics, services
from core.clock import FixedClock
from core.errors import InvalidInput
from core.lifecycle import DONE_STATES
from core.metrics import Period, compute_metrics, period_from_dates, whole_seconds
from core.models import Event, Request
from core.money import parse_amount
from core.services import InboundMail
from core.store import Store
from tests import factories as f

AGENT, AGENT2, APPROVER = f.AGENT, f.AGENT2, f.APPROVER
UTC = timezone.utc


def at(day: int, hour: int = 0, minute: int = 0, *, month: int = 1, year: int = 2026) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


PERIOD = Period(at(5), at(12))  # Monday 5 January to Sunday 11 January 2026, all days in full
NOW = at(14, 12)  # when the report is computed


# --- the fixed history -------------------------------------------------------------
#
# Letters name requests; Z and N are older than the period, F and N change
# after its end, I and L are opened after it.
#
#   Z email  general          normal  opened Dec 30 09:00, claimed Dec 30 10:00 (AGENT), first reply
#                                      Jan 5 10:30; credit 20 EUR asked Jan 13 11:00, approved 12:00
#   N email  general          normal  opened Dec 31 09:00, claimed 10:00 (AGENT), resolved Jan 2 09:00;
#                                      reopened Jan 13 13:00, resolved again Jan 14 09:00 (nothing in the period)
#   A email  technical        high    opened Jan 5 09:00, claimed 09:30 (AGENT), reply 10:00,
#                                      resolved Jan 6 09:00
#   B cli    billing_dispute  normal  opened Jan 5 12:00 on INV-100 disputing 120 EUR; claimed 13:00
#                                      (AGENT2), reply 14:00, credit 120 EUR asked 15:00, approved
#                                      Jan 6 10:00; resolved Jan 7 12:00
#   C slack  billing_dispute  urgent  opened Jan 6 08:00 disputing 300 EUR; assigned to AGENT 08:15,
#                                      reply 09:00; refund 300 EUR asked 10:00, rejected 11:00;
#                                      resolved 12:00; reopened Jan 8 09:00; resolved Jan 9 12:00;
#                                      reopened Jan 13 10:00 (open now)
#   J email  general          normal  opened Jan 6 09:05, merged into A 09:30 (closed)
#   D email  general          low     opened Jan 7 09:00; claimed Jan 8 09:00 (AGENT2), resolved
#                                      10:00; the customer wrote again Jan 10 09:00 (reopened, open now)
#   K slack  general          low     opened Jan 8 09:00, claimed 09:30 (AGENT), resolved 11:00
#   E email  technical        normal  opened Jan 9 10:00, claimed 10:10 (AGENT), reply 11:00,
#                                      waiting on the customer from 12:00
#   G email  technical        normal  opened Jan 10 09:00, claimed 09:05 (AGENT2), reply 09:20,
#                                      write-off 10 EUR asked 10:00, rejected 11:00; resolved Jan 11
#                                      09:00, closed 10:00
#   H cli    billing_dispute  normal  opened Jan 10 12:00 on INV-101 disputing 50 USD; claimed 12:30
#                                      (AGENT), credit 50 USD asked 13:00, still pending
#   M email  general          normal  opened Jan 11 00:00, untouched (exactly 1 day old at the end)
#   F cli    account          high    opened Jan 11 18:00; claimed Jan 12 08:00 (AGENT), resolved 10:00
#   I email  general          normal  opened Jan 13 09:00, untouched
#   L email  general          normal  opened Jan 14 08:00, untouched


def _mail(subject: str, message_id: str | None = None) -> InboundMail:
    return InboundMail(from_address="jane@acme.test", subject=subject, body_text="Please help.",
                       message_id=message_id)


class History:
    """Drives the services through the fixed history, setting the clock before each call."""

    def __init__(self, store: Store, clock: FixedClock) -> None:
        self.store, self.clock = store, clock
        self.keys: dict[str, str] = {}
        self.approvals: dict[str, int] = {}

    def when(self, moment: datetime) -> History:
        self.clock.set(moment)
        return self

    def open(self, letter: str, channel: str, category: str | None = None, priority: str = "normal",
             actor: str | None = None, invoice: str | None = None, disputed: tuple[str, str] | None = None) -> None:
        view = services.open_request(
            self.store, channel=channel, mail=_mail(f"Request {letter}"), category=category, priority=priority,
            actor=actor, invoice_number=invoice, disputed=parse_amount(*disputed) if disputed else None)
        self.keys[letter] = view.key

    def claim(self, letter: str, agent: str) -> None:
        services.claim(self.store, self.keys[letter], actor=agent)

    def reply(self, letter: str, agent: str) -> None:
        services.reply(self.store, self.keys[letter], "We are on it.", actor=agent)

    def resolve(self, letter: str, agent: str) -> None:
        services.resolve(self.store, self.keys[letter], note="Done.", actor=agent)

    def reopen(self, letter: str, agent: str) -> None:
        services.reopen(self.store, self.keys[letter], actor=agent)

    def ask(self, letter: str, kind: str, amount: str, currency: str, agent: str) -> None:
        view = services.request_approval(self.store, self.keys[letter], kind=kind,
                                         amount=parse_amount(amount, currency), reason="Checked", actor=agent)
        self.approvals[letter] = view.id

    def decide(self, letter: str, approve: bool) -> None:
        services.decide_approval(self.store, self.approvals[letter], approve=approve,
                                 note="Agreed" if approve else "Not justified", actor=APPROVER)


# What the SLA columns hold at the end. The SLA code (written in parallel)
# fills them itself from its policies; the test overwrites every request's
# SLA columns with plain SQL UPDATEs after the last service call, so the
# expectations do not depend on those policies. Unlisted columns are NULL.
SLA_COLUMNS: dict[str, dict[str, Any]] = {
    "A": {"first_response_due_at": at(5, 10), "next_reply_due_at": at(5, 12), "resolution_due_at": at(6, 9),
          "first_response_business_seconds": 3600, "resolution_business_seconds": 28800},
    "B": {"first_response_due_at": at(5, 13), "resolution_due_at": at(6, 12),
          "first_response_business_seconds": 7201, "resolution_business_seconds": 50000},
    "C": {"first_response_due_at": at(6, 12), "next_reply_due_at": at(13, 12), "resolution_due_at": at(10),
          "first_response_business_seconds": 1801, "resolution_business_seconds": 40001},
    "D": {"first_response_due_at": at(7, 17), "resolution_due_at": at(8, 9), "resolution_business_seconds": 12345},
    "E": {"next_reply_due_at": at(16), "resolution_due_at": at(20)},
    "F": {"resolution_business_seconds": 9999},
    "G": {"first_response_due_at": at(10, 10), "resolution_business_seconds": 30001},
    "H": {"first_response_due_at": at(10, 16), "resolution_due_at": at(11, 12)},
    "I": {"first_response_due_at": at(13, 13)},
    "J": {"first_response_due_at": at(6, 13)},
    "K": {"first_response_due_at": at(8, 17), "resolution_due_at": at(8, 10), "resolution_business_seconds": 3001},
    "L": {"first_response_due_at": at(14, 16)},
    "Z": {"first_response_due_at": at(31, 9, month=12, year=2025), "resolution_due_at": at(2, 9)},
}
_SLA_NULLS = dict.fromkeys(("first_response_due_at", "next_reply_due_at", "resolution_due_at",
                            "first_response_business_seconds", "resolution_business_seconds"))


def build_history(store: Store, clock: FixedClock) -> History:
    h = History(store, clock)
    h.when(at(29, 12, month=12, year=2025))
    f.seed(store)
    h.when(at(30, 9, month=12, year=2025)).open("Z", "email", "general")
    h.when(at(30, 10, month=12, year=2025)).claim("Z", AGENT)
    h.when(at(31, 9, month=12, year=2025)).open("N", "email", "general")
    h.when(at(31, 10, month=12, year=2025)).claim("N", AGENT)
    h.when(at(2, 9)).resolve("N", AGENT)
    h.when(at(5, 9)).open("A", "email", "technical", "high")
    h.when(at(5, 9, 30)).claim("A", AGENT)
    h.when(at(5, 10)).reply("A", AGENT)
    h.when(at(5, 10, 30)).reply("Z", AGENT)
    h.when(at(5, 12)).open("B", "cli", actor=AGENT, invoice="INV-100", disputed=("120.00", "EUR"))
    h.when(at(5, 13)).claim("B", AGENT2)
    h.when(at(5, 14)).reply("B", AGENT2)
    h.when(at(5, 15)).ask("B", "credit", "120.00", "EUR", AGENT2)
    h.when(at(6, 8)).open("C", "slack", priority="urgent", actor=AGENT, invoice="INV-100",
                          disputed=("300.00", "EUR"))
    h.when(at(6, 8, 15))
    services.assign(store, h.keys["C"], to=AGENT, actor=AGENT2)
    h.when(at(6, 9)).reply("C", AGENT)
    h.resolve("A", AGENT)
    h.when(at(6, 9, 5)).open("J", "email", "general")
    h.when(at(6, 9, 30))
    services.merge(store, h.keys["J"], into=h.keys["A"], actor=AGENT)
    h.when(at(6, 10)).decide("B", approve=True)
    h.ask("C", "refund", "300.00", "EUR", AGENT)
    h.when(at(6, 11)).decide("C", approve=False)
    h.when(at(6, 12)).resolve("C", AGENT)
    h.when(at(7, 9)).open("D", "email", "general", "low")
    h.when(at(7, 12)).resolve("B", AGENT2)
    h.when(at(8, 9)).claim("D", AGENT2)
    h.reopen("C", AGENT)
    h.open("K", "slack", "general", "low", actor=AGENT2)
    h.when(at(8, 9, 30)).claim("K", AGENT)
    h.when(at(8, 10)).resolve("D", AGENT2)
    h.when(at(8, 11)).resolve("K", AGENT)
    h.when(at(9, 10)).open("E", "email", "technical")
    h.when(at(9, 10, 10)).claim("E", AGENT)
    h.when(at(9, 11)).reply("E", AGENT)
    h.when(at(9, 12))
    services.wait_on_customer(store, h.keys["E"], actor=AGENT)
    h.resolve("C", AGENT)
    h.when(at(10, 9)).open("G", "email", "technical")
    services.add_inbound_message(store, h.keys["D"], _mail("Re: Request D", "<d-again@acme.test>"))
    h.when(at(10, 9, 5)).claim("G", AGENT2)
    h.when(at(10, 9, 20)).reply("G", AGENT2)
    h.when(at(10, 10)).ask("G", "write_off", "10.00", "EUR", AGENT2)
    h.when(at(10, 11)).decide("G", approve=False)
    h.when(at(10, 12)).open("H", "cli", actor=AGENT, invoice="INV-101", disputed=("50.00", "USD"))
    h.when(at(10, 12, 30)).claim("H", AGENT)
    h.when(at(10, 13)).ask("H", "credit", "50.00", "USD", AGENT)
    h.when(at(11)).open("M", "email", "general")
    h.when(at(11, 9)).resolve("G", AGENT2)
    h.when(at(11, 10))
    services.close(store, h.keys["G"], actor=AGENT2)
    h.when(at(11, 18)).open("F", "cli", "account", "high", actor=AGENT2)
    h.when(at(12, 8)).claim("F", AGENT)
    h.when(at(12, 10)).resolve("F", AGENT)
    h.when(at(13, 9)).open("I", "email", "general")
    h.when(at(13, 10)).reopen("C", AGENT)
    h.when(at(13, 11)).ask("Z", "credit", "20.00", "EUR", AGENT)
    h.when(at(13, 12)).decide("Z", approve=True)
    h.when(at(13, 13)).reopen("N", AGENT)
    h.when(at(14, 8)).open("L", "email", "general")
    h.when(at(14, 9)).resolve("N", AGENT)
    h.when(NOW)
    set_sla_columns(store, h.keys, SLA_COLUMNS)
    return h


def set_sla_columns(store: Store, keys: dict[str, str], values: dict[str, dict[str, Any]]) -> None:
    """Plain UPDATEs (see SLA_COLUMNS): every SLA column of every request, NULL unless listed."""
    with store.engine.begin() as conn:
        conn.execute(update(Request).values(**_SLA_NULLS))
        for letter, columns in values.items():
            conn.execute(update(Request).where(Request.number == int(keys[letter][3:])).values(**columns))


@pytest.fixture
def history(store: Store, clock: FixedClock) -> History:
    return build_history(store, clock)


def report(store: Store, period: Period = PERIOD, by: str | None = None, now: datetime = NOW) -> dict[str, Any]:
    result = compute_metrics(store, period, by=by, now=now).to_json()
    json.dumps(result)  # plain JSON: no Fraction, Decimal or datetime left in it
    return result


def groups(result: dict[str, Any]) -> dict[Any, dict[str, Any]]:
    return {g["key"]: g for g in result["groups"]}


def rate(numerator: int, denominator: int, shown: float | None) -> dict[str, Any]:
    return {"rate": shown, "numerator": numerator, "denominator": denominator}


# --- every metric over the period, by hand ----------------------------------------


def test_first_response_time(store: Store, history: History) -> None:
    # First replies in the period: Z 6d 1h30m = 523800, A 3600, B 7200, C 3600, E 3600, G 1200.
    # Sorted 1200 3600 3600 3600 7200 523800: median h=2.5 -> 3600; p90 h=4.5 -> 7200 + .5(516600) = 265500.
    # Business seconds only for A 3600, B 7201, C 1801: median 3600; p90 h=1.8 -> 3600 + .8(3601) = 6480.8 -> 6481.
    assert report(store)["first_response"] == {
        "count": 6, "median_seconds": 3600, "p90_seconds": 265500,
        "business_count": 3, "business_median_seconds": 3600, "business_p90_seconds": 6481,
    }


def test_requests_opened(store: Store, history: History) -> None:
    # Opened in the period: A B C J D K E G H M F (Z and N before it, I and L after it).
    assert report(store)["opened"] == 11
    by_category = {key: g["opened"] for key, g in groups(report(store, by="category")).items()}
    assert by_category == {"technical": 3, "billing_dispute": 3, "general": 4, "account": 1}


def test_time_to_claim(store: Store, history: History) -> None:
    # First assignments in the period: A 1800, B 3600, C 900, D 86400, K 1800, E 600, G 300, H 1800
    # (Z was claimed before it, F after it). Sorted 300 600 900 1800 1800 1800 3600 86400:
    # median h=3.5 -> 1800; p90 h=6.3 -> 3600 + .3(82800) = 28440.
    assert report(store)["time_to_claim"] == {"count": 8, "median_seconds": 1800, "p90_seconds": 28440}


def test_resolution_time_uses_the_latest_resolution_in_the_period(store: Store, history: History) -> None:
    # Resolved in the period: A 86400, B 172800, C (latest, Jan 9 12:00) 273600, D 90000, K 7200, G 86400;
    # F was resolved after the period. Sorted 7200 86400 86400 90000 172800 273600:
    # median (86400 + 90000) / 2 = 88200; p90 h=4.5 -> 172800 + .5(100800) = 223200; mean 716400 / 6 = 119400.
    # Business only where that resolution is still current: A 28800, B 50000, G 30001, K 3001 (C and D were
    # reopened since). Median (28800 + 30001) / 2 = 29400.5 -> 29401; p90 h=2.7 -> 30001 + .7(19999) = 44000.3
    # -> 44000; mean 111802 / 4 = 27950.5 -> 27951.
    assert report(store)["resolution"] == {
        "count": 6, "median_seconds": 88200, "p90_seconds": 223200, "mean_seconds": 119400,
        "business_count": 4, "business_median_seconds": 29401, "business_p90_seconds": 44000,
        "business_mean_seconds": 27951,
    }


def test_backlog_at_the_end_of_a_past_period(store: Store, history: History) -> None:
    # At Jan 12 00:00: F new (6 h old), E waiting (2 d 14 h), H pending approval (1 d 12 h), M new (exactly
    # 1 d: in "1 to 3 days"), D reopened (4 d 15 h), Z assigned (12 d 15 h). A, B, C, G, K, N resolved or
    # closed, J merged, I and L not yet opened. Since then F was resolved, N reopened and resolved again, and
    # C and Z changed again.
    assert report(store)["backlog"] == {
        "as_of": "2026-01-12T00:00:00Z", "total": 6,
        "age_under_1d": 1, "age_1d_to_3d": 3, "age_3d_to_7d": 1, "age_over_7d": 1,
    }


def test_backlog_earlier_in_the_history(store: Store, history: History) -> None:
    # At Jan 9 00:00: Z assigned (9 d 15 h) and C reopened the day before (2 d 16 h); D was resolved at
    # Jan 8 10:00 and is open again only now, so it does not count.
    assert report(store, Period(at(2), at(9)))["backlog"] == {
        "as_of": "2026-01-09T00:00:00Z", "total": 2,
        "age_under_1d": 0, "age_1d_to_3d": 1, "age_3d_to_7d": 0, "age_over_7d": 1,
    }


def test_backlog_of_a_period_not_ended_yet_is_the_current_one(store: Store, history: History) -> None:
    # Until Jan 15 is after now (Jan 14 12:00): current status, ages now. L 4 h; I 1 d 3 h; E 5 d 2 h,
    # H 4 d, M 3 d 12 h; Z 15 d 3 h, C 8 d 4 h, D 7 d 3 h.
    assert report(store, Period(at(8), at(15)))["backlog"] == {
        "as_of": "2026-01-14T12:00:00Z", "total": 8,
        "age_under_1d": 1, "age_1d_to_3d": 1, "age_3d_to_7d": 3, "age_over_7d": 3,
    }


def test_past_backlog_agrees_with_replaying_every_event(store: Store, history: History) -> None:
    """Every 6 hours of the history, the backlog equals the statuses replayed from the whole trail."""
    with store.read() as session:
        created = dict(session.execute(select(Request.id, Request.created_at)).all())
        trail = session.execute(
            select(Event.request_id, Event.data, Event.created_at).where(Event.request_id.is_not(None))
            .order_by(Event.seq)).all()
        moment = at(30, 6, month=12, year=2025)
        checked = 0
        while moment < NOW:
            status: dict[int, str] = {}
            for request_id, data, created_at in trail:
                change = json.loads(data).get("status")
                if created_at < moment and isinstance(change, dict) and change.get("to"):
                    status[request_id] = change["to"]
            ages = [moment - created[r] for r, s in status.items() if s not in DONE_STATES]
            expected = [sum(1 for a in ages if lo <= a < hi) for lo, hi in (
                (timedelta(0), timedelta(days=1)), (timedelta(days=1), timedelta(days=3)),
                (timedelta(days=3), timedelta(days=7)), (timedelta(days=7), timedelta.max))]
            found = metrics.backlog(session, Period(moment - timedelta(days=7), moment), now=NOW)[None]
            assert [getattr(found, b) for b in metrics.BUCKETS] == expected, moment
            checked += found.total
            moment += timedelta(hours=6)
    assert checked > 100  # the replay saw a real backlog, not zeros


def test_reopen_rate(store: Store, history: History) -> None:
    # Of the 6 resolved in the period (A B C D G K), C (by an agent) and D (by the customer) were reopened.
    assert report(store)["reopen_rate"] == rate(2, 6, 0.3333)


def test_reopen_count_is_the_number_of_reopening_events(store: Store, history: History) -> None:
    """The definition rests on this: the column and the trail agree."""
    with store.read() as session:
        counts = dict(session.execute(select(Request.id, Request.reopen_count)).all())
        events = session.execute(select(Event.request_id, Event.kind, Event.data)).all()
    reopens = {request_id: 0 for request_id in counts}
    for request_id, kind, data in events:
        change = json.loads(data).get("status") or {}
        if kind in ("request.reopened", "request.customer_replied") and change.get("from") == "resolved":
            reopens[request_id] += 1
    assert reopens == counts
    assert sorted(counts.values()) == [0] * 12 + [1, 1, 2]  # D and N once, C twice


def test_accuracy_rate(store: Store, history: History) -> None:
    # Without rework: A, B (an approved credit is not rework), K. C was reopened and had a refund rejected,
    # D was reopened, G had a write-off rejected.
    assert report(store)["accuracy_rate"] == rate(3, 6, 0.5)


def test_dispute_cycle_time(store: Store, history: History) -> None:
    # Billing disputes resolved in the period: B 172800, C 273600 (H is pending).
    # Median 223200; p90 h=.9 -> 172800 + .9(100800) = 263520.
    assert report(store)["dispute_cycle"] == {"count": 2, "median_seconds": 223200, "p90_seconds": 263520}


def test_financial_impact(store: Store, history: History) -> None:
    # Disputed and open now: C 300.00 EUR (reopened), H 50.00 USD; B's 120.00 EUR is resolved.
    # Decided in the period: B's credit approved; C's refund and G's write-off rejected. Z's credit was
    # approved after the period; H's credit is pending now.
    assert report(store)["financial_impact"] == {
        "disputed_open": [{"amount": {"amount_minor": 30000, "currency": "EUR"}, "requests": 1},
                          {"amount": {"amount_minor": 5000, "currency": "USD"}, "requests": 1}],
        "approved": [{"kind": "credit", "amount": {"amount_minor": 12000, "currency": "EUR"}, "count": 1}],
        "rejected": [{"kind": "refund", "amount": {"amount_minor": 30000, "currency": "EUR"}, "count": 1},
                     {"kind": "write_off", "amount": {"amount_minor": 1000, "currency": "EUR"}, "count": 1}],
        "pending": [{"kind": "credit", "amount": {"amount_minor": 5000, "currency": "USD"}, "count": 1}],
    }


def test_money_sums_per_currency_and_kind(store: Store, history: History, clock: FixedClock) -> None:
    """Two approvals of one kind and currency add up; another currency stays apart."""
    clock.set(at(14, 13))
    services.decide_approval(store, history.approvals["H"], approve=False, note="Ledger says no",
                             actor=f.USD_APPROVER)
    key = f.open_request(store, invoice="INV-100", disputed="80.00").key
    services.claim(store, key, actor=AGENT)
    goodwill = services.request_approval(store, key, kind="credit", amount=parse_amount("15.50", "EUR"),
                                         reason="Goodwill", actor=AGENT)
    services.decide_approval(store, goodwill.id, approve=True, note="Fine", actor=APPROVER)
    money = report(store, Period(at(13), at(15)), now=at(14, 14))["financial_impact"]
    assert money["approved"] == [{"kind": "credit", "amount": {"amount_minor": 3550, "currency": "EUR"}, "count": 2}]
    assert money["rejected"] == [{"kind": "credit", "amount": {"amount_minor": 5000, "currency": "USD"}, "count": 1}]
    assert money["pending"] == []
    assert money["disputed_open"] == [{"amount": {"amount_minor": 38000, "currency": "EUR"}, "requests": 2},
                                      {"amount": {"amount_minor": 5000, "currency": "USD"}, "requests": 1}]


def test_sla_compliance(store: Store, history: History) -> None:
    # First response, answered in the period with a target: A (10:00 at 10:00: met), B (missed), C (met),
    # G (met), Z (missed); E has none. Resolution, resolved in the period with a target: A (09:00 at 09:00:
    # met), B (missed), C (Jan 9 12:00 before Jan 10: met), D (missed), K (missed); G has none.
    # Open now and past due: no first response D, H, I (L not yet due; J merged and K resolved do not
    # count); next reply C (E not yet; A resolved); resolution Z, C, D, H (E not yet). Requests: Z C D H I.
    assert report(store)["sla_compliance"] == {
        "first_response": rate(3, 5, 0.6),
        "resolution": rate(2, 5, 0.4),
        "breaches_open": {"first_response": 3, "next_reply": 1, "resolution": 4, "requests": 5},
    }


def test_the_whole_report(store: Store, history: History) -> None:
    result = report(store)
    assert result["period"] == {"since": "2026-01-05T00:00:00Z", "until": "2026-01-12T00:00:00Z", "timezone": "UTC"}
    assert result["computed_at"] == "2026-01-14T12:00:00Z"
    assert result["by"] is None and result["groups"] == []
    assert list(result) == ["period", "computed_at", "by", "opened", "first_response", "time_to_claim", "resolution",
                            "backlog", "reopen_rate", "accuracy_rate", "dispute_cycle", "financial_impact",
                            "sla_compliance", "groups"]
    # "now" defaults to the store's clock.
    assert compute_metrics(store, PERIOD).to_json() == result


# --- splits --------------------------------------------------------------------------


def test_split_by_category(store: Store, history: History) -> None:
    result = report(store, by="category")
    by = groups(result)
    assert list(by) == ["account", "billing_dispute", "general", "technical"]
    # account: only F, open at the end of the period and nothing else in it.
    assert by["account"]["backlog"]["total"] == 1 and by["account"]["backlog"]["age_under_1d"] == 1
    assert by["account"]["first_response"]["count"] == 0
    assert by["account"]["first_response"]["median_seconds"] is None
    assert by["account"]["reopen_rate"] == rate(0, 0, None)
    # billing_dispute: B C H.
    bd = by["billing_dispute"]
    # First responses B 7200, C 3600: median 5400, p90 3600 + .9(3600) = 6840; business B 7201, C 1801:
    # median 4501, p90 1801 + .9(5400) = 6661.
    assert bd["first_response"] == {"count": 2, "median_seconds": 5400, "p90_seconds": 6840, "business_count": 2,
                                    "business_median_seconds": 4501, "business_p90_seconds": 6661}
    # Claims B 3600, C 900, H 1800: median 1800, p90 h=1.8 -> 1800 + .8(1800) = 3240.
    assert bd["time_to_claim"] == {"count": 3, "median_seconds": 1800, "p90_seconds": 3240}
    assert bd["resolution"] == {"count": 2, "median_seconds": 223200, "p90_seconds": 263520, "mean_seconds": 223200,
                                "business_count": 1, "business_median_seconds": 50000,
                                "business_p90_seconds": 50000, "business_mean_seconds": 50000}
    assert bd["dispute_cycle"] == result["dispute_cycle"]
    assert bd["backlog"]["total"] == 1 and bd["backlog"]["age_1d_to_3d"] == 1  # H
    assert bd["reopen_rate"] == rate(1, 2, 0.5) and bd["accuracy_rate"] == rate(1, 2, 0.5)
    # All the money but G's write-off (technical) is in disputes.
    assert bd["financial_impact"] == {**result["financial_impact"], "rejected": [
        {"kind": "refund", "amount": {"amount_minor": 30000, "currency": "EUR"}, "count": 1}]}
    assert bd["sla_compliance"] == {"first_response": rate(1, 2, 0.5), "resolution": rate(1, 2, 0.5),
                                    "breaches_open": {"first_response": 1, "next_reply": 1, "resolution": 2,
                                                      "requests": 2}}
    # general: Z D I J K L M.
    g = by["general"]
    assert g["first_response"]["count"] == 1 and g["first_response"]["p90_seconds"] == 523800
    # Claims D 86400, K 1800: median 44100, p90 1800 + .9(84600) = 77940.
    assert g["time_to_claim"] == {"count": 2, "median_seconds": 44100, "p90_seconds": 77940}
    # Resolutions D 90000, K 7200: median = mean = 48600, p90 7200 + .9(82800) = 81720; business K only.
    assert g["resolution"] == {"count": 2, "median_seconds": 48600, "p90_seconds": 81720, "mean_seconds": 48600,
                               "business_count": 1, "business_median_seconds": 3001,
                               "business_p90_seconds": 3001, "business_mean_seconds": 3001}
    assert g["backlog"] == {"as_of": "2026-01-12T00:00:00Z", "total": 3, "age_under_1d": 0, "age_1d_to_3d": 1,
                            "age_3d_to_7d": 1, "age_over_7d": 1}  # M, D, Z
    assert g["dispute_cycle"] == {"count": 0, "median_seconds": None, "p90_seconds": None}
    assert g["financial_impact"] == {"disputed_open": [], "approved": [], "rejected": [], "pending": []}
    assert g["sla_compliance"] == {"first_response": rate(0, 1, 0.0), "resolution": rate(0, 2, 0.0),
                                   "breaches_open": {"first_response": 2, "next_reply": 0, "resolution": 2,
                                                     "requests": 3}}
    # technical: A E G.
    t = by["technical"]
    # Claims A 1800, E 600, G 300: median 600, p90 600 + .8(1200) = 1560.
    assert t["time_to_claim"] == {"count": 3, "median_seconds": 600, "p90_seconds": 1560}
    # Business A 28800, G 30001: median = mean = 29400.5 -> 29401; p90 28800 + .9(1201) = 29880.9 -> 29881.
    assert t["resolution"] == {"count": 2, "median_seconds": 86400, "p90_seconds": 86400, "mean_seconds": 86400,
                               "business_count": 2, "business_median_seconds": 29401,
                               "business_p90_seconds": 29881, "business_mean_seconds": 29401}
    assert t["accuracy_rate"] == rate(1, 2, 0.5) and t["reopen_rate"] == rate(0, 2, 0.0)
    assert t["financial_impact"]["rejected"] == [
        {"kind": "write_off", "amount": {"amount_minor": 1000, "currency": "EUR"}, "count": 1}]
    assert t["sla_compliance"]["first_response"] == rate(2, 2, 1.0)
    assert t["sla_compliance"]["breaches_open"]["requests"] == 0


def test_split_by_priority(store: Store, history: History) -> None:
    by = groups(report(store, by="priority"))
    assert list(by) == ["high", "low", "normal", "urgent"]
    assert by["high"]["time_to_claim"] == {"count": 1, "median_seconds": 1800, "p90_seconds": 1800}  # A
    assert by["high"]["backlog"]["age_under_1d"] == 1  # F
    assert by["low"]["time_to_claim"] == {"count": 2, "median_seconds": 44100, "p90_seconds": 77940}  # D K
    # Normal: first responses Z 523800, B 7200, E 3600, G 1200: median 5400, p90 h=2.7 ->
    # 7200 + .7(516600) = 368820. Claims B 3600, E 600, G 300, H 1800: median 1200, p90 1800 + .7(1800) = 3060.
    normal = by["normal"]
    assert (normal["first_response"]["median_seconds"], normal["first_response"]["p90_seconds"]) == (5400, 368820)
    assert normal["time_to_claim"] == {"count": 4, "median_seconds": 1200, "p90_seconds": 3060}
    # Resolutions B 172800, G 86400: median = mean = 129600, p90 86400 + .9(86400) = 164160.
    assert (normal["resolution"]["median_seconds"], normal["resolution"]["p90_seconds"],
            normal["resolution"]["mean_seconds"]) == (129600, 164160, 129600)
    assert normal["backlog"] == {"as_of": "2026-01-12T00:00:00Z", "total": 4, "age_under_1d": 0,
                                 "age_1d_to_3d": 3, "age_3d_to_7d": 0, "age_over_7d": 1}  # E H M, Z
    assert normal["accuracy_rate"] == rate(1, 2, 0.5)
    urgent = by["urgent"]  # C: resolved at the end of the period, so no backlog; reopened and rejected
    assert urgent["backlog"]["total"] == 0
    assert urgent["reopen_rate"] == rate(1, 1, 1.0) and urgent["accuracy_rate"] == rate(0, 1, 0.0)
    assert urgent["resolution"]["median_seconds"] == 273600


def test_split_by_channel(store: Store, history: History) -> None:
    by = groups(report(store, by="channel"))
    assert list(by) == ["cli", "email", "slack"]
    # cli (B F H): claims B 3600, H 1800: median 2700, p90 1800 + .9(1800) = 3420.
    assert by["cli"]["time_to_claim"] == {"count": 2, "median_seconds": 2700, "p90_seconds": 3420}
    assert by["cli"]["backlog"]["total"] == 2  # F, H
    assert by["cli"]["financial_impact"]["disputed_open"] == [
        {"amount": {"amount_minor": 5000, "currency": "USD"}, "requests": 1}]
    # email: first responses Z 523800, A 3600, E 3600, G 1200 -> median 3600, p90 3600 + .7(520200) = 367740;
    # claims A 1800, D 86400, E 600, G 300 -> median 1200, p90 1800 + .7(84600) = 61020;
    # resolutions A 86400, D 90000, G 86400 -> median 86400, mean 87600, p90 86400 + .8(3600) = 89280.
    email = by["email"]
    assert (email["first_response"]["median_seconds"], email["first_response"]["p90_seconds"]) == (3600, 367740)
    assert email["time_to_claim"] == {"count": 4, "median_seconds": 1200, "p90_seconds": 61020}
    assert (email["resolution"]["median_seconds"], email["resolution"]["mean_seconds"],
            email["resolution"]["p90_seconds"]) == (86400, 87600, 89280)
    assert email["backlog"]["total"] == 4  # Z D E M
    assert email["reopen_rate"] == rate(1, 3, 0.3333) and email["accuracy_rate"] == rate(1, 3, 0.3333)
    # slack (C K): claims 900, 1800 -> median 1350, p90 900 + .9(900) = 1710; resolutions 273600, 7200 ->
    # median = mean = 140400, p90 7200 + .9(266400) = 246960.
    slack = by["slack"]
    assert slack["time_to_claim"] == {"count": 2, "median_seconds": 1350, "p90_seconds": 1710}
    assert (slack["resolution"]["median_seconds"], slack["resolution"]["mean_seconds"],
            slack["resolution"]["p90_seconds"]) == (140400, 140400, 246960)
    assert slack["backlog"]["total"] == 0


def test_split_by_assignee(store: Store, history: History) -> None:
    by = groups(report(store, by="assignee"))
    assert list(by) == ["UAGENT1", "UAGENT2", None]  # unassigned last
    # AGENT (Z A C E F H K): first responses Z, A, C, E -> p90 3600 + .7(520200) = 367740; claims A 1800,
    # C 900, E 600, H 1800, K 1800 -> median 1800, p90 h=3.6 -> 1800; resolutions A 86400, C 273600, K 7200
    # -> median 86400, mean 122400, p90 86400 + .8(187200) = 236160.
    one = by["UAGENT1"]
    assert (one["first_response"]["count"], one["first_response"]["p90_seconds"]) == (4, 367740)
    assert one["time_to_claim"] == {"count": 5, "median_seconds": 1800, "p90_seconds": 1800}
    assert (one["resolution"]["median_seconds"], one["resolution"]["mean_seconds"],
            one["resolution"]["p90_seconds"]) == (86400, 122400, 236160)
    # F is counted under its assignee now, though nobody had it at the end of the period.
    assert one["backlog"] == {"as_of": "2026-01-12T00:00:00Z", "total": 4, "age_under_1d": 1, "age_1d_to_3d": 2,
                              "age_3d_to_7d": 0, "age_over_7d": 1}
    assert one["reopen_rate"] == rate(1, 3, 0.3333) and one["accuracy_rate"] == rate(2, 3, 0.6667)
    assert one["sla_compliance"]["breaches_open"] == {"first_response": 1, "next_reply": 1, "resolution": 3,
                                                      "requests": 3}
    # AGENT2 (B D G): first responses B 7200, G 1200 -> median 4200, p90 1200 + .9(6000) = 6600; claims B 3600,
    # D 86400, G 300 -> median 3600, p90 3600 + .8(82800) = 69840; resolutions B 172800, D 90000, G 86400 ->
    # median 90000, mean 116400, p90 90000 + .8(82800) = 156240.
    two = by["UAGENT2"]
    assert (two["first_response"]["median_seconds"], two["first_response"]["p90_seconds"]) == (4200, 6600)
    assert two["time_to_claim"] == {"count": 3, "median_seconds": 3600, "p90_seconds": 69840}
    assert (two["resolution"]["median_seconds"], two["resolution"]["mean_seconds"],
            two["resolution"]["p90_seconds"]) == (90000, 116400, 156240)
    assert two["backlog"]["total"] == 1 and two["reopen_rate"] == rate(1, 3, 0.3333)
    # Unassigned (I J L M): M in the backlog, I's first response overdue.
    nobody = by[None]
    assert nobody["backlog"]["total"] == 1 and nobody["backlog"]["age_1d_to_3d"] == 1
    assert nobody["first_response"]["count"] == 0 and nobody["time_to_claim"]["count"] == 0
    assert nobody["sla_compliance"]["breaches_open"] == {"first_response": 1, "next_reply": 0, "resolution": 0,
                                                         "requests": 1}


@pytest.mark.parametrize("by", metrics.SPLITS)
def test_groups_add_up_to_the_whole(store: Store, history: History, by: str) -> None:
    result = report(store, by=by)
    for path in (("first_response", "count"), ("time_to_claim", "count"), ("resolution", "count"),
                 ("backlog", "total"), ("reopen_rate", "numerator"), ("accuracy_rate", "denominator"),
                 ("sla_compliance", "breaches_open", "requests")):
        def pick(node: dict[str, Any]) -> Any:
            for step in path:
                node = node[step]
            return node
        assert sum(pick(g) for g in result["groups"]) == pick(result), (by, path)


def test_one_metric_function_alone_gives_what_the_report_gives(store: Store, history: History) -> None:
    with store.read() as session:
        alone = metrics.time_to_claim(session, PERIOD, "channel")
        whole = metrics.time_to_claim(session, PERIOD)
    assert set(alone) == {"cli", "email", "slack"}
    assert whole[None].count == 8 and whole[None].median == Fraction(1800)
    assert whole[None].p90 == Fraction(28440)
    assert {k: v.count for k, v in alone.items()} == {"cli": 2, "email": 4, "slack": 2}


# --- empty periods, refusals ---------------------------------------------------------


EMPTY_TOTALS = {
    "first_response": {"count": 0, "median_seconds": None, "p90_seconds": None, "business_count": 0,
                       "business_median_seconds": None, "business_p90_seconds": None},
    "time_to_claim": {"count": 0, "median_seconds": None, "p90_seconds": None},
    "resolution": {"count": 0, "median_seconds": None, "p90_seconds": None, "mean_seconds": None,
                   "business_count": 0, "business_median_seconds": None, "business_p90_seconds": None,
                   "business_mean_seconds": None},
    "reopen_rate": {"rate": None, "numerator": 0, "denominator": 0},
    "accuracy_rate": {"rate": None, "numerator": 0, "denominator": 0},
    "dispute_cycle": {"count": 0, "median_seconds": None, "p90_seconds": None},
    "sla_compliance": {"first_response": {"rate": None, "numerator": 0, "denominator": 0},
                       "resolution": {"rate": None, "numerator": 0, "denominator": 0},
                       "breaches_open": {"first_response": 0, "next_reply": 0, "resolution": 0, "requests": 0}},
}


@pytest.mark.parametrize("by", [None, *metrics.SPLITS])
def test_an_empty_store_gives_nulls_and_zeros(store: Store, by: str | None) -> None:
    result = report(store, by=by)
    assert {k: result[k] for k in EMPTY_TOTALS} == EMPTY_TOTALS
    assert result["backlog"] == {"as_of": "2026-01-12T00:00:00Z", "total": 0, "age_under_1d": 0,
                                 "age_1d_to_3d": 0, "age_3d_to_7d": 0, "age_over_7d": 0}
    assert result["financial_impact"] == {"disputed_open": [], "approved": [], "rejected": [], "pending": []}
    assert result["groups"] == []


def test_a_quiet_period_before_the_history(store: Store, history: History) -> None:
    result = report(store, Period(at(1, month=12, year=2025), at(8, month=12, year=2025)))
    assert {k: result[k] for k in EMPTY_TOTALS if k != "sla_compliance"} == \
        {k: v for k, v in EMPTY_TOTALS.items() if k != "sla_compliance"}
    assert result["backlog"]["total"] == 0  # Z came later
    # What is open now does not depend on the period.
    assert result["sla_compliance"]["breaches_open"]["requests"] == 5
    assert len(result["financial_impact"]["disputed_open"]) == 2


def test_unknown_split_is_refused(store: Store) -> None:
    with pytest.raises(InvalidInput, match="category, priority, channel, assignee"):
        compute_metrics(store, PERIOD, by="customer")


# --- percentiles: one definition, both databases, PostgreSQL's own ----------------------


def percentile_cont(values: list[Fraction], p: Fraction) -> Fraction:
    """The reference: linear interpolation between closest ranks."""
    ordered = sorted(values)
    h = p * (len(ordered) - 1)
    low = int(h)
    if low + 1 == len(ordered):
        return ordered[low]
    return ordered[low] + (h - low) * (ordered[low + 1] - ordered[low])


def seconds(delta: timedelta) -> Fraction:
    return Fraction(delta // timedelta(microseconds=1), 1_000_000)


def test_percentiles_are_percentile_cont_to_the_microsecond(store: Store, clock: FixedClock) -> None:
    """Random durations with microseconds: the same exact answer on both databases, and on
    PostgreSQL the same as its own percentile_cont."""
    clock.set(at(5, 8))
    f.seed(store)
    rng = random.Random(20260105)
    priorities = ("urgent", "high", "normal", "low")
    expected: dict[str, dict[str, list[Fraction]]] = {p: {"first": [], "resolved": []} for p in priorities}
    start = at(5, 9)
    for i in range(25):
        priority = priorities[i % 3 if i < 24 else 3]  # "low" holds one request: its percentiles are its value
        opened = start + timedelta(seconds=rng.randrange(0, 3600), microseconds=rng.randrange(1_000_000))
        if i == 0:
            # A fraction of .999999 s: SQLite's strftime would round this through milliseconds.
            opened = start + timedelta(microseconds=1)
        clock.set(opened)
        key = services.open_request(store, channel="cli", mail=_mail(f"Sample {i}"), priority=priority,
                                    actor=AGENT).key
        services.claim(store, key, actor=AGENT)
        answered = opened + (timedelta(seconds=59, microseconds=999_998) if i == 0 else
                             timedelta(seconds=rng.randrange(1, 200_000), microseconds=rng.randrange(1_000_000)))
        clock.set(answered)
        services.reply(store, key, "Answer", actor=AGENT)
        resolved = answered + timedelta(seconds=rng.randrange(1, 900_000), microseconds=rng.randrange(1_000_000))
        clock.set(resolved)
        services.resolve(store, key, note="Done", actor=AGENT)
        expected[priority]["first"].append(seconds(answered - opened))
        expected[priority]["resolved"].append(seconds(resolved - opened))
        start += timedelta(hours=3)
    period = Period(at(5), at(25))
    with store.read() as session:
        first = metrics.first_response_time(session, period, "priority")
        resolution = metrics.resolution_time(session, period, "priority")
        whole = metrics.first_response_time(session, period)[None].wall
    assert sorted(first) == ["high", "low", "normal", "urgent"]
    for priority, values in expected.items():
        for found, wanted in ((first[priority].wall, values["first"]), (resolution[priority].wall, values["resolved"])):
            assert found.count == len(wanted)
            assert found.median == percentile_cont(wanted, Fraction(1, 2)), priority
            assert found.p90 == percentile_cont(wanted, Fraction(9, 10)), priority
            assert found.mean == sum(wanted) / len(wanted)
    everything = [v for values in expected.values() for v in values["first"]]
    assert whole.median == percentile_cont(everything, Fraction(1, 2))
    assert whole.p90 == percentile_cont(everything, Fraction(9, 10))
    assert Fraction(59_999_998, 1_000_000) in expected["urgent"]["first"]
    if store.engine.dialect.name != "postgresql":
        return
    with store.read() as session:
        rows = session.execute(text(
            "SELECT priority,"
            " percentile_cont(0.5) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM first_response_at - created_at)),"
            " percentile_cont(0.9) WITHIN GROUP (ORDER BY EXTRACT(EPOCH FROM first_response_at - created_at))"
            " FROM requests GROUP BY priority")).all()
    assert len(rows) == 4
    for priority, median, p90 in rows:
        found = first[priority].wall
        assert abs(float(found.median) - median) < 1e-6 and abs(float(found.p90) - p90) < 1e-6
        assert whole_seconds(found.median) == whole_seconds(Fraction(median))
        assert whole_seconds(found.p90) == whole_seconds(Fraction(p90))


def test_rounding_is_half_up_to_whole_seconds() -> None:
    assert [whole_seconds(Fraction(n, 2)) for n in (0, 1, 2, 3, 4, 5)] == [0, 1, 1, 2, 2, 3]
    assert whole_seconds(Fraction(44000_3, 10)) == 44000
    assert whole_seconds(Fraction(1_999_999, 1_000_000)) == 2
    assert whole_seconds(None) is None


# --- periods ---------------------------------------------------------------------------


def test_default_period_is_the_last_seven_full_days() -> None:
    period = period_from_dates(None, None, ZoneInfo("UTC"), date(2026, 1, 14))
    assert (period.since, period.until) == (at(7), at(14))


def test_period_days_are_in_the_configured_time_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    period = period_from_dates(date(2026, 1, 5), date(2026, 1, 12), berlin, date(2026, 1, 20))
    assert (period.since, period.until) == (at(4, 23), at(11, 23))
    # Across the switch to summer time (29 March 2026) the days are local days: the week is 167 hours.
    spring = period_from_dates(date(2026, 3, 23), None, berlin, date(2026, 3, 30))
    assert (spring.since, spring.until) == (at(22, 23, month=3), at(29, 22, month=3))
    only_until = period_from_dates(None, date(2026, 1, 12), berlin, date(2026, 3, 1))
    assert only_until.since == at(4, 23)


@pytest.mark.parametrize("since, until, today, message", [
    (date(2026, 1, 12), date(2026, 1, 12), date(2026, 2, 1), "is empty"),
    (date(2026, 1, 13), date(2026, 1, 12), date(2026, 2, 1), "is empty"),
    (date(2026, 1, 14), None, date(2026, 1, 14), "today unless given"),
])
def test_empty_periods_are_refused(since: date, until: date | None, today: date, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        period_from_dates(since, until, ZoneInfo("UTC"), today)


def test_a_period_is_aware_utc() -> None:
    with pytest.raises(ValueError):
        Period(datetime(2026, 1, 5), datetime(2026, 1, 6))
    shifted = Period(datetime(2026, 1, 5, 1, tzinfo=ZoneInfo("Europe/Berlin")), at(6))
    assert shifted.since == at(5) and shifted.since.tzinfo is UTC
    with pytest.raises(InvalidInput):
        Period(at(6), at(5))
