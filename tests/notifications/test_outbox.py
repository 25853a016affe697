"""The outbox delivery state in ``core.services.outbox``, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest

from core import services
from core.clock import FixedClock
from core.errors import InvalidInput, NotFound
from core.reply_tokens import stable_message_id
from core.services.outbox import (
    LEASE_SECONDS,
    OutboxItem,
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
from tests import factories as f
from tests.notifications import (
    DOMAIN,
    mail_settings,
    mark_failing,
    open_by_email,
    outbox_rows,
    token_of,
    with_settings,
)


@pytest.fixture
def mstore(store: Store, tmp_path: Path) -> Store:
    return with_settings(store, mail_settings(store, tmp_path))


def test_retry_delay_doubles_from_thirty_seconds_up_to_an_hour() -> None:
    assert [retry_delay(n) for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert retry_delay(0) == 30
    assert retry_delay(10_000) == 3600


def test_claim_leases_due_rows_oldest_first(mstore: Store, clock: FixedClock) -> None:
    open_by_email(mstore, message_id="<a@acme.test>")
    open_by_email(mstore, message_id="<b@acme.test>", sender="ops@pending.test")
    first, second = outbox_rows(mstore)

    claimed = claim_due(mstore, "email", limit=10, lease_seconds=300)

    assert [(i.id, i.topic, i.attempts) for i in claimed] == [(first.id, "acknowledgment", 1), (second.id, "acknowledgment", 1)]
    assert claimed[0].payload == {"request_key": "SR-1"}
    assert claimed[0].request_id == first.request_id
    rows = outbox_rows(mstore)
    assert {r.next_attempt_at for r in rows} == {clock.now() + timedelta(seconds=300)}
    assert {r.status for r in rows} == {"pending"}
    assert claim_due(mstore, "email") == []  # leased: nobody else gets them


def test_claim_respects_limit_and_channel(mstore: Store) -> None:
    for n in range(3):
        open_by_email(mstore, message_id=f"<{n}@acme.test>")
    assert claim_due(mstore, "slack") == []
    assert [i.payload["request_key"] for i in claim_due(mstore, "email", limit=2)] == ["SR-1", "SR-2"]
    assert [i.payload["request_key"] for i in claim_due(mstore, "email", limit=2)] == ["SR-3"]


def test_a_crashed_send_comes_due_again_after_the_lease(mstore: Store, clock: FixedClock) -> None:
    open_by_email(mstore)
    claim_due(mstore, "email", lease_seconds=300)  # ...and the worker dies

    clock.advance(timedelta(seconds=299))
    assert claim_due(mstore, "email") == []
    clock.advance(timedelta(seconds=1))
    again = claim_due(mstore, "email")

    assert [i.attempts for i in again] == [2]


def test_released_rows_are_due_at_once_and_the_attempt_is_not_counted(mstore: Store, clock: FixedClock) -> None:
    for n in range(3):
        open_by_email(mstore, message_id=f"<{n}@acme.test>")
    one, two, three = claim_due(mstore, "email", lease_seconds=300)
    mark_sent(mstore, one.id)

    release(mstore, [one, two, three])  # the worker stops after the first

    sent, *given_back = outbox_rows(mstore)
    assert sent.status == "sent" and sent.attempts == 1
    assert [(r.status, r.attempts, r.next_attempt_at) for r in given_back] == [("pending", 0, clock.now())] * 2
    assert [(i.id, i.attempts) for i in claim_due(mstore, "email")] == [(two.id, 1), (three.id, 1)]


def test_a_row_claimed_again_after_our_lease_ran_out_is_not_released(mstore: Store, clock: FixedClock) -> None:
    open_by_email(mstore)
    (ours,) = claim_due(mstore, "email", lease_seconds=300)
    clock.advance(timedelta(seconds=300))
    (theirs,) = claim_due(mstore, "email", lease_seconds=300)  # another worker, after the lease

    release(mstore, [ours])

    (row,) = outbox_rows(mstore)
    assert (row.attempts, row.next_attempt_at) == (2, clock.now() + timedelta(seconds=300))
    assert theirs.attempts == 2


def test_a_long_pass_keeps_the_rows_ahead_of_it_and_only_those(mstore: Store, clock: FixedClock) -> None:
    for n in range(4):
        open_by_email(mstore, message_id=f"<{n}@acme.test>")
    one, two, three, four = claim_due(mstore, "email")  # the default lease
    mark_sent(mstore, two.id)
    clock.advance(timedelta(seconds=LEASE_SECONDS // 2))

    extend_lease(mstore, [two, three, four])  # the worker is at the second row; the first one hangs

    clock.advance(timedelta(seconds=LEASE_SECONDS // 2))
    assert [i.id for i in claim_due(mstore, "email")] == [one.id]  # its lease ran out; the others are still held
    clock.advance(timedelta(seconds=LEASE_SECONDS // 2))
    assert [i.id for i in claim_due(mstore, "email")] == [three.id, four.id]
    assert [r.status for r in outbox_rows(mstore)] == ["pending", "sent", "pending", "pending"]


def test_a_row_claimed_again_by_another_worker_keeps_its_new_lease(mstore: Store, clock: FixedClock) -> None:
    open_by_email(mstore)
    (ours,) = claim_due(mstore, "email", lease_seconds=60)
    clock.advance(timedelta(seconds=60))
    claim_due(mstore, "email", lease_seconds=60)  # another worker
    clock.advance(timedelta(seconds=10))

    extend_lease(mstore, [ours], lease_seconds=600)

    (row,) = outbox_rows(mstore)
    assert row.next_attempt_at == clock.now() + timedelta(seconds=50)


def test_a_pass_renews_its_lease_when_half_of_it_has_gone_by() -> None:
    now = [100.0]
    lease = PassLease(60, clock=lambda: now[0])
    now[0] += 29.9
    assert not lease.due()
    now[0] += 0.1
    assert lease.due()
    lease.renewed()
    assert not lease.due()


def test_mark_sent_retry_and_failed(mstore: Store, clock: FixedClock) -> None:
    for n in range(3):
        open_by_email(mstore, message_id=f"<{n}@acme.test>")
    one, two, three = claim_due(mstore, "email")

    mark_retry(mstore, one.id, "451 try later", 60)
    mark_sent(mstore, two.id)
    mark_failed(mstore, three.id, "550 no such user " + "x" * 5000)

    retried, sent, failed = outbox_rows(mstore)
    assert (retried.status, retried.last_error, retried.next_attempt_at) == (
        "pending", "451 try later", clock.now() + timedelta(seconds=60))
    assert (sent.status, sent.sent_at, sent.last_error) == ("sent", clock.now(), None)
    assert failed.status == "failed" and failed.last_error.startswith("550 no such user")
    assert len(failed.last_error) == 2000
    clock.advance(timedelta(seconds=60))
    assert [i.id for i in claim_due(mstore, "email")] == [one.id]


def test_a_sent_row_stays_sent_whatever_a_late_worker_reports(mstore: Store) -> None:
    open_by_email(mstore)
    (item,) = claim_due(mstore, "email")
    mark_sent(mstore, item.id)

    mark_retry(mstore, item.id, "timed out", 30)
    mark_failed(mstore, item.id, "550")

    (row,) = outbox_rows(mstore)
    assert (row.status, row.last_error) == ("sent", None)


def test_marking_an_unknown_row_is_refused(mstore: Store) -> None:
    with pytest.raises(NotFound):
        mark_sent(mstore, 999)


def test_two_claimers_at_once_never_share_a_row(mstore: Store) -> None:
    for n in range(20):
        open_by_email(mstore, message_id=f"<{n}@acme.test>")
    barrier = threading.Barrier(2)
    results: list[list[int]] = [[], []]

    def claimer(slot: int) -> None:
        barrier.wait()
        while batch := claim_due(mstore, "email", limit=3):
            results[slot].extend(i.id for i in batch)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    everything = results[0] + results[1]
    assert sorted(everything) == [r.id for r in outbox_rows(mstore)]
    assert len(set(everything)) == 20


# --- the e-mail view --------------------------------------------------------------------------


def test_acknowledgment_view_answers_the_first_customer_mail(mstore: Store, clock: FixedClock) -> None:
    f.seed(mstore)
    view = open_by_email(mstore, message_id="<m1@acme.test>", references=("<r0@acme.test>",))
    services.add_inbound_message(mstore, view.key, _mail("<m2@acme.test>"))
    (item,) = claim_due(mstore, "email")

    email = outgoing_email(mstore, item)

    token = token_of(mstore, "SR-1")
    assert email.topic == "acknowledgment" and email.is_automatic
    assert email.request_key == "SR-1"
    assert email.subject == "Re: Charged twice [SR-1]"
    assert email.request_subject == "Charged twice"
    assert email.to_addresses == ("jane@acme.test",)
    assert email.customer_name == "Acme Verified Ltd"
    assert email.reply_token == token
    assert email.message_id == stable_message_id(token, DOMAIN, f"outbox-{item.id}")
    assert email.in_reply_to == "<m1@acme.test>"
    assert email.references == ("<r0@acme.test>", "<m1@acme.test>")
    assert (email.body_text, email.author_name, email.resolution_note) == (None, None, None)
    assert email.failing_addresses == () and not email.is_recipient_failing
    assert email.date == clock.now()
    assert outgoing_email(mstore, item).message_id == email.message_id  # a retry keeps it


def test_reply_view_is_the_stored_reply(mstore: Store) -> None:
    f.seed(mstore)
    open_by_email(mstore, message_id="<m1@acme.test>")
    stored = services.reply(mstore, "SR-1", "We refunded the second charge.", actor=f.AGENT)
    reply_item = [i for i in claim_due(mstore, "email") if i.topic == "reply"][0]

    email = outgoing_email(mstore, reply_item)

    assert not email.is_automatic
    assert email.message_id == stored.message_id
    assert email.in_reply_to == "<m1@acme.test>"
    assert email.references == ("<m1@acme.test>",)
    assert email.subject == stored.subject == "Re: Charged twice [SR-1]"
    assert email.body_text == "We refunded the second charge."
    assert email.author_name == "Alice Agent"
    assert email.to_addresses == ("jane@acme.test",)


def test_resolution_view_answers_the_latest_customer_mail_with_its_own_note(mstore: Store) -> None:
    f.seed(mstore)
    view = open_by_email(mstore, message_id="<m1@acme.test>")
    services.add_inbound_message(mstore, view.key, _mail("<m2@acme.test>", references=("<m1@acme.test>",)))
    services.claim(mstore, "SR-1", actor=f.AGENT)
    services.resolve(mstore, "SR-1", note="Refunded EUR 20.", actor=f.AGENT)
    services.reopen(mstore, "SR-1", actor=f.AGENT)
    services.resolve(mstore, "SR-1", note="Second look: refunded again.", actor=f.AGENT)
    notices = [i for i in claim_due(mstore, "email") if i.topic == "resolution_notice"]

    first, second = (outgoing_email(mstore, i) for i in notices)

    assert first.resolution_note == "Refunded EUR 20."
    assert second.resolution_note == "Second look: refunded again."
    assert first.is_automatic
    assert first.in_reply_to == "<m2@acme.test>"
    assert first.references == ("<m1@acme.test>", "<m2@acme.test>")
    assert first.message_id != second.message_id


def test_view_names_failing_recipients(mstore: Store) -> None:
    open_by_email(mstore)
    mark_failing(mstore, "jane@acme.test")
    (item,) = claim_due(mstore, "email")

    email = outgoing_email(mstore, item)

    assert email.failing_addresses == ("jane@acme.test",)
    assert email.is_recipient_failing


def test_rows_that_cannot_become_mail_are_refused(mstore: Store) -> None:
    open_by_email(mstore)
    (item,) = claim_due(mstore, "email")

    with pytest.raises(InvalidInput, match="no e-mail is made for topic 'triage_card'"):
        outgoing_email(mstore, OutboxItem(item.id, "email", "triage_card", item.request_id, {}, 1))
    with pytest.raises(NotFound, match="request"):
        outgoing_email(mstore, OutboxItem(item.id, "email", "acknowledgment", None, {"request_key": "SR-9"}, 1))
    with pytest.raises(NotFound, match="reply it should send"):
        outgoing_email(mstore, OutboxItem(item.id, "email", "reply", item.request_id, {"message_id": 1}, 1))


def _mail(message_id: str, references: tuple[str, ...] = ()) -> services.InboundMail:
    return services.InboundMail(from_address="jane@acme.test", subject="Re: Charged twice", body_text="More.",
                                message_id=message_id, references=references,
                                in_reply_to=references[-1] if references else None)
