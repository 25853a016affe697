"""The lifecycle table: every allowed transition, and every refused one, as pure function calls."""

from __future__ import annotations

import pytest

from core.errors import TransitionRefused
from core.lifecycle import TRANSITIONS, Action, Status, next_status

S = Status

EXPECTED = {
    (Action.CLAIM, S.NEW): S.ASSIGNED,
    (Action.ASSIGN, S.NEW): S.ASSIGNED,
    (Action.ASSIGN, S.ASSIGNED): S.ASSIGNED,
    (Action.ASSIGN, S.WAITING_ON_CUSTOMER): S.WAITING_ON_CUSTOMER,
    (Action.ASSIGN, S.PENDING_APPROVAL): S.PENDING_APPROVAL,
    (Action.WAIT_ON_CUSTOMER, S.ASSIGNED): S.WAITING_ON_CUSTOMER,
    (Action.CUSTOMER_REPLIED, S.WAITING_ON_CUSTOMER): S.ASSIGNED,
    (Action.CUSTOMER_REPLIED, S.RESOLVED): S.ASSIGNED,
    (Action.CUSTOMER_REPLIED, S.NEW): S.NEW,
    (Action.CUSTOMER_REPLIED, S.ASSIGNED): S.ASSIGNED,
    (Action.CUSTOMER_REPLIED, S.PENDING_APPROVAL): S.PENDING_APPROVAL,
    (Action.REQUEST_APPROVAL, S.ASSIGNED): S.PENDING_APPROVAL,
    (Action.APPROVE, S.PENDING_APPROVAL): S.ASSIGNED,
    (Action.REJECT, S.PENDING_APPROVAL): S.ASSIGNED,
    (Action.RESOLVE, S.ASSIGNED): S.RESOLVED,
    (Action.REOPEN, S.RESOLVED): S.ASSIGNED,
    (Action.CLOSE, S.RESOLVED): S.CLOSED,
    (Action.MERGE, S.NEW): S.CLOSED,
    (Action.MERGE, S.ASSIGNED): S.CLOSED,
    (Action.MERGE, S.WAITING_ON_CUSTOMER): S.CLOSED,
    (Action.DISMISS, S.NEW): S.CLOSED,
    (Action.DISMISS, S.ASSIGNED): S.CLOSED,
    (Action.DISMISS, S.WAITING_ON_CUSTOMER): S.CLOSED,
}

ALL_PAIRS = [(a, s) for a in Action for s in Status]


@pytest.mark.parametrize(("action", "state"), sorted(EXPECTED, key=str))
def test_allowed_transition(action: Action, state: Status) -> None:
    assert next_status("SR-1", state, action) == EXPECTED[(action, state)]


@pytest.mark.parametrize(("action", "state"), [p for p in ALL_PAIRS if p not in EXPECTED])
def test_refused_transition_names_the_current_state(action: Action, state: Status) -> None:
    with pytest.raises(TransitionRefused) as refused:
        next_status("SR-7", state, action)
    message = str(refused.value)
    assert message.startswith(f"SR-7 is {state.value}")
    assert action.value.replace("_", " ") in message


def test_table_is_exactly_the_drawn_lifecycle() -> None:
    table = {(a, s): t for a, row in TRANSITIONS.items() for s, t in row.items()}
    assert table == EXPECTED


def test_closed_is_terminal() -> None:
    assert all(S.CLOSED not in row for row in TRANSITIONS.values())


def test_resolve_refusal_explains_pending_approval() -> None:
    with pytest.raises(TransitionRefused, match="approval is still pending"):
        next_status("SR-3", S.PENDING_APPROVAL, Action.RESOLVE)


def test_refusal_says_who_changed_it_last() -> None:
    with pytest.raises(TransitionRefused, match="last changed by Bob"):
        next_status("SR-3", S.ASSIGNED, Action.CLAIM, last_change="by Bob at 10:00")
