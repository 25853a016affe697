"""Which notifications an audit event causes. Pure.

The unit of work asks :func:`outbox_for` for every event it appends and
writes the answer to the outbox in the same transaction, so a notification
exists if and only if its cause was committed. The delivery workers in
``notifications`` decide *how* (post or update a card, render the mail).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class OutboxDraft:
    channel: str  # "slack" or "email"
    topic: str
    payload: dict[str, Any] = field(default_factory=dict)
    # Not delivered before this moment (an SLA alert held until business hours); None: at once.
    not_before: datetime | None = None


# Events after which the request's triage card must show something new.
_CARD_SILENT = frozenset({"message.note"})
# Events that bring customer mail, which is mirrored into the card's thread (the first one too).
_MIRRORED = frozenset({"request.opened", "message.inbound", "message.automatic", "request.customer_replied"})
_EMAIL_BY_KIND = {
    "message.outbound": "reply",
    "request.resolved": "resolution_notice",
    "request.reminded": "waiting_reminder",
}
_SLA_ALERTS = frozenset({"sla.warning", "sla.breached"})
# Events of no request that are sent: a digest made, or re-sent by an admin.
_DIGESTS = frozenset({"digest.made", "digest.resent"})


def outbox_for(
    kind: str, data: dict[str, Any], *, request_key: str | None, channel: str | None, slack_enabled: bool
) -> list[OutboxDraft]:
    """Notifications for one event of ``kind`` on a request opened via ``channel``."""
    drafts: list[OutboxDraft] = []
    if request_key is None:
        return _digest(kind, data, slack_enabled)
    base = {"request_key": request_key}
    if kind == "request.opened" and channel == "email" and data.get("acknowledge", True):
        drafts.append(OutboxDraft("email", "acknowledgment", base))
    elif kind in _EMAIL_BY_KIND:
        drafts.append(OutboxDraft("email", _EMAIL_BY_KIND[kind], {**base, **_message_ref(data)}))
    if not slack_enabled:
        return drafts
    if kind.startswith("approval."):
        drafts.append(OutboxDraft("slack", "approval_card", {**base, "approval_id": data["approval_id"]}))
    # The card first: a message is mirrored into the card's thread, which must exist by then.
    if kind not in _CARD_SILENT:
        drafts.append(OutboxDraft("slack", "triage_card", base))
    if kind in _MIRRORED and "message_id" in data:
        drafts.append(OutboxDraft("slack", "thread_mirror", {**base, "message_id": data["message_id"]}))
    # After the card too: a warning is posted in the card's thread.
    if kind in _SLA_ALERTS and "crossing_id" in data:
        held = data.get("alert_at")
        drafts.append(OutboxDraft("slack", "sla_alert", {**base, "crossing_id": data["crossing_id"]},
                                  not_before=datetime.fromisoformat(held) if isinstance(held, str) else None))
    return drafts


def _message_ref(data: dict[str, Any]) -> dict[str, Any]:
    return {"message_id": data["message_id"]} if "message_id" in data else {}


def _digest(kind: str, data: dict[str, Any], slack_enabled: bool) -> list[OutboxDraft]:
    """A digest goes to the digest channel when the event says so, and to each e-mail address it lists."""
    if kind not in _DIGESTS:
        return []
    ref = {"digest_id": data["digest_id"]}
    drafts = [OutboxDraft("slack", "digest", ref)] if slack_enabled and data.get("slack") else []
    drafts += [OutboxDraft("email", "digest", {**ref, "to": address}) for address in data.get("emails", ())]
    return drafts
