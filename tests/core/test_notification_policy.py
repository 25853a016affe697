"""Which notifications each event causes: pure, so the whole table is checked here."""

from __future__ import annotations

from core.notification_policy import OutboxDraft, outbox_for


def drafts(kind: str, data: dict, *, slack: bool = True, channel: str = "email") -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(d.channel, d.topic) for d in outbox_for(kind, data, request_key="SR-1", channel=channel,
                                                      slack_enabled=slack)]


def test_a_new_mail_request_is_acknowledged_carded_and_its_mail_mirrored_card_first() -> None:
    assert drafts("request.opened", {"message_id": 7}) == [
        ("email", "acknowledgment"), ("slack", "triage_card"), ("slack", "thread_mirror")]
    assert outbox_for("request.opened", {"message_id": 7}, request_key="SR-1", channel="email",
                      slack_enabled=True)[-1] == OutboxDraft("slack", "thread_mirror", {"request_key": "SR-1",
                                                                                        "message_id": 7})


def test_without_slack_only_mail_is_written() -> None:
    assert drafts("request.opened", {"message_id": 7}, slack=False) == [("email", "acknowledgment")]
    assert drafts("request.claimed", {}, slack=False) == []


def test_no_acknowledgment_when_told_not_to_or_for_requests_not_from_mail() -> None:
    assert ("email", "acknowledgment") not in drafts("request.opened", {"message_id": 7, "acknowledge": False})
    assert ("email", "acknowledgment") not in drafts("request.opened", {"message_id": 7}, channel="slack")


def test_customer_mail_on_a_request_updates_the_card_and_is_mirrored() -> None:
    for kind in ("message.inbound", "message.automatic", "request.customer_replied"):
        assert drafts(kind, {"message_id": 9}) == [("slack", "triage_card"), ("slack", "thread_mirror")]


def test_notes_change_no_card_and_mail_no_one() -> None:
    assert drafts("message.note", {"message_id": 3}) == []


def test_replies_and_resolutions_are_mailed_and_every_change_redraws_the_card() -> None:
    assert drafts("message.outbound", {"message_id": 4}) == [("email", "reply"), ("slack", "triage_card")]
    assert drafts("request.resolved", {}) == [("email", "resolution_notice"), ("slack", "triage_card")]
    assert drafts("request.dismissed", {}) == [("slack", "triage_card")]


def test_approvals_have_their_own_card_and_redraw_the_request_card() -> None:
    assert drafts("approval.requested", {"approval_id": 5}) == [("slack", "approval_card"), ("slack", "triage_card")]


def test_events_without_a_request_notify_nobody() -> None:
    assert outbox_for("mail.quarantined", {}, request_key=None, channel=None, slack_enabled=True) == []
