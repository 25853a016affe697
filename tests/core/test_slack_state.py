"""Where Slack cards are, and which Slack events were handled: once each, across threads. Both databases."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from core import services
from core.clock import FixedClock
from core.errors import InvalidInput, NotFound
from core.models import SlackCard, SlackEvent
from core.money import parse_amount
from core.services.slack_state import (
    CardPlace,
    approval_card_place,
    first_sighting,
    forget_events_before,
    record_approval_card,
    record_request_card,
    request_card_place,
    request_of_card,
)
from core.store import Store
from tests import factories as f


def count(store: Store, model: type) -> int:
    with store.read() as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


def test_an_event_is_seen_first_once_and_every_repeat_is_not(store: Store) -> None:
    assert first_sighting(store, "Ev01ABC") is True
    assert first_sighting(store, "Ev01ABC") is False
    assert first_sighting(store, "Ev02DEF") is True
    assert count(store, SlackEvent) == 2


def test_concurrent_copies_of_one_event_have_exactly_one_winner(store: Store) -> None:
    wins: list[bool] = []
    start = threading.Barrier(8)

    def deliver() -> None:
        start.wait()
        wins.append(first_sighting(store, "Ev0RACE"))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 7 + [True]


@pytest.mark.parametrize("event_id", ["", "   ", "E" * 65])
def test_a_malformed_event_id_is_refused_and_nothing_is_stored(store: Store, event_id: str) -> None:
    with pytest.raises(InvalidInput, match="event_id"):
        first_sighting(store, event_id)
    assert count(store, SlackEvent) == 0


def test_old_event_ids_are_forgotten(store: Store, clock: FixedClock) -> None:
    first_sighting(store, "Ev0OLD")
    clock.advance(timedelta(days=8))
    first_sighting(store, "Ev0NEW")
    assert forget_events_before(store, days=7) == 1
    assert first_sighting(store, "Ev0NEW") is False and first_sighting(store, "Ev0OLD") is True


def test_the_first_recorded_triage_card_wins(store: Store) -> None:
    f.seed(store)
    key = f.open_request(store).key
    assert request_card_place(store, key) is None
    first = CardPlace("C0TRIAGE", "1700000000.000100")
    assert record_request_card(store, key, first) == first
    assert record_request_card(store, key, CardPlace("C0TRIAGE", "1700000000.000200")) == first
    assert request_card_place(store, key) == first
    assert count(store, SlackCard) == 1
    assert request_of_card(store, first) == key
    assert request_of_card(store, CardPlace("C0TRIAGE", "1700000000.000200")) is None


def test_an_approval_card_is_kept_apart_from_its_requests_card(store: Store) -> None:
    f.seed(store)
    key = f.open_request(store, invoice="INV-100", disputed="120.00").key
    record_request_card(store, key, CardPlace("C0TRIAGE", "1700000000.000100"))
    services.claim(store, key, actor=f.AGENT)
    approval = services.request_approval(store, key, kind="credit", amount=parse_amount("50.00", "EUR"),
                                         reason="goodwill", actor=f.AGENT)
    assert approval_card_place(store, approval.id) is None
    place = CardPlace("C0APPROVE", "1700000000.000300")
    assert record_approval_card(store, approval.id, key, place) == place
    assert record_approval_card(store, approval.id, key, CardPlace("C0APPROVE", "1.2")) == place
    assert approval_card_place(store, approval.id) == place
    assert request_card_place(store, key) == CardPlace("C0TRIAGE", "1700000000.000100")


@pytest.mark.parametrize("place", [CardPlace("", "1.2"), CardPlace("C1", ""), CardPlace("C" * 33, "1.2")])
def test_a_malformed_place_is_refused_and_nothing_is_stored(store: Store, place: CardPlace) -> None:
    f.seed(store)
    key = f.open_request(store).key
    with pytest.raises(InvalidInput):
        record_request_card(store, key, place)
    assert count(store, SlackCard) == 0


def test_an_unknown_request_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="SR-99"):
        record_request_card(store, "SR-99", CardPlace("C1", "1.2"))
    with pytest.raises(NotFound, match="SR-99"):
        request_card_place(store, "SR-99")
    assert count(store, SlackCard) == 0
