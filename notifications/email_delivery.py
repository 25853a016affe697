"""The e-mail delivery worker: due outbox rows in, mail out, each row marked.

One row goes through a short pipeline of named steps: read what the mail
says (:func:`outgoing_email`), refuse what must not be sent (an invalid
recipient; automatic mail to an address that bounces), render it, hand it to
the transport, and mark the row. Nothing is dropped: a row that cannot be
sent stays in the outbox as ``failed`` with its reason, for a person.

Outcomes, by cause:

- relay down, busy or ``4xx``: retried, 30 s doubling up to an hour apart,
  and given up after :data:`GIVE_UP_AFTER_ATTEMPTS` (about five days, like
  an MTA's queue lifetime);
- ``5xx`` for the recipient or the message, an invalid recipient, a template
  or render error, a request, reply or digest that no longer exists: failed
  at once;
- an acknowledgment or resolution notice to an address our mail bounced
  from: failed as "held back" (a reply an agent wrote is still sent: they
  may know the address works again).

The envelope sender is our support address, not the null sender RFC 3834
suggests for automatic mail: bounces must come back, because the intake
gateway reads them to mark addresses failing, and it files them as bounces,
never as new requests.

Digest copies (topic ``digest``) belong to no request: they take a path of
their own (:func:`_deliver_digest`, rendered by ``notifications.digest_mail``)
and share only the hand-over to the transport and its outcomes.
"""

from __future__ import annotations

import logging
import multiprocessing.synchronize
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal, Union

from jinja2 import TemplateError

from core.errors import InvalidInput, NotFound, StoreUnavailable
from core.services.digests import get_digest
from core.services.outbox import (
    OutboxItem,
    OutgoingEmail,
    PassLease,
    claim_due,
    extend_lease,
    mark_failed,
    mark_retry,
    mark_sent,
    outgoing_email,
    release,
    retry_delay,
)
from core.store import Store
from notifications.digest_mail import build_digest_message
from notifications.mail_render import RenderError, build_message, envelope_problem
from notifications.mail_transport import PermanentFailure, TemporaryFailure, Transport

log = logging.getLogger(__name__)

CHANNEL = "email"
BATCH_SIZE = 50
# 30 s doubling reaches the hourly cap after 8 attempts; ~120 attempts is five days.
GIVE_UP_AFTER_ATTEMPTS = 120

Outcome = Literal["sent", "retried", "failed"]
StopFlag = Union[threading.Event, multiprocessing.synchronize.Event]


@dataclass(frozen=True)
class DeliveryReport:
    """What one pass did: rows claimed, and how each ended."""

    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0


def deliver_due_email(store: Store, transport: Transport, limit: int = BATCH_SIZE,
                      stopping: Callable[[], bool] = lambda: False) -> DeliveryReport:
    """Claim the due e-mail rows and deliver each; blocking, so async callers run it in a thread.

    Once ``stopping()`` says so, the mail in hand is finished and the rows
    not tried are released: due again at once, for this process when it
    comes back or for another one now (a relay that answers slowly would
    otherwise hold a stopping serve for a whole batch).
    """
    items = claim_due(store, CHANNEL, limit)
    lease = PassLease()
    outcomes: Counter[str] = Counter()
    for position, item in enumerate(items):
        if stopping():
            release(store, items[position:])
            break
        if lease.due():  # a relay that answers slowly can outlast the lease
            extend_lease(store, items[position:])
            lease.renewed()
        outcomes[_deliver_guarded(store, transport, item)] += 1
    return DeliveryReport(len(items), outcomes["sent"], outcomes["retried"], outcomes["failed"])


def deliver_one(store: Store, transport: Transport, item: OutboxItem) -> Outcome:
    """Read, check, render, send and mark one claimed row."""
    if item.topic == "digest":
        return _deliver_digest(store, transport, item)
    try:
        email = outgoing_email(store, item)
    except (NotFound, InvalidInput) as exc:
        return _give_up(store, item, f"cannot make the {item.topic} mail: {exc}")
    refusal = refusal_of(email)
    if refusal is not None:
        return _give_up(store, item, refusal)
    try:
        message = build_message(email, store.settings)
    except (TemplateError, RenderError, ValueError) as exc:
        return _give_up(store, item, f"cannot render the {item.topic} mail: {exc.__class__.__name__}: {exc}")
    return _hand_over(store, transport, item, message, email.to_addresses, email.request_key)


def refusal_of(email: OutgoingEmail) -> str | None:
    """Why this mail must not be sent at all, or None. Pure."""
    if not email.to_addresses:
        return "invalid recipient: the mail has no recipient"
    for address in email.to_addresses:
        problem = envelope_problem(address)
        if problem is not None:
            return f"invalid recipient: {problem}"
    if email.is_automatic and email.is_recipient_failing:
        # An automatic answer to a bouncing address only feeds a bounce loop.
        return f"held back: {email.failing_addresses[0]} bounced our mail"
    return None


def _deliver_digest(store: Store, transport: Transport, item: OutboxItem) -> Outcome:
    """A copy of a recorded digest for the one address its row names."""
    digest_id, to = item.payload.get("digest_id"), item.payload.get("to")
    if not isinstance(digest_id, int) or not isinstance(to, str):
        return _give_up(store, item, f"cannot make the digest mail: outbox row {item.id} names no digest "
                                     f"and address (payload {item.payload!r})")
    try:
        digest = get_digest(store, digest_id)
    except NotFound as exc:
        return _give_up(store, item, f"cannot make the digest mail: {exc}")
    problem = envelope_problem(to)
    if problem is not None:
        return _give_up(store, item, f"invalid recipient: {problem}")
    try:
        message = build_digest_message(digest, to, store.settings, item.id, store.clock.now())
    except (RenderError, ValueError) as exc:
        return _give_up(store, item, f"cannot render the digest mail: {exc.__class__.__name__}: {exc}")
    return _hand_over(store, transport, item, message, (to,), f"digest {digest.id}")


def _hand_over(store: Store, transport: Transport, item: OutboxItem, message: EmailMessage,
               recipients: Sequence[str], what: str) -> Outcome:
    """Give the finished mail to the transport and mark the row by its answer."""
    try:
        transport.send(message, store.settings.support_addresses[0], recipients)
    except TemporaryFailure as exc:
        return _retry(store, item, str(exc))
    except PermanentFailure as exc:
        return _give_up(store, item, str(exc))
    mark_sent(store, item.id)
    log.info("sent the %s mail of %s (outbox row %d)", item.topic, what, item.id)
    return "sent"


# Woken by a change, the worker waits this long before its pass, so that a burst of changes (fifty
# clicks in Slack, a batch of mail filed) becomes one pass, not one each: a pass is a write transaction.
WAKE_COALESCE_SECONDS = 0.1


def run_email_delivery(
    store: Store,
    transport: Transport,
    stop: StopFlag,
    wait_for_wake: Callable[[float], bool],
    interval: float = 2.0,
) -> None:
    """Deliver until ``stop`` is set: a pass, then wait ``interval`` or until woken; blocking, for a thread.

    ``wait_for_wake(seconds)`` returns True as soon as someone wrote to the
    outbox, including during the pass just made (the wake is kept until it
    is asked for), so that mail never waits for the next interval. A full
    batch means more may be due, so the next pass starts at once. When
    ``stop`` is set during a pass, the mail in hand is finished and the rest
    given back, so no row is left claimed (it would wait out its lease).
    """
    while not stop.is_set():
        report = _one_pass(store, transport, stop)
        if report.claimed >= BATCH_SIZE:
            continue
        if wait_for_wake(interval) and not stop.is_set():
            stop.wait(WAKE_COALESCE_SECONDS)


def _one_pass(store: Store, transport: Transport, stop: StopFlag) -> DeliveryReport:
    """The worker's catch-all: a failed pass is logged and the loop goes on."""
    try:
        return deliver_due_email(store, transport, BATCH_SIZE, stop.is_set)
    except StoreUnavailable as exc:
        log.warning("e-mail delivery paused: %s", exc)
    except Exception:
        log.exception("e-mail delivery pass failed; trying again shortly")
    return DeliveryReport()


def _deliver_guarded(store: Store, transport: Transport, item: OutboxItem) -> Outcome:
    """One bad row must not hold up the rows behind it; a lost database must stop the pass."""
    try:
        return deliver_one(store, transport, item)
    except StoreUnavailable:
        raise
    except Exception as exc:
        log.exception("outbox row %d (%s): unexpected error while delivering", item.id, item.topic)
        return _retry(store, item, f"unexpected error: {exc.__class__.__name__}")


def _retry(store: Store, item: OutboxItem, error: str) -> Outcome:
    if item.attempts >= GIVE_UP_AFTER_ATTEMPTS:
        return _give_up(store, item, f"gave up after {item.attempts} attempts; the last: {error}")
    delay = retry_delay(item.attempts)
    mark_retry(store, item.id, error, delay)
    log.info("the %s mail of outbox row %d will be retried in %d s: %s", item.topic, item.id, delay, error)
    return "retried"


def _give_up(store: Store, item: OutboxItem, error: str) -> Outcome:
    mark_failed(store, item.id, error)
    log.warning("the %s mail of outbox row %d was not sent: %s", item.topic, item.id, error)
    return "failed"
