"""What the end-to-end tests and the soak share: ``supportdesk serve`` nodes on loopback, and traffic that
behaves like the outside world.

A :class:`Node` is a real ``supportdesk serve`` child process with its own
SMTP and HTTP ports, in a process group of its own so that a kill -9 takes
its mail processor with it, talking to the fake Slack Web API and, for
outgoing mail, to a relay of the test's choosing.

The traffic does what Slack and mail servers do. :class:`MailTraffic` is a
pool of SMTP clients that keep their sessions open, retry a 4xx or a dropped
connection and fail over to the next node, as an MTA tries the next MX.
:func:`click` posts one signed button click whose ``response_url`` is named
after the click, so what Slack was told about every single click can be read
back from the fake; a click that found no node answering is clicked again by
a colleague, on another node.

Nothing here reaches into a node. What happened is read from what the clients
were told, what the fake Slack and the mail sink recorded, and the store
(:class:`Inspection`), and :func:`mail_problems`, :func:`claim_problems`,
:func:`card_problems` and :meth:`Inspection.duplicate_events` say what is wrong in words.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import queue
import re
import shutil
import smtplib
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from bot.blocks import card_request_key
from core import migrate, services
from core.clock import Clock, SystemClock
from core.db import make_engine
from core.writer_process import PROCESS_NAME as WRITER_NAME
from core.models import Event, Message, OutboxMessage, ReceivedMail, Request
from core.settings import Settings
from core.store import Store
from cli.background import PROCESS_NAME as BACKGROUND_NAME
from tests import factories
from tests.conftest import ADMIN_URL
from tests.intake.gateway import message
from tests.intake.serve_process import ServeProcess, close_quietly, free_port, problems, serve_env, wait_for_port
from tests.proc_stats import cmdline, comm, pss_kb, rss_kb, stat_fields
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import (
    DEFAULT_SIGNING_SECRET,
    HOME_TEAM,
    TRIAGE_CHANNEL,
    PostResult,
    SlackUser,
    block_actions,
    button,
    post,
    signed_interaction,
    text_input,
    view_submission,
)

SUPPORT_ADDRESS = "support@localhost"
ALERTS_CHANNEL = "C0ALERTS01"
DIGEST_CHANNEL = "C0DIGEST01"
LEADS = "this process now runs the scheduled jobs"
# Agents who click in the load: more than any request gets clicks from, so each click on a request is a
# different person's and a claim's actor names the click that won.
LOAD_AGENTS = tuple(SlackUser(f"ULOAD{n:03d}", f"loadagent{n}", HOME_TEAM.id) for n in range(1, 9))
LOAD_AGENTS_CSV = "slack_user_id,email,name,roles,approval_limit,currency\n" + "".join(
    f"{a.id},{a.username}@support.test,Load Agent {n},agent,,\n" for n, a in enumerate(LOAD_AGENTS, 1))
# A click Bolt acknowledged is acted on right after the acknowledgment; one answered by a node this
# shortly before it was killed may have died with it (Slack does not redeliver clicks).
IN_FLIGHT_SECONDS = 3.0
_MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.MULTILINE | re.IGNORECASE)
_click_numbers = itertools.count(1)


def wait_for(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> None:
    """Poll ``condition`` until it is true; fail saying ``what`` was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(len(ordered) * q / 100)) - 1]


# --- databases and the store --------------------------------------------------------------------------


@contextmanager
def fresh_postgres(prefix: str = "supportdesk_e2e", admin_url: str = ADMIN_URL) -> Iterator[str]:
    """A database of its own on the PostgreSQL server, for several processes to share; dropped afterwards."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def open_store(url: str, clock: Clock | None = None) -> Store:
    """A store on ``url`` with the wall clock (the nodes use it too) unless told otherwise."""
    return Store(make_engine(url), clock or SystemClock(), Settings(database_url=url))


def prepare(url: str) -> None:
    """Bring the schema up to date and import the directory: the tests' agents, customers and invoices, and
    the load agents."""
    store = open_store(url)
    try:
        migrate.upgrade(store.engine)
        factories.seed(store)
        services.import_agents(store, LOAD_AGENTS_CSV, source="load-agents.csv")
    finally:
        store.dispose()


def supportdesk(url: str, cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run the installed ``supportdesk`` command (else ``python -m cli.main``) against ``url``, as a user does."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("supportdesk", path=path)
    command = [found] if found else [sys.executable, "-m", "cli.main"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPPORTDESK_")}
    env["SUPPORTDESK_DATABASE_URL"] = url
    return subprocess.run([*command, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# --- nodes ---------------------------------------------------------------------------------------------


@dataclass
class Node:
    """One ``supportdesk serve`` with every part configured; its ports stay the same across restarts."""

    name: str
    serve: ServeProcess
    http_port: int
    kills: list[float] = field(default_factory=list)  # time.monotonic() of each kill -9

    @property
    def smtp_port(self) -> int:
        return self.serve.port

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/slack/events"

    @property
    def running(self) -> bool:
        return self.serve.process is not None and self.serve.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.serve.process.pid if self.running and self.serve.process is not None else None

    def start(self) -> None:
        """Start serve and wait until both its SMTP and its HTTP listener answer."""
        self.serve.start()
        wait_for_port(self.http_port)

    def kill9(self) -> None:
        self.kills.append(time.monotonic())
        self.serve.kill9()

    def terminate(self, timeout: float = 60.0) -> int:
        return self.serve.terminate(timeout)

    def stop(self) -> None:
        """Whatever state it is in, leave nothing running (for ``finally`` blocks)."""
        if self.running:
            self.serve.kill9()

    def log(self) -> str:
        return self.serve.log()

    def leads(self) -> bool:
        """Whether this node has (ever, in its log) taken the scheduler's leadership."""
        return LEADS in self.log()


def make_node(name: str, database_url: str, workdir: Path, slack: FakeSlack, *, relay_port: int | None = None,
              **extra: str) -> Node:
    """A node with the SMTP listener, the Slack app in HTTP mode (at ``slack``), the scheduler (alerts and
    digests to channels of their own) and outbox delivery; mail goes out through ``relay_port`` if given,
    else into a Maildir of the node's own."""
    smtp_port, http_port = free_port(), free_port()
    relay = {"SUPPORTDESK_OUTBOUND_SMTP": f"127.0.0.1:{relay_port}"} if relay_port is not None else {}
    env = serve_env(
        database_url, smtp_port, workdir,
        SUPPORTDESK_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        SUPPORTDESK_OUTGOING_MAILDIR=str(workdir / f"outgoing-mail-{name}"),
        SUPPORTDESK_SUPPORT_ADDRESSES=SUPPORT_ADDRESS,
        SLACK_BOT_TOKEN=slack.token, SLACK_SIGNING_SECRET=DEFAULT_SIGNING_SECRET,
        SUPPORTDESK_SLACK_API_URL=slack.base_url, SUPPORTDESK_TRIAGE_CHANNEL=TRIAGE_CHANNEL.id,
        SUPPORTDESK_ALERTS_CHANNEL=ALERTS_CHANNEL, SUPPORTDESK_DIGEST_CHANNEL=DIGEST_CHANNEL,
        **relay, **extra,
    )
    return Node(name, ServeProcess(env, workdir, smtp_port, workdir / f"serve-{name}.log"), http_port)


# --- mail ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    """One customer message of the load; its Message-ID is the marker looked for in the store."""

    marker: str
    sender: str
    raw: bytes


def load_mail(run: str, n: int) -> Mail:
    """Message ``n`` of run ``run``: one sender each, so no per-sender limit holds any of it back."""
    marker = f"<load-{run}-{n}@load.test>"
    sender = f"customer{n}.{run}@load.test"
    raw = message(subject=f"Question {n}: my account shows the wrong plan", message_id=marker, sender=sender,
                  body=f"Hello, this is message {n}. My account shows the wrong plan since Monday.\n" * 6)
    return Mail(marker, sender, raw)


@dataclass
class MailLedger:
    """What the SMTP clients were told: every message sent, which node answered 250, how long DATA took."""

    sent: list[str] = field(default_factory=list)
    acked: dict[str, str] = field(default_factory=dict)  # marker -> name of the node that answered 250
    refused: dict[str, str] = field(default_factory=dict)  # marker -> a permanent (5xx) answer
    latencies: list[float] = field(default_factory=list)  # seconds from DATA to the final reply
    failed_attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class MailTraffic:
    """``connections`` SMTP clients delivering queued mail to ``nodes``, each preferring one node in turn.

    Each client keeps one session per node open between messages. A 4xx, a
    dropped or refused connection is retried at the next node after a short
    pause, until ``deadline``; a 5xx is final (an MTA would bounce it) and
    is recorded as such.
    """

    def __init__(self, nodes: Sequence[Node], connections: int, ledger: MailLedger, deadline: float) -> None:
        self._nodes = list(nodes)
        self._ledger = ledger
        self._deadline = deadline
        self._queue: queue.Queue[Mail | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._work, args=(n,), name=f"smtp-client-{n}", daemon=True)
                         for n in range(connections)]

    def start(self) -> MailTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def send(self, mail: Mail) -> None:
        with self._ledger.lock:
            self._ledger.sent.append(mail.marker)
        self._queue.put(mail)

    def finish(self) -> None:
        """Let the clients deliver what is queued (until the deadline), then close their sessions."""
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(max(0.0, self._deadline - time.monotonic()) + 30)

    def _work(self, n: int) -> None:
        sessions: dict[str, smtplib.SMTP] = {}
        order = self._nodes[n % len(self._nodes):] + self._nodes[:n % len(self._nodes)]
        while (mail := self._queue.get()) is not None:
            attempt = 0
            while time.monotonic() < self._deadline:
                node = order[attempt % len(order)]
                attempt += 1
                try:
                    session = sessions.get(node.name)
                    if session is None:
                        session = sessions[node.name] = smtplib.SMTP("127.0.0.1", node.smtp_port, timeout=30)
                    took = _deliver(session, mail)
                except (OSError, smtplib.SMTPException) as exc:
                    close_quietly(sessions.pop(node.name, None))
                    code = _code_of(exc)
                    with self._ledger.lock:
                        if code is not None and code >= 500:
                            self._ledger.refused[mail.marker] = f"{node.name}: {code} {exc}"
                            break
                        self._ledger.failed_attempts += 1
                    time.sleep(min(0.05 * attempt, 0.5))
                    continue
                with self._ledger.lock:
                    self._ledger.acked[mail.marker] = node.name
                    self._ledger.latencies.append(took)
                break
        for session in sessions.values():
            close_quietly(session)


def _deliver(session: smtplib.SMTP, mail: Mail) -> float:
    """One mail transaction on an open session; returns the seconds from DATA to the final reply."""
    session.ehlo_or_helo_if_needed()
    code, reply = session.mail(mail.sender)
    if code != 250:
        raise smtplib.SMTPSenderRefused(code, reply, mail.sender)
    code, reply = session.rcpt(SUPPORT_ADDRESS)
    if code not in (250, 251):
        raise smtplib.SMTPRecipientsRefused({SUPPORT_ADDRESS: (code, reply)})
    started = time.perf_counter()
    session.data(mail.raw)  # raises SMTPDataError unless the answer is 250
    return time.perf_counter() - started


def _code_of(exc: BaseException) -> int | None:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return int(next(iter(exc.recipients.values()))[0])
    if isinstance(exc, smtplib.SMTPResponseException):
        return int(exc.smtp_code)
    return None  # the connection failed: no answer at all


def mail_problems(ledger: MailLedger, stored: list[str], filed: list[str]) -> list[str]:
    """Every message answered 250 stored once and filed once; nothing stored or filed twice; none refused."""
    found = problems(set(ledger.acked), stored, ledger.sent)
    doubled = sorted(m for m, n in Counter(filed).items() if n > 1)
    unfiled = sorted(set(ledger.acked) - set(filed))
    if doubled:
        found.append(f"{len(doubled)} messages were filed as more than one message, e.g. {doubled[:3]}")
    if unfiled:
        found.append(f"{len(unfiled)} messages answered 250 were never filed, e.g. {unfiled[:3]}")
    if ledger.refused:
        found.append(f"{len(ledger.refused)} messages were refused for good, e.g. {list(ledger.refused.values())[:3]}")
    return found


# --- Slack ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Click:
    """One signed click as Slack would post it, and what the node answered."""

    id: str  # names the click's response_url, so its fate can be found at the fake
    action: str
    key: str
    user: SlackUser
    node: str
    status: int | None  # None: no answer at all (connection refused, timed out)
    latency: float  # seconds from sending the request to reading the answer
    answered_at: float  # time.monotonic()
    trigger_id: str = ""  # what a modal opened by this click is opened with


def click(node: Node, slack: FakeSlack, action: str, key: str, user: SlackUser, *,
          message_ts: str = "1700000000.000100") -> Click:
    """Click ``action`` (a card button whose value is the request key) on ``node`` as ``user``."""
    click_id = f"click{next(_click_numbers)}"
    trigger_id = f"{int(time.time())}.{click_id}.trigger"
    payload = block_actions(button(action, key), user=user, message_ts=message_ts,
                            response_url=slack.webhook_url(click_id), trigger_id=trigger_id)
    request = signed_interaction(payload)
    started = time.perf_counter()
    try:
        status: int | None = post(node.events_url, request).status
    except OSError:  # refused, reset or timed out: Slack would show the user an error
        status = None
    return Click(click_id, action, key, user, node.name, status, time.perf_counter() - started, time.monotonic(),
                 trigger_id)


def opened_view(slack: FakeSlack, opened_by: Click, timeout: float = 10.0) -> dict[str, Any]:
    """The modal the app opened with this click's trigger_id."""
    found: list[dict[str, Any]] = []

    def opened() -> bool:
        found[:] = [c.args["view"] for c in slack.calls("views.open")
                    if c.ok and c.args.get("trigger_id") == opened_by.trigger_id]
        return bool(found)

    wait_for(opened, timeout, f"the modal opened by {opened_by.action} on {opened_by.key}", interval=0.05)
    return found[0]


def submit(node: Node, callback_id: str, values: dict[str, str], view: dict[str, Any],
           user: SlackUser) -> PostResult:
    """Submit ``view`` (as the app opened it) with text ``values`` by block id; raises if nobody answers."""
    payload = view_submission(callback_id, {block: {"value": text_input(value)} for block, value in values.items()},
                              private_metadata=view["private_metadata"], user=user)
    return post(node.events_url, signed_interaction(payload))


@dataclass
class ClickLedger:
    clicks: list[Click] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, done: Click) -> Click:
        with self.lock:
            self.clicks.append(done)
        return done

    def all(self) -> list[Click]:
        with self.lock:
            return list(self.clicks)


def claim_until_answered(nodes: Sequence[Node], slack: FakeSlack, key: str, first: int, ledger: ClickLedger,
                         deadline: float) -> None:
    """An agent clicks Claim on ``nodes[first]``; if no node answers, a colleague clicks again on the next."""
    for attempt in range(len(LOAD_AGENTS)):
        node = nodes[(first + attempt) % len(nodes)]
        user = LOAD_AGENTS[(2 * first + attempt + int(key.split("-")[1])) % len(LOAD_AGENTS)]
        done = ledger.add(click(node, slack, "claim", key, user))
        if done.status is not None or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def in_flight_at_a_kill(done: Click, nodes: Sequence[Node]) -> bool:
    """Answered by a node that was killed within IN_FLIGHT_SECONDS after answering."""
    node = next(n for n in nodes if n.name == done.node)
    return any(0 <= kill - done.answered_at <= IN_FLIGHT_SECONDS for kill in node.kills)


def claim_problems(clicks: Sequence[Click], claims: dict[str, list[str]], refusals: dict[str, list[str]],
                   nodes: Sequence[Node]) -> tuple[list[str], int]:
    """Each Claim click answered 200 either won (its agent is the claim's actor) or was told why not, exactly
    one of the two; each request claimed at most once. Clicks in flight at a kill may have had no effect.

    Returns the problems and how many clicks in flight at a kill had none.
    """
    found: list[str] = []
    lost_in_flight = 0
    for key, actors in sorted(claims.items()):
        if len(actors) > 1:
            found.append(f"{key} was claimed {len(actors)} times: {actors}")
    for done in clicks:
        if done.action != "claim" or done.status != 200:
            continue
        won = f"agent:{done.user.id}" in claims.get(done.key, [])
        told = refusals.get(done.id, [])
        effects = int(won) + len(told)
        if effects == 0 and in_flight_at_a_kill(done, nodes):
            lost_in_flight += 1
        elif effects != 1:
            found.append(f"Claim on {done.key} by {done.user.id} at node {done.node} (answered 200) "
                         f"{'won and was also told ' + repr(told) if won else 'had ' + str(effects) + ' effects: ' + repr(told)}")
    return found, lost_in_flight


def refusals_by_click(slack: FakeSlack) -> dict[str, list[str]]:
    """What the app told each click privately (its response_url posts), by click id."""
    told: dict[str, list[str]] = defaultdict(list)
    for posted in slack.webhook_posts():
        told[posted.path.rsplit("/", 1)[-1]].append(str(posted.args.get("text", "")))
    return dict(told)


def card_posts(slack: FakeSlack) -> dict[str, int]:
    """How many top-level card messages each request got in the triage channel (deleted ones included)."""
    posted: Counter[str] = Counter()
    for call in slack.calls("chat.postMessage"):
        if call.ok and call.args.get("channel") == TRIAGE_CHANNEL.id and not call.args.get("thread_ts"):
            key = card_request_key(call.args.get("blocks") or [])
            if key:
                posted[key] += 1
    return dict(posted)


def live_cards(slack: FakeSlack) -> dict[str, int]:
    """How many card messages of each request are in the triage channel now."""
    live: Counter[str] = Counter()
    for shown in slack.messages(TRIAGE_CHANNEL.id):
        if not shown.get("thread_ts"):
            key = card_request_key(shown.get("blocks") or [])
            if key:
                live[key] += 1
    return dict(live)


def card_problems(slack: FakeSlack) -> list[str]:
    """One card per request in the triage channel (a second one the app posted must have been deleted)."""
    return [f"{key} has {n} cards in the triage channel" for key, n in sorted(live_cards(slack).items()) if n > 1]


# --- the store, read from outside ---------------------------------------------------------------------


class Inspection:
    """Read-only questions about the store the nodes share, from a connection of the test's own."""

    def __init__(self, url: str) -> None:
        self.store = open_store(url)

    def close(self) -> None:
        self.store.dispose()

    def stored_markers(self) -> list[str]:
        """The Message-ID of every raw message the gateway committed (one per row)."""
        with self.store.read() as session:
            raws = session.execute(select(ReceivedMail.raw)).scalars().all()
        return [m.group(1).decode() for m in (_MESSAGE_ID.search(raw) for raw in raws) if m]

    def filed_markers(self) -> list[str]:
        """The Message-ID of every customer message filed on a request."""
        with self.store.read() as session:
            return list(session.execute(select(Message.message_id).where(
                Message.direction == "inbound", Message.message_id.is_not(None))).scalars())

    def unfiled(self) -> int:
        with self.store.read() as session:
            return len(session.execute(select(ReceivedMail.id).where(ReceivedMail.status == "received")).all())

    def requests_after(self, number: int, status: str = "new") -> list[str]:
        """Keys of the requests numbered above ``number`` in ``status``, in order."""
        with self.store.read() as session:
            rows = session.execute(select(Request.number).where(Request.number > number, Request.status == status)
                                   .order_by(Request.number)).scalars().all()
        return [f"SR-{n}" for n in rows]

    def claims(self) -> dict[str, list[str]]:
        """The actors of every ``request.claimed`` event, by request key."""
        with self.store.read() as session:
            rows = session.execute(select(Request.number, Event.actor).join(Request, Event.request_id == Request.id)
                                   .where(Event.kind == "request.claimed").order_by(Event.seq)).all()
        found: dict[str, list[str]] = defaultdict(list)
        for number, actor in rows:
            found[f"SR-{number}"].append(actor)
        return dict(found)

    def duplicate_events(self) -> list[str]:
        """Audit events recorded twice: the same request, kind and data in two events."""
        with self.store.read() as session:
            rows = session.execute(select(Event.request_id, Event.kind, Event.data)).all()
        counted = Counter((request_id, kind, data) for request_id, kind, data in rows)
        return [f"{kind} on request {request_id} recorded {n} times: {data[:120]}"
                for (request_id, kind, data), n in sorted(counted.items(), key=str) if n > 1]

    def outbox_waiting(self) -> dict[str, int]:
        """Outbox rows not sent yet (pending or failed), by channel."""
        with self.store.read() as session:
            rows = session.execute(select(OutboxMessage.channel, func.count()).where(OutboxMessage.status != "sent")
                                   .group_by(OutboxMessage.channel)).all()
        return {channel: int(n) for channel, n in rows}

    def count(self, query: Any) -> int:
        with self.store.read() as session:
            return int(session.execute(query).scalar_one())


# --- memory --------------------------------------------------------------------------------------------


def process_tree(root: int) -> dict[int, int]:
    """``root`` and all its descendants, each with its parent, from /proc."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields is not None:
                children[int(fields[1])].append(int(entry))
    tree, todo = {root: 0}, [root]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            tree[child] = pid
            todo.append(child)
    return tree


class PeakMemory(threading.Thread):
    """The peak memory (RSS) of each node's processes, by role, sampled from /proc every ``interval`` seconds;
    follows a node across restarts.

    Roles: ``serve``; ``mail processor`` and ``writer`` (serve's children by the names they give
    themselves: its background process, which files mail, delivers e-mail and makes the digests, and the
    writer process, alive as long as serve); ``other`` (the largest of the rest: the resource tracker, parser
    workers); ``tree``
    and ``tree pss``, the whole tree summed at one instant (RSS counts pages the processes share in each of
    them, PSS divides them).
    """

    ROLES = ("serve", "mail processor", "writer", "other", "tree", "tree pss")

    def __init__(self, nodes: Sequence[Node], interval: float = 0.5) -> None:
        super().__init__(name="peak-memory", daemon=True)
        self._nodes = list(nodes)
        self._interval = interval
        self._halt = threading.Event()
        self.peak_kb: dict[str, dict[str, int]] = {n.name: dict.fromkeys(self.ROLES, 0) for n in self._nodes}

    def run(self) -> None:
        while not self._halt.wait(self._interval):
            for node in self._nodes:
                pid = node.pid
                if pid is not None:
                    self._sample(node.name, pid)

    def _sample(self, name: str, pid: int) -> None:
        tree = process_tree(pid)
        resident = {p: rss_kb(p) for p in tree}
        named = {comm(p): p for p, parent in tree.items() if parent == pid}
        processor, writer = named.get(BACKGROUND_NAME), named.get(WRITER_NAME)
        if processor is None:  # serve's fork in the moment before it names itself: serve's command line
            serve_command = cmdline(pid)
            processor = next((p for p, parent in tree.items() if parent == pid and cmdline(p) == serve_command),
                             None)
        others = [kb for p, kb in resident.items() if p not in (pid, processor, writer)]
        seen = {"serve": resident[pid], "mail processor": resident.get(processor, 0) if processor else 0,
                "writer": resident.get(writer, 0) if writer else 0,
                "other": max(others, default=0), "tree": sum(resident.values()),
                "tree pss": sum(pss_kb(p) for p in tree)}
        peaks = self.peak_kb[name]
        for role, kb in seen.items():
            peaks[role] = max(peaks[role], kb)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def describe(value: Any) -> str:
    """Compact JSON for assertion messages."""
    return json.dumps(value, default=str)[:2000]
