"""The hash-chained audit trail.

Each event stores the SHA-256 of the previous event's hash followed by a
canonical encoding of itself, and sequence numbers are gapless. So an edited
row breaks its own hash, a deleted row leaves a gap, an inserted or reordered
row breaks the chain, and a row appended behind our back disagrees with the
chain's head. ``verify`` prints the tip hash so it can be anchored elsewhere
(a ticket, a signed e-mail) if even the head must be trusted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from core.models import AuditHead, Event

GENESIS_HASH = "0" * 64

# Events are only ever written, never changed, so they go in as plain rows, one executemany per unit:
# an ORM object per event (a unit filing a batch of mail appends one per message) cost more than the INSERT.
_INSERT_EVENTS = insert(Event.__table__)
# The head, read and moved as a plain row too: as an ORM object it cost a unit-of-work flush of its own
# at every commit, a good part of what a one-event change (a claim) costs beside its SQL.
_HEAD = AuditHead.__table__
_LOCK_HEAD = select(_HEAD.c.last_seq, _HEAD.c.last_hash).where(_HEAD.c.id == 1).with_for_update()
_MOVE_HEAD = update(_HEAD).where(_HEAD.c.id == 1).values(last_seq=bindparam("seq"), last_hash=bindparam("tip"))


def canonical_json(data: Any) -> str:
    """One spelling for one value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def format_timestamp(moment: datetime) -> str:
    """UTC with microseconds: the precision both databases keep exactly."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(
    prev_hash: str, *, seq: int, request_id: int | None, actor: str, kind: str, data: str, created_at: datetime
) -> str:
    body = canonical_json(
        {
            "seq": seq,
            "request_id": request_id,
            "actor": actor,
            "kind": kind,
            "data": data,
            "created_at": format_timestamp(created_at),
        }
    )
    return hashlib.sha256(prev_hash.encode("ascii") + body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PendingEvent:
    """An event a unit of work will append when it commits."""

    kind: str
    actor: str
    request_id: int | None
    data: dict[str, Any]


def append_events(session: Session, pending: Iterable[PendingEvent], now: datetime) -> list[int]:
    """Append events to the chain inside the caller's transaction; returns their sequence numbers, in order.

    The head row is locked (``FOR UPDATE`` on PostgreSQL; SQLite's write
    transaction already excludes other writers), so concurrent transactions
    append one after another and the chain never forks. Callers lock the head
    last, after every other row, so the lock order is the same everywhere.
    """
    items = list(pending)
    if not items:
        return []
    session.flush()  # every other row first: the head is locked last
    connection = session.connection()
    seq, prev = connection.execute(_LOCK_HEAD).one()
    rows = []
    for item in items:
        seq += 1
        data = canonical_json(item.data)
        digest = event_hash(
            prev, seq=seq, request_id=item.request_id, actor=item.actor, kind=item.kind, data=data, created_at=now
        )
        rows.append({"seq": seq, "request_id": item.request_id, "actor": item.actor, "kind": item.kind, "data": data,
                     "created_at": now, "prev_hash": prev, "hash": digest})
        prev = digest
    connection.execute(_INSERT_EVENTS, rows)
    connection.execute(_MOVE_HEAD, {"seq": seq, "tip": prev})
    return [row["seq"] for row in rows]


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    tip_seq: int
    tip_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None


def verify_chain(session: Session, batch: int = 5000) -> VerifyResult:
    """Walk every event in order and check sequence, links and hashes.

    Streams in batches, so memory stays flat however long the trail is.
    """
    expected_seq, prev, checked = 1, GENESIS_HASH, 0
    columns = (Event.seq, Event.request_id, Event.actor, Event.kind, Event.data, Event.created_at, Event.prev_hash, Event.hash)
    last_seq = 0
    while True:
        rows = session.execute(select(*columns).where(Event.seq > last_seq).order_by(Event.seq).limit(batch)).all()
        if not rows:
            break
        for seq, request_id, actor, kind, data, created_at, prev_hash, stored_hash in rows:
            if seq != expected_seq:
                missing = f"event {expected_seq} is missing" if seq > expected_seq else f"event {seq} is out of order"
                return VerifyResult(False, checked, seq, prev, expected_seq, missing + f" (found event {seq} next)")
            if prev_hash != prev:
                return VerifyResult(
                    False, checked, seq, prev, seq,
                    f"event {seq} does not link to event {seq - 1} (a row before it was edited, inserted or removed)",
                )
            digest = event_hash(
                prev, seq=seq, request_id=request_id, actor=actor, kind=kind, data=data, created_at=created_at
            )
            if digest != stored_hash:
                return VerifyResult(False, checked, seq, prev, seq, f"event {seq} was altered: its contents do not match its hash")
            prev, expected_seq, checked, last_seq = stored_hash, seq + 1, checked + 1, seq
    head = session.get(AuditHead, 1)
    if head is None:
        return VerifyResult(False, checked, last_seq, prev, None, "the audit head row is missing")
    if head.last_seq != last_seq or head.last_hash != prev:
        if head.last_seq > last_seq:
            problem = f"events {last_seq + 1} to {head.last_seq} are missing from the end of the trail"
            return VerifyResult(False, checked, last_seq, prev, last_seq + 1, problem)
        problem = f"event {head.last_seq + 1} was appended behind the service layer's back (the head ends at {head.last_seq})"
        return VerifyResult(False, checked, last_seq, prev, head.last_seq + 1, problem)
    return VerifyResult(True, checked, last_seq, prev)
