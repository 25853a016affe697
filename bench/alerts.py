"""1,000 SLA alerts due at once, delivered through Slack's rate limits: none lost, none twice, every 429 handled.

Usage: python bench/alerts.py [--alerts 1000] [--rate 20]

A store (SQLite, in a temporary directory) gets ``--alerts`` requests opened
seven hours ago under a round-the-clock 8-hour first-response policy, their
triage cards posted. The fake Slack Web API of the tests then enforces a rate
limit per channel on posting and editing, as Slack does (``--rate`` calls a
second, bursts of 4, ``429`` with ``Retry-After`` beyond that), and one SLA
sweep finds every warning due at once: each queues its alert (a reply in
the card's thread) and an edit of the card. The real Slack delivery worker
then drains the outbox, twice:

- paced at the limit (how serve runs: its pacer keeps under Slack's rate;
  it counts every call to a channel, posts and edits alike, so it stays
  under the limit however Slack splits it by method);
- paced at four times the limit, so that Slack refuses many calls with
  ``429`` and every one of them must be waited out and retried.

Slack's own limit for posting is about one message a second per channel,
which would make each run last 30 minutes; the scaled rate keeps the bench
short and changes nothing in the logic measured. The baseline, in the same
run, is the least time the limit allows for the same calls: (calls of one method - burst) / rate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import func, select  # noqa: E402

from bot.client import make_client  # noqa: E402
from bot.delivery import ChannelPacer, SlackDelivery  # noqa: E402
from core import migrate, services  # noqa: E402
from core.clock import FixedClock, SystemClock  # noqa: E402
from core.db import make_engine  # noqa: E402
from core.facade import AsyncCore  # noqa: E402
from core.models import OutboxMessage, SlackAlert  # noqa: E402
from core.services.sla import sweep  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.store import Store  # noqa: E402
from tests import factories  # noqa: E402
from tests.slack.fake_slack import FakeSlack  # noqa: E402

TRIAGE, ALERTS = "C0TRIAGE01", "C0ALERTS01"
BURST = 4
ROUND_THE_CLOCK = {"sla": {"priorities": {p: {"calendar": "24x7"} for p in ("urgent", "high", "normal", "low")}}}


def build(directory: Path, fake: FakeSlack, count: int) -> Store:
    url = f"sqlite:///{directory / 'alerts.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    settings = Settings(database_url=url, slack_bot_token=fake.token, slack_api_url=fake.base_url,
                        triage_channel=TRIAGE, alerts_channel=ALERTS, extra=ROUND_THE_CLOCK)
    opened_at = datetime.now(timezone.utc) - timedelta(hours=7)  # warned at 6 h of 8: due now
    past = Store(engine, FixedClock(opened_at), settings)
    factories.seed(past)
    for n in range(count):
        key = factories.open_request(past, subject=f"Request {n}").key
        if n % 2:
            services.claim(past, key, actor=factories.AGENT)
    return Store(engine, SystemClock(), settings)


async def drain(delivery: SlackDelivery, store: Store, deadline: float) -> None:
    """Deliver until no Slack row is pending; rows waiting out a Retry-After come due by themselves."""
    while time.monotonic() < deadline:
        report = await delivery.deliver_due()
        if report.claimed == 0:
            if pending(store) == 0:
                return
            await asyncio.sleep(0.05)
    raise TimeoutError("the outbox did not drain in time")


def pending(store: Store) -> int:
    with store.read() as session:
        return session.execute(select(func.count()).select_from(OutboxMessage).where(
            OutboxMessage.channel == "slack", OutboxMessage.status == "pending")).scalar_one()


def outcome(store: Store) -> dict[str, int]:
    with store.read() as session:
        rows = dict(session.execute(select(OutboxMessage.status, func.count()).where(
            OutboxMessage.channel == "slack", OutboxMessage.topic == "sla_alert").group_by(OutboxMessage.status)).all())
        alerts = session.execute(select(func.count()).select_from(SlackAlert)).scalar_one()
    return {"sent": rows.get("sent", 0), "failed": rows.get("failed", 0), "pending": rows.get("pending", 0),
            "alerts recorded": alerts}


def one_run(count: int, rate: float, pace: float) -> dict[str, float | int]:
    with tempfile.TemporaryDirectory() as tmp, FakeSlack() as fake:
        store = build(Path(tmp), fake, count)
        core = AsyncCore(store)
        try:
            async def run() -> dict[str, float | int]:
                cards = SlackDelivery(core, make_client(store.settings), triage_channel=TRIAGE,
                                      approvals_channel=None, alerts_channel=ALERTS,
                                      pacer=ChannelPacer(rate=1e6, burst=1_000_000))
                await drain(cards, store, time.monotonic() + 600)  # the cards, before any limit
                fake.limit_rate("chat.postMessage", rate, burst=BURST)
                fake.limit_rate("chat.update", rate, burst=BURST)
                found = await asyncio.to_thread(sweep, store)
                before = len(fake.calls())
                delivery = SlackDelivery(core, make_client(store.settings), triage_channel=TRIAGE,
                                         approvals_channel=None, alerts_channel=ALERTS,
                                         pacer=ChannelPacer(rate=pace, burst=BURST))
                started = time.monotonic()
                await drain(delivery, store, started + 1800)
                elapsed = time.monotonic() - started
                calls = fake.calls()[before:]
                posted = [c for c in calls if c.method == "chat.postMessage" and c.ok and c.args.get("thread_ts")]
                done = sum(1 for c in calls if c.ok)
                return {"warnings": len(found), "seconds": elapsed, "calls ok": done,
                        "429s": sum(1 for c in calls if c.status == 429), "alerts posted": len(posted),
                        "least seconds": max(0.0, (done / 2 - BURST) / rate), **outcome(store)}
            return asyncio.run(run())
        finally:
            core.close()
            store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--alerts", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="the limit per channel and method, calls/s")
    args = parser.parse_args()
    print(f"{args.alerts} warnings due at once; Slack limit {args.rate:g} calls/s per channel and method, "
          f"bursts of {BURST}")
    print(f"{'pacing':<22} {'seconds':>8} {'least':>7} {'429s':>6} {'posted':>7} {'sent':>6} {'failed':>7} "
          f"{'pending':>8} {'recorded':>9}")
    for label, pace in (("at the limit", args.rate), ("at 4x the limit", 4 * args.rate)):
        r = one_run(args.alerts, args.rate, pace)
        print(f"{label:<22} {r['seconds']:>8.1f} {r['least seconds']:>7.1f} {r['429s']:>6} {r['alerts posted']:>7} "
              f"{r['sent']:>6} {r['failed']:>7} {r['pending']:>8} {r['alerts recorded']:>9}")
        unhandled = r["failed"] + r["pending"] + abs(r["alerts posted"] - args.alerts)
        print(f"  {'every alert delivered once, no 429 left unhandled' if unhandled == 0 else 'NOT MET'}"
              f" ({r['warnings']} warnings recorded by the sweep)")


if __name__ == "__main__":
    main()
