"""Slack clicks: how fast the app acknowledges, next to bare Bolt apps that only acknowledge.

One run, one client, three targets, each a process of its own on loopback:

- bare Bolt: a Bolt ``AsyncApp`` behind aiohttp with Bolt's defaults, whose
  only listener acknowledges the click (``await ack()``) and does nothing
  else: the baseline the goals are measured against;
- bare Bolt, process_before_response: the same app with
  ``process_before_response=True``, where Bolt answers as soon as the
  listener returns instead of checking every 10 ms whether it has called
  ``ack()``: the least a Bolt app can answer in, shown for reference;
- supportdesk: ``supportdesk serve`` with Slack configured (on a fresh SQLite
  file, or PostgreSQL with ``--postgres``), a directory of agents and one
  open request per click; every click is a real **Claim**: acknowledged,
  then claimed in the store and the card queued for update.

All talk to the same recording fake of the Slack Web API (``auth.test``
and whatever the listeners call). The client is one asyncio loop with an
aiohttp session that keeps ``--concurrency`` (default 50) signed clicks in
flight, as 50 agents clicking at once would, after the same 20 warm-up clicks
on other requests (so that no target's first-request costs, such as Bolt's
``auth.test``, are timed); the bodies are signed before the clock starts.
The targets answer ``--rounds`` rounds (default 3) of ``--clicks`` clicks in
turn, so that a slower minute of a shared machine meets all of them, and
serve is left to finish its work before each round (its start-up jobs, the
claims of the round before) until its CPU is quiet, so the clicks meet it
as they would during a working day. Per target, over all its rounds: clicks
answered per second, acknowledgment latency p50/p99/max (request written to
response read) and each round's p50, clicks not answered, answers over 3 s
(Slack shows the user an error after 3 s), and the CPU the target, its event
loop and the client used per click; and at the end, how many of serve's
clicks took effect in the store.

Usage: python bench/slack.py [--clicks N] [--rounds R] [--concurrency C] [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.intake.serve_process import free_port, serve_env, wait_for_port  # noqa: E402
from tests.proc_stats import children_of, cpu_seconds  # noqa: E402
from tests.slack.fake_slack import FakeSlack  # noqa: E402
from tests.slack.signing import (  # noqa: E402
    DEFAULT_SIGNING_SECRET, HOME_TEAM, TRIAGE_CHANNEL, SlackUser, block_actions, button, signed_interaction,
)

GOAL_P50_RATIO = 1.5
GOAL_P99_MS = 50.0
SLACK_TIMEOUT_S = 3.0
AGENTS = 10
WARM_UP_CLICKS = 20  # two from each agent: Bolt's auth.test and our agents directory are filled before timing

BARE_APP = """
import asyncio, sys
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.app.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

app = AsyncApp(client=AsyncWebClient(token=sys.argv[1], base_url=sys.argv[2]), signing_secret=sys.argv[3],
               process_before_response=sys.argv[5] == "process_before_response")

@app.action("claim")
async def claim(ack):
    await ack()

async def handle(request):
    return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))

web_app = web.Application()
web_app.router.add_post("/slack/events", handle)
web.run_app(web_app, host="127.0.0.1", port=int(sys.argv[4]), print=None, access_log=None)
"""


def agents() -> list[SlackUser]:
    return [SlackUser(f"UBENCH{i:03d}", f"agent{i}", HOME_TEAM.id) for i in range(AGENTS)]


def prepare_store(database_url: str, requests: int) -> None:
    """A migrated store with the bench's agents and ``requests`` new requests (SR-1 …), via the services."""
    from core import migrate, services
    from core.settings import Settings
    from core.store import Store

    store = Store.open(Settings(database_url=database_url))
    try:
        migrate.upgrade(store.engine)
        rows = "\n".join(f"{a.id},{a.username}@bench.test,{a.username},agent,," for a in agents())
        services.import_agents(store, "slack_user_id,email,name,roles,approval_limit,currency\n" + rows + "\n")
        for n in range(requests):
            services.open_request(store, channel="cli", actor=agents()[0].id, mail=services.InboundMail(
                from_address=f"customer{n}@bench.test", subject=f"Question {n}", body_text="Hello"))
    finally:
        store.dispose()


def click_bodies(count: int, url_for_responses: str, first: int = 1) -> list[tuple[bytes, dict[str, str]]]:
    """Signed Claim clicks on SR-first, SR-first+1, …, from the bench's agents in turn."""
    people = agents()
    signed = []
    for n in range(count):
        payload = block_actions(button("claim", f"SR-{first + n}"), user=people[n % len(people)],
                                response_url=url_for_responses)
        request = signed_interaction(payload)
        signed.append((request.body, request.headers))
    return signed


async def fire(url: str, bodies: list[tuple[bytes, dict[str, str]]], concurrency: int) -> Round:
    """Send ``bodies`` keeping ``concurrency`` in flight; each answer's latency, and the time it all took."""
    latencies: list[float] = []
    failures = 0
    queue = list(reversed(bodies))
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            nonlocal failures
            while queue:
                body, headers = queue.pop()
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Round(latencies, failures, elapsed)


@dataclass
class Round:
    """One target's answers to one round of clicks, and the CPU used meanwhile (seconds)."""

    latencies: list[float]
    failed: int
    elapsed: float
    cpu: float = 0.0
    loop_cpu: float = 0.0
    client_cpu: float = 0.0


@dataclass
class Target:
    """A process answering clicks at ``url``: a bare app, or serve (whose children are counted with it)."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    rounds: list[Round] = field(default_factory=list)

    def measure(self, bodies: list[tuple[bytes, dict[str, str]]], concurrency: int) -> None:
        """One round: :func:`fire`, plus the CPU the target (with its children), its event loop and the client used."""
        pid = self.process.pid
        before, loop_before, client_before = tree_cpu(pid), cpu_seconds(pid, pid), time.process_time()
        result = asyncio.run(fire(self.url, bodies, concurrency))
        result.cpu, result.loop_cpu = tree_cpu(pid) - before, cpu_seconds(pid, pid) - loop_before
        result.client_cpu = time.process_time() - client_before
        self.rounds.append(result)

    def summary(self) -> dict[str, Any]:
        latencies = sorted(v for r in self.rounds for v in r.latencies)
        clicks = max(1, sum(len(r.latencies) + r.failed for r in self.rounds))
        elapsed = sum(r.elapsed for r in self.rounds)
        return {
            "answered": len(latencies), "failed": sum(r.failed for r in self.rounds),
            "per_second": len(latencies) / elapsed if elapsed else 0,
            "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
            "max_ms": 1000 * latencies[-1] if latencies else float("nan"),
            "over_3s": sum(1 for v in latencies if v > SLACK_TIMEOUT_S),
            "round_p50_ms": [1000 * statistics.median(r.latencies) if r.latencies else float("nan") for r in self.rounds],
            "cpu_ms_per_click": 1000 * sum(r.cpu for r in self.rounds) / clicks,
            "loop_cpu_ms_per_click": 1000 * sum(r.loop_cpu for r in self.rounds) / clicks,
            "client_cpu_ms_per_click": 1000 * sum(r.client_cpu for r in self.rounds) / clicks,
        }

    def stop(self) -> None:
        """SIGTERM (serve first finishes the claims it acknowledged), then SIGKILL if that takes over a minute."""
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (serve's writer process and mail processor)."""
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children_of(pid))


def wait_until_quiet(pid: int, *, window: float = 1.0, busy_below: float = 0.05, timeout: float = 60.0) -> None:
    """Wait until the process and its children have used less than ``busy_below`` of a core for a whole
    ``window`` (or ``timeout``): serve has finished its start-up jobs, or the claims of the last round."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        before = tree_cpu(pid)
        time.sleep(window)
        if tree_cpu(pid) - before < busy_below * window:
            return


def warm_up(url: str, warm: list[tuple[bytes, dict[str, str]]]) -> None:
    """The same few clicks for every target before the clock starts: first-request costs are not measured."""
    asyncio.run(fire(url, warm, 5))


def start_bare(fake: FakeSlack, name: str, mode: str = "defaults") -> Target:
    """The bare app with Bolt's defaults, or with ``mode="process_before_response"``."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", BARE_APP, fake.token, fake.base_url, DEFAULT_SIGNING_SECRET,
                                str(port), mode], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_port(port)
    return Target(name, process, f"http://127.0.0.1:{port}/slack/events")


def start_supportdesk(fake: FakeSlack, database_url: str, workdir: Path) -> Target:
    http_port = free_port()
    env = serve_env(database_url, free_port(), workdir, SUPPORTDESK_HTTP_LISTEN=f"127.0.0.1:{http_port}",
                    SLACK_BOT_TOKEN=fake.token, SLACK_SIGNING_SECRET=DEFAULT_SIGNING_SECRET,
                    SUPPORTDESK_SLACK_API_URL=fake.base_url, SUPPORTDESK_TRIAGE_CHANNEL=TRIAGE_CHANNEL.id)
    log = (workdir / "serve.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "cli.main", "serve"], env=env, cwd=workdir, stdout=log,
                               stderr=subprocess.STDOUT)
    wait_for_port(http_port)
    return Target("supportdesk", process, f"http://127.0.0.1:{http_port}/slack/events")


def claimed(database_url: str, up_to: int) -> int:
    """Requests SR-1 … SR-up_to that are claimed (the measured clicks; the warm-up's come after them)."""
    from sqlalchemy import func, select

    from core.models import Request
    from core.settings import Settings
    from core.store import Store

    store = Store.open(Settings(database_url=database_url))
    try:
        with store.read() as session:
            return session.execute(
                select(func.count()).select_from(Request)
                .where(Request.status == "assigned", Request.number <= up_to)
            ).scalar_one()
    finally:
        store.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clicks", type=int, default=1000, help="clicks per target in each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--postgres", metavar="URL", help="run supportdesk on this (empty, created here) PostgreSQL "
                        "server URL instead of SQLite, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    measured_clicks = args.rounds * args.clicks

    with tempfile.TemporaryDirectory(prefix="sd-bench-slack-") as tmp, FakeSlack() as fake:
        workdir = Path(tmp)
        database_url, drop = _database(args.postgres, workdir)
        targets: list[Target] = []
        try:
            prepare_store(database_url, measured_clicks + WARM_UP_CLICKS)
            # Round r clicks Claim on SR-(r*clicks+1) …: each of serve's clicks claims a request nobody has yet.
            rounds = [click_bodies(args.clicks, fake.webhook_url(), first=1 + r * args.clicks)
                      for r in range(args.rounds)]
            warm = click_bodies(WARM_UP_CLICKS, fake.webhook_url(), first=measured_clicks + 1)
            print(f"supportdesk Slack benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                  f"{os.cpu_count()} cores, {args.rounds} rounds of {args.clicks} signed Claim clicks per target, "
                  f"{args.concurrency} in flight, store "
                  f"{'PostgreSQL' if args.postgres else 'SQLite (WAL, synchronous=FULL)'}")
            targets = [start_bare(fake, "bare Bolt"), start_bare(fake, "bare, pbr", "process_before_response"),
                       start_supportdesk(fake, database_url, workdir)]
            serve = targets[-1]
            for target in targets:
                if target is serve:
                    wait_until_quiet(serve.process.pid)
                warm_up(target.url, warm)
            for bodies in rounds:  # the targets in turn, so that a slower minute of the machine meets all of them
                for target in targets:
                    wait_until_quiet(serve.process.pid)  # serve's claims of the round before are done
                    target.measure(bodies, args.concurrency)
        finally:
            for target in targets:
                target.stop()
            done = claimed(database_url, measured_clicks) if targets else 0
            drop()
    bare, eager, ours = (t.summary() for t in targets)
    print(f"{'target':<12} {'answered':>8} {'failed':>6} {'clicks/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'>3 s':>5}  p50 of each round")
    for target, r in zip(targets, (bare, eager, ours)):
        print(f"{target.name:<12} {r['answered']:>8} {r['failed']:>6} {r['per_second']:>9,.0f} {r['p50_ms']:>8.2f} "
              f"{r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} {r['over_3s']:>5}  "
              + " ".join(f"{v:.1f}" for v in r["round_p50_ms"]))
    print("CPU per click while the clicks were answered (ms): "
          + "; ".join(f"{t.name} {r['cpu_ms_per_click']:.2f} (event loop {r['loop_cpu_ms_per_click']:.2f})"
                      for t, r in zip(targets, (bare, eager, ours)))
          + "; the client " + " / ".join(f"{r['client_cpu_ms_per_click']:.2f}" for r in (bare, eager, ours)))
    print("(bare, pbr: the bare app with process_before_response=True, the least a Bolt app answers in; "
          "supportdesk's CPU includes its writer process)")
    print(f"requests claimed in the store afterwards: {done} of {measured_clicks} (and {WARM_UP_CLICKS} by the warm-up)")
    ratio = ours["p50_ms"] / bare["p50_ms"] if bare["p50_ms"] else float("inf")
    goals = [
        (ratio <= GOAL_P50_RATIO, f"p50 within {GOAL_P50_RATIO}x of the bare app: {ratio:.2f}x"),
        (ours["p99_ms"] < GOAL_P99_MS, f"p99 under {GOAL_P99_MS:.0f} ms: {ours['p99_ms']:.1f} ms"),
        (ours["failed"] == 0, f"no click unanswered: {ours['failed']} unanswered"),
        (ours["over_3s"] == 0, f"none over 3 s: {ours['over_3s']}"),
        (done == measured_clicks, f"every click answered took effect: {done} of {measured_clicks} claimed"),
    ]
    print("Goals (DESIGN.md §7 and the Slack issue), against the bare app with Bolt's defaults")
    for met, text in goals:
        print(f"  [{'met' if met else 'not met'}]{' ' * (8 - len('met' if met else 'not met'))}{text}")
    eager_ratio = ours["p50_ms"] / eager["p50_ms"] if eager["p50_ms"] else float("inf")
    print(f"  (next to the bare app with process_before_response=True: p50 {eager_ratio:.2f}x, "
          f"its p99 {eager['p99_ms']:.1f} ms)")
    print(json.dumps({"bare": bare, "bare_process_before_response": eager, "supportdesk": ours, "claimed": done}))
    return 0


def _database(postgres: str | None, workdir: Path) -> tuple[str, Any]:
    if not postgres:
        return f"sqlite:///{workdir / 'bench.db'}", lambda: None
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"sd_bench_slack_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(postgres).set(database=name).render_as_string(hide_password=False), drop


if __name__ == "__main__":
    raise SystemExit(main())
