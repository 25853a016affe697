"""``core.ops_figures``: what the metrics endpoint reads from the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from core import services
from core.clock import FixedClock
from core.errors import StoreUnavailable
from core.ops_figures import read_store_figures
from core.services.mail_intake import IncomingMail, RawMail, accept_raw_mail, file_inbound, pending_inbound_ids
from core.services.outbox import claim_due, mark_failed
from core.settings import Settings
from core.store import Store
from tests import factories as f
from tests.intake.gateway import message


def slack_store(store: Store) -> Store:
    """The same database, with Slack configured: every change queues a triage card."""
    return Store(store.engine, store.clock, replace(store.settings, slack_bot_token="xoxb-test"))


def test_an_empty_store_shows_every_label_at_zero(store: Store) -> None:
    figures = read_store_figures(store)
    assert figures.mail_waiting == 0
    assert set(figures.mail_quarantined) >= {"auto_reply", "bounce", "loop", "unparseable"}
    assert not any(figures.mail_quarantined.values())
    assert figures.outbox == {("email", "pending"): 0, ("email", "failed"): 0,
                              ("slack", "pending"): 0, ("slack", "failed"): 0}
    assert figures.overdue_seconds == {"email": 0.0, "slack": 0.0}
    assert figures.open_breaches == {"first_response": 0, "next_reply": 0, "resolution": 0}
    assert figures.open_requests == {"new": 0, "assigned": 0, "waiting_on_customer": 0, "pending_approval": 0}


def test_mail_waiting_and_quarantined_by_reason(store: Store) -> None:
    accept_raw_mail(store, [RawMail(raw=message(subject=f"n{n}", message_id=f"<n{n}@acme.test>"),
                                    envelope_from="jane@acme.test", recipients=("support@localhost",))
                            for n in range(3)])
    assert read_store_figures(store).mail_waiting == 3
    first, second, _third = pending_inbound_ids(store)
    auto = IncomingMail(mail=services.InboundMail(from_address="jane@acme.test", subject="Out of office",
                                                  body_text=""), automatic="auto_reply")
    assert file_inbound(store, first, auto).outcome == "quarantined"
    assert file_inbound(store, second, auto).outcome == "quarantined"
    figures = read_store_figures(store)
    assert figures.mail_waiting == 1
    assert figures.mail_quarantined["auto_reply"] == 2
    assert sum(figures.mail_quarantined.values()) == 2


def test_outbox_pending_and_failed_by_channel_and_how_overdue_delivery_is(store: Store, clock: FixedClock) -> None:
    f.seed(store)
    slack = slack_store(store)
    f.open_request(slack, subject="first")
    clock.advance(timedelta(minutes=10))
    f.open_request(slack, subject="second")
    pending = read_store_figures(slack).outbox[("slack", "pending")]
    assert pending >= 2
    (claimed, *_rest) = claim_due(slack, "slack", limit=1)
    mark_failed(slack, claimed.id, "channel_not_found")
    clock.advance(timedelta(minutes=5))
    figures = read_store_figures(slack)
    assert figures.outbox[("slack", "failed")] == 1
    assert figures.outbox[("slack", "pending")] == pending - 1
    assert figures.outbox[("email", "pending")] == figures.outbox[("email", "failed")] == 0
    # The failed row was the first request's card; its other Slack rows (its mail in the card's thread) have
    # been due since it was opened, 15 minutes ago (the clock is fixed, so exactly).
    assert figures.overdue_seconds == {"email": 0.0, "slack": 15 * 60.0}
    for row in claim_due(slack, "slack"):  # being sent (leased): not overdue
        assert row.attempts == 1
    assert read_store_figures(slack).overdue_seconds["slack"] == 0.0


def test_open_requests_by_status_and_breaches_by_target(store: Store, clock: FixedClock) -> None:
    f.seed(store)
    one = f.open_request(store, subject="one")
    f.open_request(store, subject="two")
    services.claim(store, one.key, actor=f.AGENT)
    figures = read_store_figures(store)
    assert figures.open_requests == {"new": 1, "assigned": 1, "waiting_on_customer": 0, "pending_approval": 0}
    assert figures.open_breaches == {"first_response": 0, "next_reply": 0, "resolution": 0}
    # Weeks later nobody has answered either: both are past their first response and resolution targets.
    later = read_store_figures(store, now=clock.now() + timedelta(days=60))
    assert later.open_breaches == {"first_response": 2, "next_reply": 0, "resolution": 2}
    services.resolve(store, one.key, actor=f.AGENT, note="done")
    resolved = read_store_figures(store, now=clock.now() + timedelta(days=60))
    assert resolved.open_requests == {"new": 1, "assigned": 0, "waiting_on_customer": 0, "pending_approval": 0}
    assert resolved.open_breaches == {"first_response": 1, "next_reply": 0, "resolution": 1}


@pytest.mark.parametrize("url", ["sqlite:////nonexistent-dir/supportdesk.db",
                                 "postgresql+psycopg://postgres@127.0.0.1:1/nothing"], ids=["sqlite", "postgresql"])
def test_a_store_that_does_not_answer_raises_store_unavailable(url: str) -> None:
    store = Store.open(Settings(database_url=url))
    try:
        with pytest.raises(StoreUnavailable):
            read_store_figures(store)
    finally:
        store.dispose()
