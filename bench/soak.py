"""Soak: two ``supportdesk serve`` processes on one PostgreSQL database under steady mixed traffic for a fixed
time, with a kill -9 of one of them at half time.

The machinery is the end-to-end tests' (``tests/e2e_harness.py``): real
``serve`` processes, each with its own SMTP and HTTP port, the fake Slack
Web API, and an SMTP sink as the outgoing relay. For ``--minutes``:

- mail at a steady ``--mail-rate`` (messages a second, all nodes together),
  from SMTP clients that keep their sessions, retry a 4xx or a dropped
  connection and fail over to the other node, as MTAs with two MX hosts do;
  a unique sender and Message-ID each;
- on every new request, two agents click Claim at the same moment, one on
  each node (a click no node answered is clicked again by a colleague on the
  other); on every fourth, an agent then clicks "Reply to customer" and
  submits the modal on the other node;
- at half time node a, which leads the scheduler, is killed with SIGKILL
  (serve and its mail processor at once) and started again; node b takes
  over the scheduler.

Then the traffic stops, and the bench waits (``--settle`` seconds at most)
until every accepted message is filed and the outbox is empty. It prints
messages sent, accepted (250), stored, lost, duplicated; clicks sent and
answered and whether each took effect once; p50/p99 of the SMTP reply
(DATA to the final reply) and of the click acknowledgment; the peak memory
of each node from /proc every 0.5 s: serve, its mail processor, its writer
process, its largest other child (the resource tracker, or a spawned child
in the moment before it names itself) and the whole tree summed at one
instant (RSS, and PSS); what is left
in the outbox.
It exits 1 if anything acknowledged was lost, or anything was stored, took
effect, was mailed or was left on Slack twice.

Usage: python bench/soak.py [--minutes 10] [--mail-rate 0.5] [--database URL] [--admin-url URL]
                            [--settle 180]
``--database`` names an existing PostgreSQL database (it is migrated and the
directory imported; nothing is dropped); by default a fresh database is
created on the ``--admin-url`` server and dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.services.outbox import LEASE_SECONDS  # noqa: E402
from tests.conftest import ADMIN_URL  # noqa: E402
from tests.e2e_harness import (  # noqa: E402
    IN_FLIGHT_SECONDS,
    LOAD_AGENTS,
    ClickLedger,
    Inspection,
    MailLedger,
    MailTraffic,
    Node,
    PeakMemory,
    card_posts,
    claim_problems,
    claim_until_answered,
    click,
    fresh_postgres,
    live_cards,
    load_mail,
    make_node,
    mail_problems,
    opened_view,
    percentile,
    prepare,
    refusals_by_click,
    submit,
    wait_for,
)
from tests.notifications import SinkHandler, free_port, running_sink  # noqa: E402
from tests.slack.fake_slack import FakeSlack  # noqa: E402

REPLY_EVERY = 4  # every fourth new request also gets a reply through the modal
SLACK_ACK_LIMIT_S = 3.0  # Slack shows the user an error after 3 s
GOAL_RSS_MB = 150.0  # DESIGN.md §7: serve's peak memory under intake load (per process, as bench/intake.py)
RESTART_AFTER_S = 2.0  # how long the killed node stays down
RUN = time.strftime("%Y%m%d%H%M%S")  # in every Message-ID, so runs on one database never collide

# After the traffic, how long filing and the outbox may take: the killed node's leased rows wait out the lease.
DEFAULT_SETTLE = 3 * LEASE_SECONDS


@dataclass
class Replies:
    """The reply flows: the button click that opens the modal, then the modal's submission."""

    submitted: int = 0
    accepted: int = 0
    not_answered: int = 0
    refused: list[str] = field(default_factory=list)
    modal_missing: int = 0
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Desk:
    """The agents: they watch for new requests and click on them, on both nodes, until told to stop."""

    def __init__(self, nodes: list[Node], slack: FakeSlack, inspection: Inspection, deadline: float) -> None:
        self.nodes = nodes
        self.slack = slack
        self.inspection = inspection
        self.deadline = deadline
        self.clicks = ClickLedger()
        self.replies = Replies()
        self.requests_clicked = 0
        self._seen: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="agent")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="desk", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """No new requests are taken up; the clicks under way finish."""
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True)

    def _watch(self) -> None:
        newest = 0
        while not self._stop.wait(0.5):
            try:
                keys = self.inspection.requests_after(max(0, newest - 100))
            except Exception as exc:  # noqa: BLE001 - the bench's own reads may meet a busy database; look again
                print(f"  (desk: could not read new requests: {exc.__class__.__name__})", file=sys.stderr)
                continue
            for key in keys:
                if key in self._seen:
                    continue
                self._seen.add(key)
                newest = max(newest, int(key.split("-")[1]))
                self.requests_clicked += 1
                self._pool.submit(self._work_on, key, self.requests_clicked)

    def _work_on(self, key: str, n: int) -> None:
        both = [threading.Thread(target=claim_until_answered,
                                 args=(self.nodes, self.slack, key, first, self.clicks, self.deadline))
                for first in range(len(self.nodes))]
        for thread in both:
            thread.start()
        for thread in both:
            thread.join()
        if n % REPLY_EVERY == 0:
            self._reply(key, n)

    def _reply(self, key: str, n: int) -> None:
        user = LOAD_AGENTS[n % len(LOAD_AGENTS)]
        here, there = self.nodes[n % len(self.nodes)], self.nodes[(n + 1) % len(self.nodes)]
        opened = self.clicks.add(click(here, self.slack, "reply", key, user))
        if opened.status != 200:
            return
        try:
            view = opened_view(self.slack, opened, timeout=10)
        except AssertionError:
            with self.replies.lock:
                self.replies.modal_missing += 1
            return
        started = time.perf_counter()
        try:
            answer = submit(there, "reply_modal", {"body": f"Thank you. We are looking into {key} now."}, view, user)
        except OSError:
            with self.replies.lock:
                self.replies.submitted += 1
                self.replies.not_answered += 1
            return
        took = time.perf_counter() - started
        with self.replies.lock:
            self.replies.submitted += 1
            self.replies.latencies.append(took)
            if answer.status == 200 and answer.text in ("", "{}"):
                self.replies.accepted += 1
            else:
                self.replies.refused.append(f"{answer.status} {answer.text[:200]}")


def run(args: argparse.Namespace, url: str, workdir: Path, slack: FakeSlack, sink: SinkHandler,
        relay_port: int) -> dict[str, Any]:
    prepare(url)
    nodes = [make_node(name, url, workdir, slack, relay_port=relay_port) for name in ("a", "b")]
    victim = nodes[0]
    inspection = Inspection(url)
    memory = PeakMemory(nodes)
    seconds = args.minutes * 60
    ledger = MailLedger()
    report: dict[str, Any] = {}
    try:
        victim.start()
        memory.start()
        wait_for(victim.leads, 60, "node a leads the scheduler")
        nodes[1].start()
        started = time.monotonic()
        deadline = started + seconds + args.settle
        traffic = MailTraffic(nodes, 8, ledger, deadline).start()
        desk = Desk(nodes, slack, inspection, deadline)
        desk.start()
        print(f"  traffic for {args.minutes:g} min: mail at {args.mail_rate:g}/s; node a is killed at "
              f"{seconds / 2:.0f} s", flush=True)
        outage: list[float] = []
        killer = threading.Thread(target=kill_at, args=(victim, started + seconds / 2, outage), daemon=True)
        killer.start()
        sent = 0
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * args.mail_rate) + 1
            while sent < due:
                traffic.send(load_mail(RUN, sent))
                sent += 1
            time.sleep(0.05)
        print(f"  {seconds:.0f} s: traffic stops; waiting for retries, filing and the outbox", flush=True)
        killer.join()
        desk.stop()
        traffic.finish()
        settled = settle(inspection, args.settle)
        memory.stop()
        report = measure(nodes, inspection, ledger, desk, slack, sink, memory, settled, outage[0] if outage else 0.0)
        report["stop_seconds"] = stop_all(nodes)
    finally:
        for node in nodes:
            node.stop()
        inspection.close()
    report["tracebacks"] = {n.name: n.log().count("Traceback") for n in nodes}
    return report


def kill_at(node: Node, moment: float, outage: list[float]) -> None:
    """At ``moment`` (monotonic), SIGKILL the node's process group; start it again ``RESTART_AFTER_S`` later.
    The traffic goes on meanwhile. Appends the seconds until it answered again to ``outage``."""
    time.sleep(max(0.0, moment - time.monotonic()))
    node.kill9()
    killed = time.monotonic()
    time.sleep(RESTART_AFTER_S)
    node.start()
    outage.append(time.monotonic() - killed)
    print(f"  killed node a with SIGKILL; it answered again {outage[0]:.1f} s later", flush=True)


def settle(inspection: Inspection, limit: float) -> float:
    """Wait until every accepted message is filed and the outbox is empty (or ``limit`` seconds); returns how
    long it took. Rows leased by the killed node wait out their lease (LEASE_SECONDS) first."""
    started = time.monotonic()
    try:
        wait_for(lambda: inspection.unfiled() == 0 and not inspection.outbox_waiting(), limit,
                 "filing and the outbox", interval=1.0)
    except AssertionError:
        pass
    return time.monotonic() - started


def stop_all(nodes: list[Node]) -> dict[str, float]:
    """SIGTERM every node at once; seconds until each exited (it finishes the deliveries under way)."""
    took: dict[str, float] = {}

    def stop(node: Node) -> None:
        started = time.monotonic()
        try:
            code = node.terminate(timeout=180)
        except Exception:  # noqa: BLE001 - report it; the finally block kills it
            code = -1
        took[node.name] = time.monotonic() - started if code == 0 else float("nan")

    threads = [threading.Thread(target=stop, args=(n,)) for n in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return took


def measure(nodes: list[Node], inspection: Inspection, ledger: MailLedger, desk: Desk, slack: FakeSlack,
            sink: SinkHandler, memory: PeakMemory, settled: float, down: float) -> dict[str, Any]:
    stored, filed = inspection.stored_markers(), inspection.filed_markers()
    stored_counts, filed_counts = Counter(stored), Counter(filed)
    acked = set(ledger.acked)
    clicks = desk.clicks.all()
    claims = inspection.claims()
    click_issues, in_flight = claim_problems(clicks, claims, refusals_by_click(slack), nodes)
    ours = [c for c in clicks if c.status == 200]
    outgoing = sink.messages()
    outbound_ids = Counter(str(m["Message-ID"]) for m in outgoing)
    automatic = {str(m["Message-ID"]) for m in outgoing if m["Auto-Submitted"]}
    return {
        "mail": {
            "sent": len(ledger.sent), "accepted": len(acked), "stored": len(stored_counts),
            "filed": len(filed_counts), "lost": len(acked - set(stored_counts)),
            "duplicated": sum(1 for n in stored_counts.values() if n > 1) + sum(1 for n in filed_counts.values() if n > 1),
            "never_accepted": len(set(ledger.sent) - acked), "refused": len(ledger.refused),
            "failed_attempts": ledger.failed_attempts,
            "accepted_by": dict(Counter(ledger.acked.values())),
            "problems": mail_problems(ledger, stored, filed),
            "smtp_p50_ms": 1000 * percentile(ledger.latencies, 50), "smtp_p99_ms": 1000 * percentile(ledger.latencies, 99),
            "smtp_max_ms": 1000 * max(ledger.latencies, default=float("nan")),
        },
        "clicks": {
            "requests": desk.requests_clicked, "sent": len(clicks), "answered": len(ours),
            "not_answered": sum(1 for c in clicks if c.status is None),
            "other_status": sum(1 for c in clicks if c.status not in (None, 200)),
            "claims_doubled": sum(1 for actors in claims.values() if len(actors) > 1),
            "problems": click_issues, "in_flight_at_kill_without_effect": in_flight,
            "ack_p50_ms": 1000 * percentile([c.latency for c in ours], 50),
            "ack_p99_ms": 1000 * percentile([c.latency for c in ours], 99),
            "ack_max_ms": 1000 * max((c.latency for c in ours), default=float("nan")),
            "over_3s": sum(1 for c in ours if c.latency > SLACK_ACK_LIMIT_S),
            "by_node": dict(Counter(c.node for c in ours)),
        },
        "replies": {
            "submitted": desk.replies.submitted, "accepted": desk.replies.accepted,
            "not_answered": desk.replies.not_answered, "refused": desk.replies.refused[:5],
            "modal_missing": desk.replies.modal_missing,
            "submit_p50_ms": 1000 * percentile(desk.replies.latencies, 50),
            "submit_p99_ms": 1000 * percentile(desk.replies.latencies, 99),
        },
        "slack": {
            "cards_posted": sum(card_posts(slack).values()), "requests_with_a_card": len(live_cards(slack)),
            "duplicates_deleted": sum(1 for c in slack.calls("chat.delete") if c.ok),
            "requests_with_two_cards": sum(1 for n in live_cards(slack).values() if n > 1),
            "api_calls": len(slack.calls()),
        },
        "outbound_mail": {"delivered": sum(outbound_ids.values()), "distinct": len(outbound_ids),
                          "sent_twice": sum(1 for n in outbound_ids.values() if n > 1),
                          "acknowledgments": len(automatic), "replies": len(set(outbound_ids) - automatic),
                          "requests_by_mail": len(filed_counts), "replies_accepted": desk.replies.accepted},
        "outbox_waiting": inspection.outbox_waiting(),
        "duplicate_events": inspection.duplicate_events()[:5],
        "settle_seconds": settled, "down_seconds": down,
        "memory_mb": {name: {role: kb / 1024 for role, kb in roles.items()} for name, roles in memory.peak_kb.items()},
    }


def print_report(r: dict[str, Any]) -> bool:
    mail, clicks, replies = r["mail"], r["clicks"], r["replies"]
    print("\nMail (SMTP to both nodes)")
    print(f"  sent {mail['sent']}, accepted (250) {mail['accepted']} (node a {mail['accepted_by'].get('a', 0)}, "
          f"node b {mail['accepted_by'].get('b', 0)}), stored {mail['stored']}, filed {mail['filed']}")
    print(f"  lost {mail['lost']}, duplicated {mail['duplicated']}, never accepted {mail['never_accepted']}, "
          f"refused for good {mail['refused']}; attempts that failed and were retried: {mail['failed_attempts']}")
    print(f"  SMTP reply (DATA to 250): p50 {mail['smtp_p50_ms']:.1f} ms, p99 {mail['smtp_p99_ms']:.1f} ms, "
          f"max {mail['smtp_max_ms']:.1f} ms")
    print("Clicks (signed, to both nodes)")
    print(f"  requests clicked on {clicks['requests']}; clicks sent {clicks['sent']}, answered 200 {clicks['answered']} "
          f"(node a {clicks['by_node'].get('a', 0)}, node b {clicks['by_node'].get('b', 0)}), "
          f"not answered {clicks['not_answered']}, other status {clicks['other_status']}")
    print(f"  Claims: each answered click took effect once: {'yes' if not clicks['problems'] else 'NO'}; "
          f"requests claimed twice: {clicks['claims_doubled']}; answered in the killed node's last "
          f"{IN_FLIGHT_SECONDS:.0f} s and without effect: {clicks['in_flight_at_kill_without_effect']}")
    print(f"  acknowledgment: p50 {clicks['ack_p50_ms']:.1f} ms, p99 {clicks['ack_p99_ms']:.1f} ms, "
          f"max {clicks['ack_max_ms']:.1f} ms, over 3 s: {clicks['over_3s']}")
    print(f"  replies through the modal: submitted {replies['submitted']}, accepted {replies['accepted']}, "
          f"not answered {replies['not_answered']}, refused {len(replies['refused'])}, modal never opened "
          f"{replies['modal_missing']}; submission p50 {replies['submit_p50_ms']:.1f} ms, "
          f"p99 {replies['submit_p99_ms']:.1f} ms")
    slack, out = r["slack"], r["outbound_mail"]
    print("Afterwards")
    print(f"  Slack: {slack['cards_posted']} cards posted, {slack['duplicates_deleted']} of them deleted again "
          f"(two nodes raced to post the same card); {slack['requests_with_a_card']} requests with a card, "
          f"{slack['requests_with_two_cards']} with two; {slack['api_calls']} Web API calls in all")
    print(f"  outgoing mail at the relay: {out['delivered']} ({out['distinct']} distinct Message-IDs, "
          f"{out['sent_twice']} sent twice): {out['acknowledgments']} acknowledgments of "
          f"{out['requests_by_mail']} requests by mail, {out['replies']} replies of {out['replies_accepted']} accepted")
    waiting = r["outbox_waiting"]
    print(f"  after the traffic: {r['settle_seconds']:.0f} s until every message was filed and the outbox empty "
          f"(rows the killed node had leased wait out their {LEASE_SECONDS} s lease)" if not waiting else
          f"  outbox rows still not sent after {r['settle_seconds']:.0f} s: {waiting}")
    print(f"  audit events recorded twice: {len(r['duplicate_events'])}; tracebacks in the logs: {r['tracebacks']}")
    print("  SIGTERM to exit: " + ", ".join(f"node {k} {v:.1f} s" for k, v in sorted(r['stop_seconds'].items())))
    print("Peak memory per node (MB, RSS; sampled every 0.5 s)")
    for name, m in sorted(r["memory_mb"].items()):
        print(f"  node {name}: serve {m['serve']:.0f}, mail processor {m['mail processor']:.0f}, writer process "
              f"{m['writer']:.0f}, largest other child {m['other']:.0f} (the resource tracker, or a child not "
              f"yet named); the whole tree at one instant {m['tree']:.0f} (PSS {m['tree pss']:.0f})")
    sent_twice = r["outbound_mail"]["sent_twice"] + r["slack"]["requests_with_two_cards"]
    lost_or_doubled = mail["lost"] + mail["duplicated"] + clicks["claims_doubled"] + len(clicks["problems"]) \
        + len(r["duplicate_events"]) + sent_twice
    goals = [
        (mail["lost"] == 0, f"nothing answered 250 lost: {mail['lost']}"),
        (mail["duplicated"] == 0, f"nothing stored twice: {mail['duplicated']}"),
        (not clicks["problems"] and clicks["claims_doubled"] == 0,
         f"every answered click took effect once: {len(clicks['problems'])} did not"),
        (sent_twice == 0, f"no mail sent twice and no request left with two cards: "
                          f"{r['outbound_mail']['sent_twice']} mails, {r['slack']['requests_with_two_cards']} cards"),
        (clicks["over_3s"] == 0, f"every click acknowledged within Slack's 3 s: {clicks['over_3s']} were not"),
        (max(max(m["serve"], m["mail processor"], m["writer"]) for m in r["memory_mb"].values()) < GOAL_RSS_MB,
         f"serve, its mail processor and its writer process each under {GOAL_RSS_MB:.0f} MB: " + ", ".join(
             f"node {k} {m['serve']:.0f}, {m['mail processor']:.0f} and {m['writer']:.0f}"
             for k, m in sorted(r["memory_mb"].items()))),
    ]
    print("Goals (issue 7, DESIGN.md §7-8)")
    for met, text in goals:
        print(f"  {'[met]    ' if met else '[not met]'} {text}")
    return lost_or_doubled == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the traffic runs (default 10)")
    parser.add_argument("--mail-rate", type=float, default=0.5, help="messages a second, both nodes together")
    parser.add_argument("--database", metavar="URL", help="an existing PostgreSQL database to run on (kept)")
    parser.add_argument("--admin-url", default=ADMIN_URL, help="PostgreSQL server for the fresh database")
    parser.add_argument("--settle", type=float, default=DEFAULT_SETTLE, help="at most this long for filing and "
                        f"the outbox after the traffic (default {DEFAULT_SETTLE} s: rows the killed node had "
                        f"leased wait out {LEASE_SECONDS} s)")
    args = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: the nodes are stopped and a database made here is dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.minutes <= 0 or args.mail_rate <= 0:
        parser.error("--minutes and --mail-rate must be positive")
    if args.database and not args.database.startswith("postgresql"):
        parser.error("--database must be a PostgreSQL URL: several serve processes share it")

    print(f"supportdesk soak — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, "
          f"two serve processes on one PostgreSQL database")
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sd-soak-")))
        slack = stack.enter_context(FakeSlack())
        relay_port = free_port()
        sink = stack.enter_context(running_sink(relay_port))
        url = args.database or stack.enter_context(fresh_postgres("sd_soak", args.admin_url))
        report = run(args, url, workdir, slack, sink, relay_port)
    ok = print_report(report)
    print(json.dumps(report, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
