"""What one audited service call costs, next to a bare transaction on the same database.

For each database (a fresh SQLite file, and a fresh PostgreSQL database when
one is reachable) it measures, in one run:

- baseline: one INSERT and COMMIT per transaction with SQLAlchemy Core, the
  least any durable write can cost here;
- open_request, claim, reply, resolve: full service calls (authorization,
  lifecycle check, row lock, hash-chained event, outbox rows, commit);
- audit verify: events checked per second.

Usage: python bench/core_services.py [--requests N] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import migrate, services  # noqa: E402
from core.audit import verify_chain  # noqa: E402
from core.db import make_engine  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.store import Store  # noqa: E402
from tests.factories import AGENT, seed  # noqa: E402


def timed(n: int, call: Callable[[int], object]) -> tuple[float, float, float]:
    """Run call(i) n times; return (calls per second, median ms, p99 ms)."""
    latencies = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        latencies.append((time.perf_counter() - t0) * 1000)
    elapsed = time.perf_counter() - start
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return n / elapsed, statistics.median(latencies), p99


def baseline(url: str, n: int) -> tuple[float, float, float]:
    engine = make_engine(url)
    table = Table("bench_baseline", MetaData(), Column("id", Integer, primary_key=True), Column("v", String(100)))
    table.create(engine)
    try:
        def insert(i: int) -> None:
            with engine.begin() as conn:
                conn.execute(table.insert().values(v=f"row {i}"))

        return timed(n, insert)
    finally:
        table.drop(engine)
        engine.dispose()


def run(label: str, url: str, n: int) -> None:
    engine = make_engine(url)
    migrate.upgrade(engine)
    store = Store(engine, settings=Settings(database_url=url))
    seed(store)
    rows: list[tuple[str, tuple[float, float, float]]] = [("baseline: INSERT + COMMIT", baseline(url, n))]
    keys: list[str] = []

    def open_one(i: int) -> None:
        keys.append(services.open_request(
            store, channel="cli", actor=AGENT,
            mail=services.InboundMail(from_address="billing@acme.test", subject=f"bench {i}", body_text="x" * 500),
        ).key)

    rows.append(("open_request", timed(n, open_one)))
    rows.append(("claim", timed(n, lambda i: services.claim(store, keys[i], actor=AGENT))))
    rows.append(("reply", timed(n, lambda i: services.reply(store, keys[i], "On it.", actor=AGENT))))
    rows.append(("resolve", timed(n, lambda i: services.resolve(store, keys[i], note="done", actor=AGENT))))

    with store.read() as session:
        t0 = time.perf_counter()
        result = verify_chain(session)
        verify_rate = result.checked / (time.perf_counter() - t0)
    assert result.ok

    base_rate = rows[0][1][0]
    print(f"\n{label}: {n} requests")
    print(f"  {'operation':<28}{'per s':>9}{'median ms':>11}{'p99 ms':>9}{'vs baseline':>13}")
    for name, (rate, median, p99) in rows:
        print(f"  {name:<28}{rate:>9.0f}{median:>11.2f}{p99:>9.2f}{rate / base_rate:>12.2f}x")
    print(f"  audit verify: {result.checked} events, {verify_rate:,.0f} events/s")
    store.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run("SQLite (WAL, synchronous=FULL)", f"sqlite:///{Path(tmp) / 'bench.db'}", args.requests)

    admin = create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    name = f"supportdesk_bench_{uuid.uuid4().hex[:8]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        print(f"\nPostgreSQL skipped: {args.postgres_url} not reachable ({exc.__class__.__name__})")
        return 0
    try:
        run("PostgreSQL", make_url(args.postgres_url).set(database=name).render_as_string(hide_password=False),
            args.requests)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
