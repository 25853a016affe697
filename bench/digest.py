"""The daily digest over 1,000,000 requests, on SQLite (issue 6, DESIGN §7: under 2 s).

Builds the store of ``bench/sla_metrics.py`` (its ``Builder``: 1,000,000
requests over two years with their events, 900,000 of them resolved with
replies and resolution events), then gives the three weeks up to the
digest's day the activity of a working desk: as many requests resolved each
day as are opened (with a reply and a resolution event each), and the
inbound mail filed that day. The digest is the daily one for 2026-06-14,
made at 2026-06-15 15:01 UTC (sla_metrics' "now", after every row of the
store); that day has some 5,500 events.

Then it times, median of ``--runs`` warm runs (after one cold run that is
reported on its own):

* ``core.digest.digest_figures`` (two metrics reports, top categories, mail,
  the 14-day trend), and each of its parts on its own;
* ``notifications.digest_job.render_digest``, split into the chart
  (``notifications.chart.trend_chart``, timed inside the call) and the rest
  (the jinja2 templates and the figures' JSON);
* the baseline, in the same runs: ``core.metrics.compute_metrics`` for the
  same single day, which is what ``supportdesk metrics --since DAY --until
  DAY+1`` costs. Every figure is printed as a multiple of it.

It also prints the first ``trend_chart`` call of the process (which imports
Pillow), a whole first digest in a fresh process (what serve's background
process and ``supportdesk digest --print`` pay the first time), each SQL statement
of ``digest_figures`` with its time and SQLite query plan, and whether the
goal (total under 2,000 ms) is met.

The store is built once into ``--db`` (default under the temporary
directory) and reused by later runs; ``--rebuild`` builds it again. Building
1,000,000 requests takes several minutes.

Usage: python bench/digest.py [--db PATH] [--rebuild] [--requests N] [--runs N]
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, event, func, insert, select, update

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sla_metrics import HISTORY_DAYS, NOW, Builder, checkpoint  # noqa: E402
from core import migrate  # noqa: E402
from core.clock import FixedClock  # noqa: E402
from core.db import make_engine  # noqa: E402
from core.models import Agent, Event, ReceivedMail, Request, UTCDateTime  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.store import Store  # noqa: E402

UTC = timezone.utc
DAY = date(2026, 6, 14)  # the digest's day: the last whole day before sla_metrics' NOW
DIGEST_NOW = NOW  # 2026-06-15 15:01 UTC: every row of the store lies before it
ACTIVE_DAYS = 21  # the days up to DAY given a working desk's resolutions and mail (trend: 14, previous: 7)
GOAL_MS = 2000.0
BUILD_VERSION = 1
# Inbound mail filed per day, per opened request (the "new" ones are one each).
MAIL_MIX = (("joined", "reply_token", 0.45), ("joined", "header", 0.25), ("joined", "subject_tag", 0.10),
            ("joined", None, 0.02), ("quarantined", None, 0.03), ("duplicate", None, 0.015))


def ms(seconds: float) -> float:
    return seconds * 1000


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return ms(time.perf_counter() - t0), result


def open_store(path: Path, now: datetime = DIGEST_NOW) -> Store:
    url = f"sqlite:///{path}"
    return Store(make_engine(url), FixedClock(now), Settings(database_url=url))


# --- building the store ---------------------------------------------------------------------


def build(path: Path, requests: int) -> dict[str, Any]:
    for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), marker_of(path)):
        leftover.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = open_store(path, NOW)
    migrate.upgrade(store.engine)
    with store.engine.begin() as conn:
        conn.execute(insert(Agent), [{"slack_user_id": "UBENCH", "email": "bench@example.com", "name": "Bench",
                                      "roles": "agent", "approval_limit_minor": 0, "active": True,
                                      "created_at": NOW, "updated_at": NOW}])
    builder = Builder(store)
    t0 = time.perf_counter()
    builder.add_open(requests)
    print(f"  built {requests:,} open requests with their events in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    resolved = builder.resolve_history(0.9)
    print(f"  resolved {resolved:,} of them (oldest first) in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    recent = resolve_recent(store, builder, per_day=max(1, round(requests / HISTORY_DAYS)))
    mail = add_mail(store, per_day=max(1, round(requests / HISTORY_DAYS)))
    print(f"  the {ACTIVE_DAYS} days to {DAY}: resolved {recent:,} more requests, filed {mail:,} inbound mails "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    # No ANALYZE: the product never runs it, so the planner works without statistics here too.
    checkpoint(store)
    store.dispose()
    info = {"version": BUILD_VERSION, "requests": requests, "day": DAY.isoformat(), "built": time.time()}
    marker_of(path).write_text(json.dumps(info))
    return info


def marker_of(path: Path) -> Path:
    return path.with_name(path.name + ".built.json")


def resolve_recent(store: Store, builder: Builder, per_day: int) -> int:
    """Resolve ``per_day`` open requests on each of the ACTIVE_DAYS days up to DAY, as a desk would.

    The Builder resolves the oldest 90 % and leaves the last months without
    a single resolution; a real desk resolves about as many as it opens.
    Each gets a reply (its first response) and a resolution event that day.
    """
    rng = random.Random(23)
    builder._sync_seq()
    with store.engine.connect() as conn:
        rows = conn.execute(select(Request.id, Request.status, Request.created_at)
                            .where(Request.status.in_(["assigned", "waiting_on_customer"]))
                            .order_by(Request.created_at)).all()
    created = [r.created_at for r in rows]
    taken: set[int] = set()
    stmt = update(Request).where(Request.id == bindparam("b_id")).values(
        status="resolved", first_response_at=bindparam("b_first", type_=UTCDateTime),
        resolved_at=bindparam("b_resolved", type_=UTCDateTime), sla_next_check_at=None,
    )
    total = 0
    for back in range(ACTIVE_DAYS - 1, -1, -1):
        day = DAY - timedelta(days=back)
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        pool = bisect.bisect_left(created, start - timedelta(days=1))  # opened at least a day before
        chosen: list[int] = []
        while len(chosen) < min(per_day, pool - len(taken)):
            i = rng.randrange(pool)
            if i not in taken:
                taken.add(i)
                chosen.append(i)
        updates, events = [], []
        for i in chosen:
            request = rows[i]
            first = start + timedelta(seconds=rng.randint(0, 20 * 3600))
            resolved = min(first + timedelta(seconds=rng.randint(600, 4 * 3600)), start + timedelta(seconds=86399))
            updates.append({"b_id": request.id, "b_first": first, "b_resolved": resolved})
            events.append(builder._event(request.id, "message.outbound", first, {"message_id": 0}))
            events.append(builder._event(request.id, "request.resolved", resolved,
                                         {"status": {"from": request.status, "to": "resolved"}}))
        if updates:
            with store.engine.begin() as conn:
                conn.execute(stmt, updates)
                builder._insert_events(conn, events)
        total += len(updates)
    return total


def add_mail(store: Store, per_day: int) -> int:
    """Inbound mail filed on each of the ACTIVE_DAYS days: a new request's mail, replies, quarantine."""
    rng = random.Random(29)
    mix = [("opened", None, 1.0), *MAIL_MIX]
    count = 0
    with store.engine.begin() as conn:
        for back in range(ACTIVE_DAYS - 1, -1, -1):
            day = DAY - timedelta(days=back)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            rows = []
            for outcome, matched_by, share in mix:
                for _ in range(round(per_day * share)):
                    count += 1
                    processed = start + timedelta(seconds=rng.randint(0, 86399))
                    raw = f"Message-ID: <bench-{count}@example.com>\r\nSubject: bench {count}\r\n\r\nHello\r\n".encode()
                    rows.append({
                        "sha256": hashlib.sha256(raw).hexdigest(), "raw": raw, "size": len(raw), "source": "smtp",
                        "envelope_from": f"customer{count % 5000}@example.com", "recipients": "support@example.com",
                        "received_at": processed - timedelta(seconds=1),
                        "status": "quarantined" if outcome == "quarantined" else "processed",
                        "attempts": 1, "processed_at": processed, "outcome": outcome, "matched_by": matched_by,
                        "reason": "no_sender" if outcome == "quarantined" else None,
                        "message_id": f"<bench-{count}@example.com>",
                    })
            conn.execute(insert(ReceivedMail), rows)
    return count


def ensure_store(path: Path, requests: int, rebuild: bool) -> None:
    marker = marker_of(path)
    if not rebuild and path.exists() and marker.exists():
        info = json.loads(marker.read_text())
        if info.get("version") == BUILD_VERSION and info.get("requests") == requests:
            print(f"SQLite at {path} (reused, built {time.ctime(info['built'])}; --rebuild builds it again)")
            return
    print(f"SQLite at {path}: building {requests:,} requests (several minutes at 1,000,000)", flush=True)
    build(path, requests)


# --- what the store holds around the digest's day ---------------------------------------------


def describe(store: Store) -> None:
    start = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)
    with store.engine.connect() as conn:
        requests = conn.execute(select(func.count()).select_from(Request)).scalar_one()
        open_now = conn.execute(select(func.count()).select_from(Request)
                                .where(Request.status.not_in(["resolved", "closed"]))).scalar_one()
        events = conn.execute(select(func.count()).select_from(Event)).scalar_one()
        that_day = conn.execute(select(func.count()).select_from(Event).where(
            Event.created_at >= start, Event.created_at < start + timedelta(days=1))).scalar_one()
        window = conn.execute(select(func.count()).select_from(Event).where(
            Event.created_at >= start - timedelta(days=13), Event.created_at < start + timedelta(days=1))).scalar_one()
        since = conn.execute(select(func.count()).select_from(Event).where(
            Event.created_at >= start + timedelta(days=1))).scalar_one()
    print(f"  {requests:,} requests ({open_now:,} open now), {events:,} events; on {DAY}: {that_day:,} events; "
          f"in the 14 days to it: {window:,}; after it (replayed for the backlog): {since:,}")


# --- timing -----------------------------------------------------------------------------------


class ChartTimer:
    """Wraps ``notifications.digest_job.trend_chart`` so a render's chart is timed inside the call."""

    def __init__(self) -> None:
        import notifications.digest_job as job

        self.job, self.inner, self.last = job, job.trend_chart, 0.0

    def __enter__(self) -> ChartTimer:
        def timed_chart(*args: Any, **kwargs: Any) -> bytes:
            t0 = time.perf_counter()
            try:
                return self.inner(*args, **kwargs)
            finally:
                self.last = ms(time.perf_counter() - t0)

        self.job.trend_chart = timed_chart
        return self

    def __exit__(self, *exc: object) -> None:
        self.job.trend_chart = self.inner


def digest_periods(store: Store) -> tuple[Any, Any]:
    from core.digest import _midnight, daily_period
    from core.metrics import Period

    tz = store.settings.tz
    period = daily_period(DAY, tz)
    return period, Period(_midnight(DAY - timedelta(days=7), tz), period.since)


def time_digest(store: Store, runs: int) -> dict[str, Any]:
    from core.digest import digest_figures
    from core.metrics import compute_metrics
    from notifications.digest_job import render_digest

    tz = store.settings.tz
    period, _ = digest_periods(store)
    out: dict[str, Any] = {"pillow_before": "PIL.ImageDraw" in sys.modules}
    with ChartTimer() as chart:
        # The first run of the process: cold statement caches; the chart imports Pillow.
        out["cold_figures"], figures = timed(lambda: digest_figures(store, "daily", DAY, DIGEST_NOW))
        out["cold_render"], rendered = timed(lambda: render_digest(figures, tz))
        out["cold_chart"] = chart.last
        out["figures"], out["render"], out["chart"], out["baseline"] = [], [], [], []
        for _ in range(runs):
            t, figures = timed(lambda: digest_figures(store, "daily", DAY, DIGEST_NOW))
            out["figures"].append(t)
            t, rendered = timed(lambda: render_digest(figures, tz))
            out["render"].append(t)
            out["chart"].append(chart.last)
            out["baseline"].append(timed(lambda: compute_metrics(store, period, now=DIGEST_NOW))[0])
    out["template"] = [r - c for r, c in zip(out["render"], out["chart"])]
    out["total"] = [f + r for f, r in zip(out["figures"], out["render"])]
    out["figures_json"], out["png_bytes"] = figures.to_json(), len(rendered.chart_png)
    return out


def time_parts(store: Store, runs: int) -> dict[str, list[float]]:
    """Each part of digest_figures on its own, in the order it runs them."""
    from core import digest as d
    from core.metrics import compute_metrics

    period, before = digest_periods(store)
    tz = store.settings.tz
    current = compute_metrics(store, period, now=DIGEST_NOW)

    def in_session(fn: Callable[[Any], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with store.read() as session:
                return fn(session)
        return run

    parts: dict[str, Callable[[], Any]] = {
        "current report (the day)": lambda: compute_metrics(store, period, now=DIGEST_NOW),
        "previous report (7 days before)": lambda: compute_metrics(store, before, now=DIGEST_NOW,
                                                                   figures_of_now=current.overall),
        "top categories": in_session(lambda s: d._top_categories(s, period)),
        "mail": in_session(lambda s: d._mail(s, period)),
        "14-day trend": in_session(lambda s: d._trend(s, DAY, tz, current.overall.backlog.total)),
    }
    return {name: [timed(fn)[0] for _ in range(runs)] for name, fn in parts.items()}


def statement_costs(store: Store, runs: int = 3) -> list[dict[str, Any]]:
    """Every SQL statement of digest_figures: where it comes from, its time in the call, its plan.

    The time is the cursor's execute (SQLite runs an aggregate there), taken
    inside real digest_figures calls (median of ``runs``), so each statement
    sees the page cache as the digest leaves it, not as a rerun of itself would.
    """
    from core.digest import digest_figures

    calls: list[list[dict[str, Any]]] = []

    def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            calls[-1].append({"sql": statement, "params": parameters, "origin": origin(traceback.extract_stack()),
                              "t0": time.perf_counter()})

    def after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if calls[-1] and calls[-1][-1]["sql"] is statement and "ms" not in calls[-1][-1]:
            calls[-1][-1]["ms"] = ms(time.perf_counter() - calls[-1][-1]["t0"])

    event.listen(store.engine, "before_cursor_execute", before)
    event.listen(store.engine, "after_cursor_execute", after)
    try:
        for _ in range(runs):
            calls.append([])
            digest_figures(store, "daily", DAY, DIGEST_NOW)
    finally:
        event.remove(store.engine, "before_cursor_execute", before)
        event.remove(store.engine, "after_cursor_execute", after)
    statements = calls[0]
    for n, item in enumerate(statements):
        item["ms"] = statistics.median(call[n]["ms"] for call in calls)
    raw = store.engine.raw_connection()
    try:
        for item in statements:
            item["plan"] = [(r[1], r[-1]) for r in raw.execute("EXPLAIN QUERY PLAN " + item["sql"], item["params"])]
    finally:
        raw.close()
    return statements


def origin(stack: traceback.StackSummary) -> str:
    """``current: sla_compliance > _open_breaches`` from the stack of a statement's execution."""
    frames = [f for f in stack if f.filename.endswith((os.path.join("core", "metrics.py"),
                                                       os.path.join("core", "digest.py")))]
    report, names = "", []
    for f in frames:
        if f.name == "digest_figures":
            line = (f.line or "").strip()
            report = line.split("=")[0].strip() if line.startswith(("current", "previous")) else ""
        elif f.name not in ("compute_metrics", "_metric_sets"):
            names.append(f.name)
    return f"{report + ': ' if report else ''}{' > '.join(names[:2])}"


def cold_process(db: Path, repeats: int) -> list[dict[str, float]]:
    """A whole first digest in a fresh interpreter, as the serve process's child makes it."""
    results = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--db", str(db), "--cold-child"],
                              capture_output=True, text=True, check=True)
        child = json.loads(done.stdout.strip().splitlines()[-1])
        child["wall"] = ms(time.perf_counter() - t0)
        results.append(child)
    return results


def cold_child(db: Path) -> int:
    t0 = time.perf_counter()
    from core.digest import digest_figures
    from notifications.digest_job import render_digest

    store = open_store(db)
    imports = ms(time.perf_counter() - t0)
    with ChartTimer() as chart:
        figures_ms, figures = timed(lambda: digest_figures(store, "daily", DAY, DIGEST_NOW))
        render_ms, _ = timed(lambda: render_digest(figures, store.settings.tz))
    store.dispose()
    print(json.dumps({"imports": imports, "figures": figures_ms, "render": render_ms, "chart": chart.last}))
    return 0


# --- the report -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "supportdesk-bench-digest.db",
                        help="the store to build or reuse (default: %(default)s)")
    parser.add_argument("--rebuild", action="store_true", help="build the store again even if --db holds it")
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5, help="warm runs, the median of which is shown")
    parser.add_argument("--cold-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold_child:
        return cold_child(args.db)

    ensure_store(args.db, args.requests, args.rebuild)
    store = open_store(args.db)
    describe(store)
    checkpoint(store)
    print(f"Daily digest for {DAY} made at {DIGEST_NOW:%Y-%m-%d %H:%M} UTC, time zone {store.settings.timezone}; "
          f"median of {args.runs} warm runs", flush=True)

    t = time_digest(store, args.runs)
    parts = time_parts(store, args.runs)
    med = {k: statistics.median(v) for k, v in t.items() if isinstance(v, list)}
    base = med["baseline"]

    def row(label: str, value: float, indent: int = 0) -> None:
        print(f"  {' ' * indent}{label:<{52 - indent}} {value:>9,.1f} {value / base:>8.2f}x")

    print(f"\n  {'phase':<52} {'median ms':>9} {'vs base':>9}")
    row("baseline: compute_metrics, the same 1 day", base)
    row("digest_figures", med["figures"])
    for name, values in parts.items():
        row(name, statistics.median(values), 2)
    row("render_digest", med["render"])
    row("templates and JSON (render_digest minus chart)", med["template"], 2)
    row("chart (trend_chart)", med["chart"], 2)
    row("total: figures + render", med["total"])
    print(f"  {'(first run of the process:)':<52}")
    row("digest_figures, first call", t["cold_figures"], 2)
    row("trend_chart, first call (imports Pillow)", t["cold_chart"], 2)
    row("total, first call", t["cold_figures"] + t["cold_render"], 2)
    if t["pillow_before"]:
        print("  (Pillow was imported before the first chart: the first call above is not cold)")

    cold = cold_process(args.db, 3)
    c = {k: statistics.median(r[k] for r in cold) for k in cold[0]}
    print(f"  {'(a first digest in a fresh process, median of 3:)':<52}")
    row("interpreter start to digest made (wall)", c["wall"], 2)
    row("figures + render in it", c["figures"] + c["render"], 2)
    row("of which the chart (imports Pillow)", c["chart"], 4)

    verdict = "met" if med["total"] < GOAL_MS else "NOT met"
    print(f"\n  goal: the digest (figures + render, warm) under {GOAL_MS:,.0f} ms: {verdict} "
          f"({med['total']:,.0f} ms = {med['total'] / base:.2f}x one metrics report); "
          f"in a fresh process: {c['figures'] + c['render']:,.0f} ms plus {c['imports']:,.0f} ms of imports")

    fig = t["figures_json"]
    cur = fig["current"]
    print(f"\n  the digest's figures: opened {cur['opened']:,}, resolved {cur['resolution']['count']:,}, "
          f"backlog {cur['backlog']['total']:,}, breached open {cur['sla_compliance']['breaches_open']['requests']:,}, "
          f"mail filed {fig['mail']['filed']:,}; chart {t['png_bytes']:,} bytes")
    print("  trend (day: opened / resolved / backlog): " + ", ".join(
        f"{d['day'][5:]}: {d['opened']}/{d['resolved']}/{d['backlog']}" for d in fig["trend"]))

    statements = statement_costs(store)
    print(f"\n  the {len(statements)} SQL statements of digest_figures, execute time inside the call (median of 3), "
          f"slowest first; {sum(s['ms'] for s in statements):,.0f} ms in all:")
    for s in sorted(statements, key=lambda s: -s["ms"]):
        access = [step for _, step in s["plan"] if step.startswith(("SEARCH", "SCAN"))
                  and not step.startswith(("SCAN (subquery", "SCAN ranked", "SCAN vals", "SCAN counted",
                                           "SCAN breaches", "SCAN resolutions", "SCAN changed"))]
        print(f"  {s['ms']:>8,.1f} ms  {s['origin']}: " + "; ".join(access or [step for _, step in s["plan"]]))
    counted: dict[tuple[str, tuple[Any, ...]], list[dict[str, Any]]] = {}
    for s in statements:
        counted.setdefault((s["sql"], tuple(s["params"])), []).append(s)
    repeated = [same for same in counted.values() if len(same) > 1 and same[0]["ms"] >= 1]
    if repeated:
        again = sum(sum(s["ms"] for s in same[1:]) for same in repeated)
        where = ", ".join(f"{same[0]['origin'].split(': ', 1)[-1]} ({len(same)}x {same[0]['ms']:,.0f} ms)"
                          for same in repeated)
        print(f"\n  run more than once with the same SQL and parameters (figures of \"now\", the same in both "
              f"reports): {again:,.0f} ms of repeats, in {where}")
    trend = [s for s in statements if s["origin"].startswith("_trend")]
    for s in trend:
        print("\n  the trend query's plan (EXPLAIN QUERY PLAN):")
        for _, step in s["plan"]:
            print(f"    {step}")
    store.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
