"""SLA sweep and metrics at a large backlog, on SQLite.

Builds requests with a realistic event history by bulk insert (the service
layer would take an hour for a million), then prints, in one run:

1. the sweep time when 100 requests cross a threshold, at 100,000 and at
   1,000,000 open requests, next to a full scan of the backlog measured on the
   same data (what a sweep without the index would at least cost), and the
   query plan the sweep relies on;
2. after most of the history is resolved, the full metrics for one day and
   for 30 days, and the plans of their main queries.

Usage: python bench/sla_metrics.py [--small N] [--large N] [--db PATH]
The database file is removed at the end unless --keep is given.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import event, func, insert, select, text, update

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import migrate  # noqa: E402
from core.clock import FixedClock  # noqa: E402
from core.db import make_engine  # noqa: E402
from core.models import Agent, Counter, Event, Request  # noqa: E402
from core.services import sla  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.store import Store  # noqa: E402

UTC = timezone.utc
# A Monday afternoon: the crossing requests were opened at 09:00, their
# first-response warning (75 % of 8 business hours) falls due at 15:00.
NOW = datetime(2026, 6, 15, 15, 1, tzinfo=UTC)
MORNING = datetime(2026, 6, 15, 9, 0, tzinfo=UTC)
CHUNK = 20_000
HISTORY_DAYS = 730
CATEGORIES = ["technical"] * 4 + ["billing_dispute"] * 2 + ["account"] * 2 + ["general"] * 2
PRIORITIES = ["urgent"] + ["high"] * 3 + ["normal"] * 10 + ["low"] * 3
OPEN_STATES = ["new"] * 2 + ["assigned"] * 6 + ["waiting_on_customer"] * 2


def data(payload: dict) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


class Builder:
    """Bulk-loads requests and their events; numbers and event sequence carry on across calls."""

    def __init__(self, store: Store, seed: int = 7) -> None:
        self.store = store
        self.rng = random.Random(seed)
        self.number = 0
        self.seq = 0

    def add_open(self, count: int) -> None:
        """``count`` open requests created over the last two years, next checks in the future.

        A desk reaches a million requests over years, not weeks: about 1,400
        a day here, so a 30-day window holds some 40,000 of them.
        """
        with self.store.engine.begin() as conn:
            agent_id = conn.execute(select(Agent.id)).scalar_one()
        self._sync_seq()
        for start in range(0, count, CHUNK):
            requests, events = [], []
            for _ in range(min(CHUNK, count - start)):
                self.number += 1
                created = NOW - timedelta(seconds=self.rng.randint(3600, HISTORY_DAYS * 86400))
                state = self.rng.choice(OPEN_STATES)
                assigned = state != "new"
                requests.append({
                    "id": self.number, "number": self.number, "subject": f"Request {self.number}",
                    "channel": "email", "category": self.rng.choice(CATEGORIES),
                    "priority": self.rng.choice(PRIORITIES), "status": state,
                    "requester_email": f"customer{self.number % 5000}@example.com",
                    "assignee_id": agent_id if assigned else None,
                    "first_assigned_at": created + timedelta(minutes=20) if assigned else None,
                    "reopen_count": 0, "created_at": created, "updated_at": created, "version": 1,
                    "sla_policy": "normal",
                    "first_response_due_at": created + timedelta(hours=30),
                    "resolution_due_at": created + timedelta(days=12),
                    # Future thresholds, spread over the next two weeks.
                    "sla_next_check_at": NOW + timedelta(seconds=self.rng.randint(600, 14 * 86400)),
                })
                events.append(self._event(self.number, "request.opened", created,
                                          {"status": {"from": None, "to": "new"}}))
                if assigned:
                    events.append(self._event(self.number, "request.claimed", created + timedelta(minutes=20),
                                              {"status": {"from": "new", "to": "assigned"}}))
                if state == "waiting_on_customer":
                    events.append(self._event(self.number, "request.waiting_on_customer",
                                              created + timedelta(hours=2),
                                              {"status": {"from": "assigned", "to": "waiting_on_customer"}}))
            self._write(requests, events)

    def resolve_history(self, share: float) -> int:
        """Resolve ``share`` of the requests (oldest first), with replies and resolution events."""
        self._sync_seq()
        with self.store.engine.begin() as conn:
            rows = conn.execute(select(Request.id, Request.created_at).order_by(Request.created_at)).all()
        chosen = rows[: int(len(rows) * share)]
        for start in range(0, len(chosen), CHUNK):
            batch, events = chosen[start:start + CHUNK], []
            updates = []
            for request_id, created in batch:
                first = created + timedelta(minutes=self.rng.randint(10, 600))
                resolved = first + timedelta(minutes=self.rng.randint(30, 5 * 1440))
                reopened = self.rng.random() < 0.05
                updates.append({"rid": request_id, "first": first, "resolved": resolved,
                                "reopens": 1 if reopened else 0})
                events.append(self._event(request_id, "message.outbound", first, {"message_id": 0}))
                events.append(self._event(request_id, "request.resolved", resolved,
                                          {"status": {"from": "assigned", "to": "resolved"}}))
            with self.store.engine.begin() as conn:
                conn.execute(
                    update(Request).where(Request.id == text(":rid")).values(
                        status="resolved", first_response_at=text(":first"), resolved_at=text(":resolved"),
                        reopen_count=text(":reopens"), sla_next_check_at=None,
                    ).execution_options(synchronize_session=False),
                    [{**u, "first": _bind(self.store, u["first"]), "resolved": _bind(self.store, u["resolved"])}
                     for u in updates],
                )
                self._insert_events(conn, events)
        return len(chosen)

    def _sync_seq(self) -> None:
        """Sweeps append real events in between; carry on after them."""
        with self.store.engine.connect() as conn:
            self.seq = conn.execute(text("SELECT last_seq FROM audit_head")).scalar_one()

    def _event(self, request_id: int, kind: str, at: datetime, payload: dict) -> dict:
        self.seq += 1
        return {"seq": self.seq, "request_id": request_id, "actor": "agent:UBENCH", "kind": kind,
                "data": data(payload), "created_at": at, "prev_hash": f"{self.seq - 1:064x}", "hash": f"{self.seq:064x}"}

    def _write(self, requests: list[dict], events: list[dict]) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(insert(Request), requests)
            self._insert_events(conn, events)
            conn.execute(update(Counter).where(Counter.name == "request").values(value=self.number))

    def _insert_events(self, conn, events: list[dict]) -> None:  # type: ignore[no-untyped-def]
        conn.execute(insert(Event), events)
        conn.execute(text("UPDATE audit_head SET last_seq = :s, last_hash = :h"),
                     {"s": self.seq, "h": f"{self.seq:064x}"})


def _bind(store: Store, moment: datetime) -> object:
    return moment.replace(tzinfo=None) if store.is_sqlite else moment


def make_crossers(store: Store, rng: random.Random, count: int = 100) -> list[int]:
    """Turn ``count`` random open requests into ones whose first-response warning is due now."""
    with store.engine.begin() as conn:
        top = conn.execute(select(func.max(Request.id))).scalar_one()
        ids = rng.sample(range(1, top + 1), count * 3)
        open_ids = conn.execute(
            select(Request.id).where(Request.id.in_(ids), Request.status.in_(["new", "assigned"]))
        ).scalars().all()[:count]
        conn.execute(
            update(Request).where(Request.id.in_(open_ids)).values(
                created_at=MORNING, first_response_at=None, priority="normal", category="general",
                sla_next_check_at=datetime(2026, 6, 15, 15, 0, tzinfo=UTC),
            )
        )
        conn.execute(text("UPDATE events SET created_at = :m WHERE kind = 'request.opened' AND request_id IN "
                          f"({','.join(map(str, open_ids))})"), {"m": _bind(store, MORNING)})
    return list(open_ids)


def checkpoint(store: Store) -> None:
    """Fold the bulk load's write-ahead log into the file, so no timed commit pays for it."""
    raw = store.engine.raw_connection()
    try:
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()


def time_sweeps(store: Store, rng: random.Random, runs: int = 5) -> tuple[list[float], int]:
    times, recorded = [], 0
    for _ in range(runs):
        make_crossers(store, rng)
        checkpoint(store)
        t0 = time.perf_counter()
        found = sla.sweep(store, NOW)
        times.append((time.perf_counter() - t0) * 1000)
        recorded = len(found)
    return times, recorded


def time_backlog_scan(store: Store) -> float:
    """What any walk over the open backlog costs at least: counting it."""
    with store.engine.connect() as conn:
        t0 = time.perf_counter()
        conn.execute(select(func.count()).select_from(Request).where(
            Request.status.not_in(["resolved", "closed"]))).scalar_one()
        return (time.perf_counter() - t0) * 1000


def sweep_plan(store: Store) -> str:
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT * FROM requests WHERE sla_next_check_at <= ? "
            "ORDER BY sla_next_check_at LIMIT 500", (NOW.replace(tzinfo=None),)).all()
    return "; ".join(str(r[-1]) for r in rows)


def report_sweep(label: str, store: Store, rng: random.Random) -> None:
    times, recorded = time_sweeps(store, rng)
    scan = time_backlog_scan(store)
    with store.engine.connect() as conn:
        backlog = conn.execute(select(func.count()).select_from(Request).where(
            Request.status.not_in(["resolved", "closed"]))).scalar_one()
    print(f"  {label}: {backlog:>9,} open requests; sweep recording {recorded} crossings: "
          f"median {statistics.median(times):6.1f} ms, max {max(times):6.1f} ms "
          f"(a count over the open backlog alone: {scan:7.1f} ms)")


def report_metrics(store: Store) -> None:
    from core import metrics

    today = NOW.astimezone(store.settings.tz).date()
    checkpoint(store)
    for days in (1, 30):
        period = metrics.period_from_dates(today - timedelta(days=days), today, store.settings.tz, today)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            metrics.compute_metrics(store, period, now=NOW)
            times.append((time.perf_counter() - t0) * 1000)
        print(f"  full metrics for {days:>2} day(s): median {statistics.median(times):7.1f} ms "
              f"(goal: under 2,000 ms)")
    print("  metrics query plans (table access of each query, 30 days):")
    for line in metrics_plans(store, metrics.period_from_dates(today - timedelta(days=30), today,
                                                               store.settings.tz, today)):
        print(f"    {line}")


def metrics_plans(store: Store, period: object) -> list[str]:
    """How each query of one metrics report reaches its rows: SEARCH (an index) or SCAN."""
    from core import metrics

    statements: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            statements.append((statement, parameters))

    event.listen(store.engine, "before_cursor_execute", capture)
    try:
        metrics.compute_metrics(store, period, now=NOW)  # type: ignore[arg-type]
    finally:
        event.remove(store.engine, "before_cursor_execute", capture)
    lines = []
    raw = store.engine.raw_connection()
    try:
        for n, (statement, parameters) in enumerate(statements, 1):
            steps = [row[-1] for row in raw.execute("EXPLAIN QUERY PLAN " + statement, parameters)]
            access = [step for step in steps if step.startswith(("SEARCH", "SCAN"))
                      and not step.startswith(("SCAN (subquery", "SCAN ranked", "SCAN vals"))]
            lines.append(f"query {n}: " + "; ".join(access or steps))
    finally:
        raw.close()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--db", type=Path)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    if args.large < args.small:
        parser.error("--large must be at least --small")

    workdir = Path(tempfile.mkdtemp(prefix="supportdesk-bench-"))
    path = args.db or workdir / "bench.db"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    store = Store(engine, FixedClock(NOW), Settings(database_url=url))
    with engine.begin() as conn:
        conn.execute(insert(Agent), [{"slack_user_id": "UBENCH", "email": "bench@example.com", "name": "Bench",
                                      "roles": "agent", "approval_limit_minor": 0, "active": True,
                                      "created_at": NOW, "updated_at": NOW}])
    builder, rng = Builder(store), random.Random(11)

    print(f"SQLite at {path}")
    t0 = time.perf_counter()
    builder.add_open(args.small)
    print(f"  built {args.small:,} open requests in {time.perf_counter() - t0:.0f} s")
    report_sweep("small", store, rng)
    t0 = time.perf_counter()
    builder.add_open(args.large - args.small)
    print(f"  built {args.large - args.small:,} more in {time.perf_counter() - t0:.0f} s")
    report_sweep("large", store, rng)
    print(f"  sweep query plan: {sweep_plan(store)}")

    t0 = time.perf_counter()
    resolved = builder.resolve_history(0.9)
    print(f"  resolved {resolved:,} of them with replies and resolution events in {time.perf_counter() - t0:.0f} s")
    report_metrics(store)
    store.dispose()
    if not args.keep and args.db is None:
        for leftover in workdir.iterdir():
            leftover.unlink()
        workdir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
