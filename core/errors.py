"""The errors service functions raise.

Every error a user can cause is a :class:`SupportdeskError`: the front ends
turn it into one clear line (an ephemeral Slack reply, an SMTP code, a CLI
message) and log it at INFO. Anything else is a bug and is logged with its
traceback at the single catch-all of each front end.
"""

from __future__ import annotations


class SupportdeskError(Exception):
    """A refusal the user can understand and act on."""

    code = "error"


class InvalidInput(SupportdeskError):
    """An argument or a file row is malformed."""

    code = "invalid_input"


class NotFound(SupportdeskError):
    """The named request, approval, agent, customer or invoice does not exist."""

    code = "not_found"


class PermissionDenied(SupportdeskError):
    """The actor is not allowed to do this (role, limit, own request, KYC)."""

    code = "permission_denied"


class TransitionRefused(SupportdeskError):
    """The request's lifecycle does not allow this action in its current state."""

    code = "transition_refused"


class Conflict(SupportdeskError):
    """Somebody else changed the same thing first; the message says who and how."""

    code = "conflict"


class StoreUnavailable(SupportdeskError):
    """The database cannot be reached or is locked for too long; try again later."""

    code = "store_unavailable"


class StoreBusy(StoreUnavailable):
    """SQLite's write lock is held by another writer: it will be free in moments, so a caller may retry at once."""


class ConnectionLost(StoreUnavailable):
    """The connection to the database broke (it was dropped, or the server restarted): a new one may work at once."""


class ChangeUncertain(StoreUnavailable):
    """The process making the change stopped before it answered: the change may or may not have been made."""

    code = "change_uncertain"
