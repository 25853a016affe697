"""Races with real threads on both databases: one winner, a clear answer for the loser, no duplicate keys."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select

from core import services
from core.audit import verify_chain
from core.errors import Conflict, SupportdeskError, TransitionRefused
from core.models import Event, Request
from core.store import Store
from tests.factories import AGENT, AGENT2, APPROVER, BIG_APPROVER, euros, open_request, seed

THREADS = 8


def race(calls: list[Callable[[], Any]]) -> tuple[list[Any], list[BaseException]]:
    """Start every call at the same moment on its own thread; collect results and errors."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            value = call()
        except BaseException as exc:  # noqa: BLE001 - collected and asserted on
            with lock:
                errors.append(exc)
        else:
            with lock:
                results.append(value)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread is still running: deadlock?"
    return results, errors


def count_events(store: Store, kind: str) -> int:
    with store.read() as session:
        return session.execute(select(func.count()).select_from(Event).where(Event.kind == kind)).scalar_one()


def test_concurrent_claims_have_exactly_one_winner(store: Store) -> None:
    seed(store)
    key = open_request(store).key
    claimers = [AGENT, AGENT2, APPROVER] * 3
    results, errors = race([lambda who=who: services.claim(store, key, actor=who) for who in claimers])
    assert len(results) == 1, errors
    winner = results[0].assignee
    assert len(errors) == len(claimers) - 1
    assert all(isinstance(e, TransitionRefused) for e in errors), errors
    assert all("already claimed by" in str(e) and "assigned" in str(e) for e in errors)
    assert all(f"({winner})" in str(e) for e in errors)
    assert count_events(store, "request.claimed") == 1


def test_approve_racing_reject_gives_one_decision(store: Store) -> None:
    seed(store)
    key = open_request(store, sender="billing@acme.test", invoice="INV-100").key
    services.claim(store, key, actor=AGENT)
    approval = services.request_approval(store, key, kind="credit", amount=euros("50"), reason="late", actor=AGENT)
    results, errors = race([
        lambda: services.decide_approval(store, approval.id, approve=True, actor=APPROVER),
        lambda: services.decide_approval(store, approval.id, approve=False, note="no", actor=BIG_APPROVER),
    ] * 3)
    assert len(results) == 1, errors
    decision = results[0]
    assert len(errors) == 5 and all(isinstance(e, Conflict) for e in errors), errors
    assert all(f"already {decision.status}" in str(e) and decision.decided_by in str(e) for e in errors)
    decided = count_events(store, "approval.approved") + count_events(store, "approval.rejected")
    assert decided == 1


def test_request_keys_stay_unique_and_gapless_under_concurrent_creation(store: Store) -> None:
    seed(store)
    per_thread = 6

    def open_many(n: int) -> list[str]:
        return [open_request(store, subject=f"thread {n} #{i}").key for i in range(per_thread)]

    results, errors = race([lambda n=n: open_many(n) for n in range(THREADS)])
    assert errors == []
    keys = [k for batch in results for k in batch]
    assert sorted(keys, key=lambda k: int(k[3:])) == [f"SR-{i}" for i in range(1, THREADS * per_thread + 1)]
    with store.read() as session:
        assert session.execute(select(func.count()).select_from(Request)).scalar_one() == THREADS * per_thread
        assert verify_chain(session).ok


def test_mixed_concurrent_writes_keep_the_audit_chain_intact(store: Store) -> None:
    seed(store)
    keys = [open_request(store, subject=f"r{i}").key for i in range(THREADS)]

    def work(key: str) -> None:
        services.claim(store, key, actor=AGENT)
        services.add_note(store, key, "checking", actor=AGENT)
        services.reply(store, key, "on it", actor=AGENT)
        services.resolve(store, key, note="done", actor=AGENT)

    results, errors = race([lambda k=k: work(k) for k in keys])
    assert errors == []
    with store.read() as session:
        result = verify_chain(session)
    assert result.ok and result.checked == 3 + THREADS + 4 * THREADS


@pytest.mark.parametrize("attempts", [THREADS])
def test_losers_leave_no_trace(store: Store, attempts: int) -> None:
    """Refused racers write nothing: the only event after the claim race is the winner's."""
    seed(store)
    key = open_request(store).key
    with store.read() as session:
        before = session.execute(select(func.count()).select_from(Event)).scalar_one()
    _, errors = race([lambda: services.claim(store, key, actor=AGENT2)] * attempts)
    assert all(isinstance(e, SupportdeskError) for e in errors)
    with store.read() as session:
        after = session.execute(select(func.count()).select_from(Event)).scalar_one()
    assert after == before + 1
