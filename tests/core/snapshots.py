"""Helpers for the service and authorization tests: whole-store snapshots, and what a call wrote.

A refusal must leave the store exactly as it was, so :func:`unchanged` compares
every row of every table before and after. :func:`events_after` reads the audit
rows a call appended, so a test can say "exactly one event, with this data".
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from core.models import Base, Event, OutboxMessage, Request
from core.store import Store

Snapshot = dict[str, list[tuple[Any, ...]]]


def snapshot(store: Store) -> Snapshot:
    """Every row of every table, as tuples ordered by primary key."""
    with store.read() as session:
        return {
            table.name: [tuple(row) for row in session.execute(select(table).order_by(*table.primary_key.columns))]
            for table in Base.metadata.sorted_tables
        }


@contextmanager
def unchanged(store: Store) -> Iterator[None]:
    """Assert that the block changes no row of any table (use it outside ``pytest.raises``)."""
    before = snapshot(store)
    yield
    after = snapshot(store)
    changed = sorted(name for name in before if before[name] != after[name])
    assert changed == [], f"tables changed by a refused call: {changed}"


@dataclass(frozen=True)
class Written:
    """One audit event, with its request named by key."""

    kind: str
    request: str | None
    actor: str
    data: dict[str, Any]


def last_seq(store: Store) -> int:
    with store.read() as session:
        return int(session.execute(select(func.coalesce(func.max(Event.seq), 0))).scalar_one())


def events_after(store: Store, seq: int) -> list[Written]:
    """The events appended after ``seq``, oldest first."""
    with store.read() as session:
        rows = session.execute(
            select(Event.kind, Request.number, Event.actor, Event.data)
            .outerjoin(Request, Request.id == Event.request_id)
            .where(Event.seq > seq)
            .order_by(Event.seq)
        ).all()
    return [Written(kind, f"SR-{number}" if number is not None else None, actor, json.loads(data))
            for kind, number, actor, data in rows]


def outbox_of(store: Store, key: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(channel, topic, payload) of every outbox row of one request, oldest first."""
    number = int(key.removeprefix("SR-"))
    with store.read() as session:
        rows = session.execute(
            select(OutboxMessage.channel, OutboxMessage.topic, OutboxMessage.payload)
            .join(Request, Request.id == OutboxMessage.request_id)
            .where(Request.number == number)
            .order_by(OutboxMessage.id)
        ).all()
    return [(channel, topic, json.loads(payload)) for channel, topic, payload in rows]
