"""The audit chain proves that nothing was edited, removed, inserted or reordered behind our back.

Each test tampers with the events table with raw SQL, the way someone with
database access would, and checks that verification names the first bad event.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import Connection, text

from cli.main import main
from core import services
from core.audit import GENESIS_HASH, canonical_json, event_hash, verify_chain
from core.clock import FixedClock
from core.models import Event
from core.store import Store
from core.views import RequestView
from tests.conftest import Database
from tests.factories import AGENT, open_request, seed


def verify(store: Store):  # type: ignore[no-untyped-def]
    with store.read() as session:
        return verify_chain(session)


def build_history(store: Store, clock: FixedClock) -> RequestView:
    seed(store)  # events 1-3: three imports
    view = open_request(store)  # 4
    clock.advance(timedelta(minutes=5))
    services.claim(store, view.key, actor=AGENT)  # 5
    services.reply(store, view.key, "Looking into it", actor=AGENT)  # 6
    services.resolve(store, view.key, note="Refunded", actor=AGENT)  # 7
    return view


def insert_forged(conn: Connection, store: Store, *, seq: int, prev: str, actor: str, kind: str,
                  data: dict[str, object], at: datetime) -> None:
    """Insert a well-formed, correctly hashed event the way someone with database access could."""
    text_data = canonical_json(data)
    digest = event_hash(prev, seq=seq, request_id=None, actor=actor, kind=kind, data=text_data, created_at=at)
    conn.execute(
        text("INSERT INTO events (seq, request_id, actor, kind, data, created_at, prev_hash, hash) "
             "VALUES (:s, NULL, :a, :k, :d, :t, :p, :h)"),
        {"s": seq, "a": actor, "k": kind, "d": text_data, "t": at.replace(tzinfo=None) if store.is_sqlite else at,
         "p": prev, "h": digest},
    )


def execute(store: Store, sql: str, **params: object) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(sql), params)


def test_intact_chain_verifies_and_counts_every_event(store: Store, clock: FixedClock) -> None:
    build_history(store, clock)
    result = verify(store)
    assert (result.ok, result.checked, result.tip_seq, result.first_bad_seq) == (True, 7, 7, None)


def test_empty_store_verifies(store: Store) -> None:
    result = verify(store)
    assert (result.ok, result.checked, result.tip_hash) == (True, 0, GENESIS_HASH)


def test_each_event_links_to_the_one_before(store: Store, clock: FixedClock) -> None:
    build_history(store, clock)
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT seq, prev_hash, hash FROM events ORDER BY seq")).all()
    assert rows[0].prev_hash == GENESIS_HASH
    assert all(later.prev_hash == earlier.hash for earlier, later in zip(rows, rows[1:]))


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE events SET data = '{\"note\":\"Nothing\"}' WHERE seq = 5",
        "UPDATE events SET actor = 'agent:UEVIL' WHERE seq = 5",
        "UPDATE events SET kind = 'request.reopened' WHERE seq = 5",
        "UPDATE events SET request_id = NULL WHERE seq = 5",
    ],
    ids=["data", "actor", "kind", "request"],
)
def test_edited_event_is_named(store: Store, clock: FixedClock, sql: str) -> None:
    build_history(store, clock)
    execute(store, sql)
    result = verify(store)
    assert (result.ok, result.first_bad_seq, result.checked) == (False, 5, 4)
    assert "altered" in (result.problem or "")


def test_edited_timestamp_is_named(store: Store, clock: FixedClock) -> None:
    build_history(store, clock)
    earlier = clock.now() - timedelta(hours=3)
    execute(store, "UPDATE events SET created_at = :t WHERE seq = 6",
            t=earlier.replace(tzinfo=None) if store.is_sqlite else earlier)
    result = verify(store)
    assert (result.ok, result.first_bad_seq) == (False, 6)


def test_rehashed_edit_breaks_the_next_link(store: Store, clock: FixedClock) -> None:
    """Someone who recomputes the edited row's own hash still breaks the link from the next row."""
    build_history(store, clock)
    with store.read() as session:
        row = session.get(Event, 5)
        assert row is not None
        data = canonical_json({"forged": True})
        forged = event_hash(row.prev_hash, seq=5, request_id=row.request_id, actor=row.actor, kind=row.kind,
                            data=data, created_at=row.created_at)
    execute(store, "UPDATE events SET data = :d, hash = :h WHERE seq = 5", d=data, h=forged)
    result = verify(store)
    assert (result.ok, result.first_bad_seq) == (False, 6)
    assert "does not link" in (result.problem or "")


def test_deleted_middle_event_is_named(store: Store, clock: FixedClock) -> None:
    build_history(store, clock)
    execute(store, "DELETE FROM events WHERE seq = 4")
    result = verify(store)
    assert (result.ok, result.first_bad_seq) == (False, 4)
    assert "event 4 is missing" in (result.problem or "")


def test_deleted_last_event_is_named(store: Store, clock: FixedClock) -> None:
    build_history(store, clock)
    execute(store, "DELETE FROM events WHERE seq = 7")
    result = verify(store)
    assert (result.ok, result.first_bad_seq) == (False, 7)
    assert "missing from the end" in (result.problem or "")


def test_event_appended_behind_the_service_layer_is_named(store: Store, clock: FixedClock) -> None:
    """A correctly chained forged row at the end still disagrees with the head."""
    build_history(store, clock)
    with store.engine.begin() as conn:
        tip = conn.execute(text("SELECT hash FROM events WHERE seq = 7")).scalar_one()
        insert_forged(conn, store, seq=8, prev=tip, actor="agent:UEVIL", kind="approval.approved",
                      data={"approval_id": 99}, at=clock.now())
    result = verify(store)
    assert (result.ok, result.first_bad_seq) == (False, 8)
    assert "behind the service layer" in (result.problem or "")


def test_event_inserted_in_the_middle_is_named(store: Store, clock: FixedClock) -> None:
    """Shift later rows up by one and slip a well-formed row into the gap."""
    build_history(store, clock)
    with store.engine.begin() as conn:
        for seq in range(7, 4, -1):
            conn.execute(text("UPDATE events SET seq = :n WHERE seq = :o"), {"n": seq + 1, "o": seq})
        prev = conn.execute(text("SELECT hash FROM events WHERE seq = 4")).scalar_one()
        insert_forged(conn, store, seq=5, prev=prev, actor="system", kind="noise", data={}, at=clock.now())
        conn.execute(text("UPDATE audit_head SET last_seq = 8"))
    result = verify(store)
    assert (result.ok, result.first_bad_seq) == (False, 6)


def test_reordered_events_are_named(store: Store, clock: FixedClock) -> None:
    build_history(store, clock)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE events SET seq = -1 WHERE seq = 5"))
        conn.execute(text("UPDATE events SET seq = 5 WHERE seq = 6"))
        conn.execute(text("UPDATE events SET seq = 6 WHERE seq = -1"))
    result = verify(store)
    assert (result.ok, result.first_bad_seq) == (False, 5)


def test_cli_verify_exit_codes(store: Store, clock: FixedClock, database: Database,
                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    build_history(store, clock)
    monkeypatch.setenv("SUPPORTDESK_DATABASE_URL", database.url)
    assert main(["audit", "verify"]) == 0
    assert "7 events checked" in capsys.readouterr().out
    execute(store, "UPDATE events SET data = '{}' WHERE seq = 6")
    assert main(["audit", "verify"]) == 1
    out = capsys.readouterr().out
    assert "BROKEN at event 6" in out and "5 events before it are intact" in out
