"""The request lifecycle of DESIGN §4, as a table and a function.

Pure: no database, no clock. The service layer asks :func:`next_status` before
every change and writes the answer together with exactly one event.
"""

from __future__ import annotations

from enum import StrEnum

from core.errors import TransitionRefused


class Status(StrEnum):
    NEW = "new"
    ASSIGNED = "assigned"
    WAITING_ON_CUSTOMER = "waiting_on_customer"
    PENDING_APPROVAL = "pending_approval"
    RESOLVED = "resolved"
    CLOSED = "closed"


class Action(StrEnum):
    CLAIM = "claim"
    ASSIGN = "assign"
    WAIT_ON_CUSTOMER = "wait_on_customer"
    CUSTOMER_REPLIED = "customer_replied"
    REQUEST_APPROVAL = "request_approval"
    APPROVE = "approve"
    REJECT = "reject"
    RESOLVE = "resolve"
    REOPEN = "reopen"
    CLOSE = "close"
    MERGE = "merge"
    DISMISS = "dismiss"


S = Status

# action -> {from: to}. Anything not listed is refused. Reassigning keeps the
# state it finds (an agent can hand over a request that waits on the customer
# or on an approval). A customer reply to a closed request is not a
# transition: the service opens a new request that links to it.
TRANSITIONS: dict[Action, dict[Status, Status]] = {
    Action.CLAIM: {S.NEW: S.ASSIGNED},
    Action.ASSIGN: {
        S.NEW: S.ASSIGNED,
        S.ASSIGNED: S.ASSIGNED,
        S.WAITING_ON_CUSTOMER: S.WAITING_ON_CUSTOMER,
        S.PENDING_APPROVAL: S.PENDING_APPROVAL,
    },
    Action.WAIT_ON_CUSTOMER: {S.ASSIGNED: S.WAITING_ON_CUSTOMER},
    Action.CUSTOMER_REPLIED: {
        S.WAITING_ON_CUSTOMER: S.ASSIGNED,
        S.RESOLVED: S.ASSIGNED,
        # A reply while we still hold the request changes nothing.
        S.NEW: S.NEW,
        S.ASSIGNED: S.ASSIGNED,
        S.PENDING_APPROVAL: S.PENDING_APPROVAL,
    },
    Action.REQUEST_APPROVAL: {S.ASSIGNED: S.PENDING_APPROVAL},
    Action.APPROVE: {S.PENDING_APPROVAL: S.ASSIGNED},
    Action.REJECT: {S.PENDING_APPROVAL: S.ASSIGNED},
    Action.RESOLVE: {S.ASSIGNED: S.RESOLVED},
    Action.REOPEN: {S.RESOLVED: S.ASSIGNED},
    Action.CLOSE: {S.RESOLVED: S.CLOSED},
    Action.MERGE: {S.NEW: S.CLOSED, S.ASSIGNED: S.CLOSED, S.WAITING_ON_CUSTOMER: S.CLOSED},
    # "Not a request" (a thank-you, spam that got through): closed with no resolution and no mail to the sender.
    Action.DISMISS: {S.NEW: S.CLOSED, S.ASSIGNED: S.CLOSED, S.WAITING_ON_CUSTOMER: S.CLOSED},
}

# States in which the SLA clock is stopped.
PAUSED_STATES = frozenset({S.WAITING_ON_CUSTOMER})
# States in which a request counts as done for the backlog.
DONE_STATES = frozenset({S.RESOLVED, S.CLOSED})

_REASONS: dict[tuple[Action, Status], str] = {
    (Action.RESOLVE, S.PENDING_APPROVAL): "an approval is still pending; it must be decided first",
    (Action.CLAIM, S.ASSIGNED): "it is already claimed",
    (Action.REOPEN, S.CLOSED): "closed requests stay closed; a customer reply opens a new request",
}


def allowed_from(action: Action) -> tuple[Status, ...]:
    return tuple(TRANSITIONS[action])


def is_allowed(current: Status | str, action: Action) -> bool:
    return Status(current) in TRANSITIONS[action]


def next_status(key: str, current: Status | str, action: Action, *, last_change: str | None = None) -> Status:
    """The state after ``action``, or :class:`TransitionRefused` naming the current state.

    ``last_change`` ("by Alice at 10:02") is appended to the refusal so the
    loser of a race learns who got there first.
    """
    state = Status(current)
    target = TRANSITIONS[action].get(state)
    if target is not None:
        return target
    allowed = ", ".join(s.value for s in allowed_from(action))
    reason = _REASONS.get((action, state))
    detail = f" ({reason})" if reason else ""
    who = f", last changed {last_change}" if last_change else ""
    raise TransitionRefused(
        f"{key} is {state.value}{who}: cannot {action.value.replace('_', ' ')}{detail}; "
        f"that is allowed only when it is {allowed}"
    )
