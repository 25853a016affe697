"""SLA due times move with every transition, and the sweep records each crossing once, on both databases.

The store's clock starts on Monday 2026-01-05 09:00 UTC; the default
calendar is Monday to Friday 09:00-17:00 UTC; a normal request has 8h to the
first response, 8h to each next reply and 72h (nine business days) to
resolution.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from core import services
from core.clock import FixedClock
from core.models import Event, Request, SlaCrossing
from core.services import sla
from core.settings import Settings
from core.store import Store
from tests.factories import AGENT, open_request, seed

UTC = timezone.utc


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def row(store: Store, key: str) -> Request:
    with store.read() as session:
        return session.execute(select(Request).where(Request.number == int(key[3:]))).scalar_one()


def crossings(store: Store) -> list[tuple[str, str, str]]:
    with store.read() as session:
        rows = session.execute(
            select(Request.number, SlaCrossing.target, SlaCrossing.threshold)
            .join(Request, Request.id == SlaCrossing.request_id)
            .order_by(SlaCrossing.crossed_at, SlaCrossing.id)
        ).all()
    return [(f"SR-{n}", target, threshold) for n, target, threshold in rows]


def test_opening_sets_policy_due_times_and_next_check(store: Store) -> None:
    seed(store)
    key = open_request(store).key
    r = row(store, key)
    assert r.sla_policy == "normal"
    assert r.first_response_due_at == t("2026-01-05 17:00")
    assert r.resolution_due_at == t("2026-01-15 17:00")
    assert r.next_reply_due_at is None
    assert r.sla_next_check_at == t("2026-01-05 15:00")  # the first-response warning at 75 %


def test_waiting_pauses_and_the_pause_pushes_due_times(store: Store, clock: FixedClock) -> None:
    seed(store)
    key = open_request(store).key
    services.claim(store, key, actor=AGENT)
    clock.advance(timedelta(hours=2))  # 11:00, 2h used
    services.wait_on_customer(store, key, actor=AGENT)
    paused = row(store, key)
    assert (paused.first_response_due_at, paused.resolution_due_at, paused.sla_next_check_at) == (None, None, None)
    clock.set(t("2026-01-06 10:00"))  # the customer answers the next morning
    services.customer_replied(store, key, actor=AGENT)
    resumed = row(store, key)
    assert resumed.first_response_due_at == t("2026-01-06 16:00")  # 6h left from 10:00
    assert resumed.resolution_due_at == t("2026-01-16 16:00")


def test_first_response_is_frozen_and_counted_in_business_seconds(store: Store, clock: FixedClock) -> None:
    seed(store)
    key = open_request(store).key
    clock.set(t("2026-01-05 16:00"))
    services.reply(store, key, "Hello", actor=AGENT)
    clock.set(t("2026-01-07 12:00"))
    services.add_note(store, key, "later", actor=AGENT)
    r = row(store, key)
    assert r.first_response_business_seconds == 7 * 3600
    assert r.first_response_due_at == t("2026-01-05 17:00")


def test_next_reply_clock_runs_from_the_oldest_unanswered_message(store: Store, clock: FixedClock) -> None:
    seed(store)
    key = open_request(store).key
    services.reply(store, key, "First answer", actor=AGENT)
    clock.set(t("2026-01-05 11:00"))
    mail = services.InboundMail("jane@acme.test", "Re: Charged twice", "Any news?", message_id="<q1@acme.test>")
    services.add_inbound_message(store, key, mail)
    clock.set(t("2026-01-05 12:00"))
    services.add_inbound_message(store, key, services.InboundMail(
        "jane@acme.test", "Re: Charged twice", "Hello?", message_id="<q2@acme.test>"))
    r = row(store, key)
    assert (r.next_reply_started_at, r.next_reply_due_at) == (t("2026-01-05 11:00"), t("2026-01-06 11:00"))
    services.reply(store, key, "Sorted", actor=AGENT)
    r = row(store, key)
    assert (r.next_reply_started_at, r.next_reply_due_at) == (None, None)


def test_resolution_stops_and_reopening_resumes(store: Store, clock: FixedClock) -> None:
    seed(store)
    key = open_request(store).key
    services.claim(store, key, actor=AGENT)
    clock.set(t("2026-01-05 13:00"))
    services.resolve(store, key, note="done", actor=AGENT)
    resolved = row(store, key)
    assert resolved.resolution_business_seconds == 4 * 3600
    assert resolved.sla_next_check_at is None
    clock.set(t("2026-01-12 09:00"))  # a week later: resolved time does not count
    services.reopen(store, key, actor=AGENT)
    reopened = row(store, key)
    assert reopened.resolution_business_seconds is None
    assert reopened.resolution_due_at == t("2026-01-22 13:00")  # 68h left: 40h that week, 24h Mon-Wed, 4h Thu


def test_priority_change_keeps_the_time_already_counted(store: Store, clock: FixedClock) -> None:
    seed(store)
    key = open_request(store).key
    clock.set(t("2026-01-05 09:30"))
    services.set_priority(store, key, "urgent", actor=AGENT)
    r = row(store, key)
    assert r.sla_policy == "urgent"
    assert r.first_response_due_at == t("2026-01-05 10:00")
    assert r.sla_next_check_at == t("2026-01-05 09:45")


def test_category_override_from_configuration(database, clock: FixedClock) -> None:  # type: ignore[no-untyped-def]
    from core.db import make_engine

    settings = Settings(database_url=database.url,
                        extra={"sla": {"categories": {"billing_dispute": {"normal": {"resolution": "16h"}}}}})
    store = Store(make_engine(database.url), clock, settings)
    seed(store)
    key = open_request(store, sender="billing@acme.test", invoice="INV-100").key
    r = row(store, key)
    assert (r.sla_policy, r.resolution_due_at) == ("billing_dispute/normal", t("2026-01-06 17:00"))
    store.dispose()


def test_sweep_records_each_crossing_once(store: Store, clock: FixedClock) -> None:
    seed(store)
    first = open_request(store, subject="one").key
    clock.set(t("2026-01-05 10:00"))
    second = open_request(store, subject="two").key
    assert sla.sweep(store, t("2026-01-05 14:59")) == []
    found = sla.sweep(store, t("2026-01-05 16:00"))
    assert [(c.request_key, c.target, c.threshold, c.crossed_at) for c in found] == [
        (first, "first_response", "warning", t("2026-01-05 15:00")),
        (second, "first_response", "warning", t("2026-01-05 16:00")),
    ]
    assert sla.sweep(store, t("2026-01-05 16:00")) == []
    found = sla.sweep(store, t("2026-01-06 10:30"))
    assert [(c.request_key, c.threshold) for c in found] == [(first, "breach"), (second, "breach")]
    # a restarted process (a new Store on the same database) records nothing twice
    again = Store(store.engine, FixedClock(t("2026-01-06 11:00")), store.settings)
    assert sla.sweep(again) == []
    assert crossings(store) == [(first, "first_response", "warning"), (second, "first_response", "warning"),
                                (first, "first_response", "breach"), (second, "first_response", "breach")]
    with store.read() as session:
        kinds = session.execute(select(Event.kind).where(Event.kind.like("sla.%")).order_by(Event.seq)).scalars()
        assert list(kinds) == ["sla.warning", "sla.warning", "sla.breached", "sla.breached"]


def test_sweep_skips_met_paused_and_closed_requests(store: Store, clock: FixedClock) -> None:
    seed(store)
    met, paused, merged, target = (open_request(store, subject=s).key for s in ("met", "paused", "merged", "target"))
    services.reply(store, met, "hi", actor=AGENT)
    for key in (paused, target):
        services.claim(store, key, actor=AGENT)
    services.wait_on_customer(store, paused, actor=AGENT)
    services.merge(store, merged, into=target, actor=AGENT)
    found = sla.sweep(store, t("2026-01-05 15:30"))
    assert [(c.request_key, c.target) for c in found] == [(target, "first_response")]


def test_each_next_reply_cycle_is_its_own_crossing(store: Store, clock: FixedClock) -> None:
    seed(store)
    key = open_request(store).key
    services.reply(store, key, "first", actor=AGENT)
    for n, hour in ((1, "2026-01-05 10:00"), (2, "2026-01-07 10:00")):
        clock.set(t(hour))
        services.add_inbound_message(store, key, services.InboundMail(
            "jane@acme.test", "Re", "again", message_id=f"<m{n}@acme.test>"))
        breaches = [c for c in sla.sweep(store, clock.now() + timedelta(days=1)) if c.target == "next_reply"]
        assert [c.threshold for c in breaches] == ["warning", "breach"]
        services.reply(store, key, "answer", actor=AGENT)
    with store.read() as session:
        cycles = session.execute(select(func.count(func.distinct(SlaCrossing.cycle_started_at)))
                                 .where(SlaCrossing.target == "next_reply")).scalar_one()
    assert cycles == 2


def test_concurrent_sweeps_record_once(store: Store) -> None:
    seed(store)
    for i in range(20):
        open_request(store, subject=f"r{i}")
    results: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def run() -> None:
        barrier.wait()
        try:
            results.append(len(sla.sweep(store, t("2026-01-06 12:00"), batch=5)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert errors == []
    assert sum(results) == 40  # 20 warnings and 20 breaches, whoever recorded them
    assert len(crossings(store)) == 40


def test_explain_says_why(store: Store, clock: FixedClock) -> None:
    seed(store)
    key = open_request(store).key
    services.claim(store, key, actor=AGENT)
    clock.set(t("2026-01-05 11:00"))
    services.wait_on_customer(store, key, actor=AGENT)
    clock.set(t("2026-01-05 14:00"))
    services.customer_replied(store, key, actor=AGENT)
    e = sla.explain(store, key, t("2026-01-05 15:00"))
    assert (e.policy.name, e.policy.why) == ("normal", "the default policy for priority normal")
    first = e.targets[0].clock
    assert first.target == "first_response" and first.state == "on_track"
    assert first.elapsed_business_seconds == 3 * 3600 and first.elapsed_wall_seconds == 3 * 3600
    assert e.targets[0].wall_since_start_seconds == 6 * 3600
    assert first.pauses == ((t("2026-01-05 11:00"), t("2026-01-05 14:00")),)
    assert e.targets[0].counted == ((t("2026-01-05 09:00"), t("2026-01-05 11:00")),
                                    (t("2026-01-05 14:00"), t("2026-01-05 15:00")))
    assert first.due_at == t("2026-01-06 12:00")
    assert e.to_json()["targets"][0]["business_seconds"] == 10800


def test_explain_unknown_key(store: Store) -> None:
    from core.errors import NotFound

    with pytest.raises(NotFound, match="there is no request SR-9"):
        sla.explain(store, "SR-9")


def test_a_breach_met_or_paused_before_any_sweep_is_still_recorded(store: Store, clock: FixedClock) -> None:
    """Sweeps run every minute at best: a target missed, then met or paused in between, still leaves its breach."""
    seed(store)
    late_reply, late_pause, on_time = (open_request(store, subject=s).key for s in ("late", "paused", "on time"))
    services.claim(store, late_pause, actor=AGENT)
    clock.set(t("2026-01-05 10:00"))
    services.reply(store, on_time, "quick", actor=AGENT)
    clock.set(t("2026-01-06 10:00"))  # every first response was due Monday 17:00
    services.reply(store, late_reply, "sorry for the wait", actor=AGENT)
    services.wait_on_customer(store, late_pause, actor=AGENT)
    found = {(c.request_key, c.target, c.threshold) for c in sla.sweep(store) if c.target == "first_response"}
    assert found == {(late_reply, "first_response", "warning"), (late_pause, "first_response", "warning"),
                     (late_reply, "first_response", "breach"), (late_pause, "first_response", "breach")}
    assert [c for c in sla.sweep(store) if c.target == "first_response"] == []


def test_a_late_next_reply_sent_before_any_sweep_is_recorded(store: Store, clock: FixedClock) -> None:
    seed(store)
    key = open_request(store).key
    services.reply(store, key, "first", actor=AGENT)
    clock.set(t("2026-01-05 10:00"))
    services.add_inbound_message(store, key, services.InboundMail("jane@acme.test", "Re", "?", message_id="<x@a.t>"))
    clock.set(t("2026-01-06 12:00"))  # the next reply was due Tuesday 10:00
    services.reply(store, key, "late answer", actor=AGENT)
    assert row(store, key).sla_next_check_at is not None  # the missed thresholds wait for the sweep
    found = [(c.target, c.threshold, c.crossed_at) for c in sla.sweep(store) if c.target == "next_reply"]
    assert found == [("next_reply", "warning", t("2026-01-05 16:00")), ("next_reply", "breach", t("2026-01-06 10:00"))]
