"""Mail intake: the SMTP gateway next to a do-nothing aiosmtpd sink, and ``supportdesk ingest``.

One run, one client, the targets side by side:

- sink: aiosmtpd's ``SMTP`` in its own process (``loop.create_server``) with a
  handler whose ``handle_DATA`` answers ``250 OK`` and keeps nothing: the most
  any aiosmtpd server can take from this client on this machine;
- sqlite: ``supportdesk serve`` on a fresh SQLite file (WAL, synchronous=FULL);
- postgres: ``supportdesk serve`` on a fresh PostgreSQL database.

The grid is 1, 4 and 16 concurrent connections x 2 KB and 64 KB messages
(well-formed RFC 5322, CRLF, a unique Message-ID and sender each; the 64 KB
ones carry a base64 attachment). Each connection delivers its share in one
SMTP session: EHLO once, then MAIL/RCPT/DATA per message. Within a cell the
targets take turns, so drift in the machine's load hits them alike; after a
gateway's turn the bench waits until every message is filed and every
acknowledgement has left, and until the processes are idle again.

The client is a lean asyncio protocol in this process (no threads, no
smtplib): it shares the two cores with the servers, so it must be cheap, and
its CPU is reported. Per cell: accepted messages/s, p50 and p99 latency from
writing the final ``.`` to reading the reply, errors (replies that are not
2xx/3xx), the ratio to the sink, and for the gateways how fast mail is filed
into requests (serve's background process, after the ``250``) and how fast
the acknowledgements leave. CPU per process comes from /proc; "others" is CPU
used by everything outside the run, so a noisy figure shows as one. Peak
memory is VmHWM plus VmRSS/PSS sampled every 0.2 s, per process and for the
whole serve tree.

Two reference points measured in the same run: one INSERT + COMMIT of a 2 KB
row alone (what a ``250`` must at least wait for), and the listener alone
(the product's own ``SmtpGateway`` and ``Acceptor`` in a process with no
mail processor and no delivery, on a database of its own), which shows what
filing costs acceptance.

Last, ``supportdesk ingest --json`` files generated ``.eml`` files into a
fresh SQLite database (store raw + parse + file, the whole pipeline).

Usage: python bench/intake.py [--quick] [--messages N] [--ingest-files N]
                              [--connections 1,4,16] [--postgres-url URL | --no-postgres]
``--messages N`` sets the messages per 2 KB cell (default 1,000, --quick 200);
64 KB cells get N/5. Temporary files live under /tmp and are removed; the
PostgreSQL databases are dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.proc_stats import children_of, cmdline, comm, pss_kb, stat_fields, status_kb  # noqa: E402 - light: os only

PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIZES = {"2 KB": 2 * 1024, "64 KB": 64 * 1024}
RECIPIENT = "support@localhost"
RUN_ID = uuid.uuid4().hex[:8]
DEFAULT_MESSAGES = 1000
QUICK_MESSAGES = 200
STALL_SECONDS = 60.0  # no reply on any connection for this long ends the cell

GOAL_RATIO = 0.5
GOAL_P99_MS = 50.0
GOAL_P99_CONNECTIONS = 16
GOAL_RSS_MB = 150.0
HELPDESK_RATE = 85.0  # django-helpdesk get_email, messages/s, SQLite WAL, this machine class (the issue)
HELPDESK_RATE_DESIGN = 78.0  # the figure DESIGN.md §7 quotes
GOAL_INGEST_FACTOR = 10.0


# --- servers this script runs in child processes ------------------------------------------------------


def run_sink(port: int) -> int:
    """A do-nothing aiosmtpd server: the ceiling for any aiosmtpd-based gateway."""
    from aiosmtpd.smtp import SMTP

    class Sink:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(Sink(), enable_SMTPUTF8=True), "127.0.0.1", port)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(serve())
    return 0


def run_listener_only() -> int:
    """The product's SMTP listener and group commit, with no mail processor and no delivery.

    Settings come from the environment exactly as for ``serve``; logging is
    set up as ``serve`` sets it up, so the listener pays the same per-session cost.
    """
    sys.path.insert(0, str(ROOT))
    from core import migrate
    from core.settings import load_settings
    from core.store import Store
    from intake.acceptance import Acceptor
    from intake.listener import SmtpGateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = load_settings()
    store = Store.open(settings)
    migrate.upgrade(store.engine)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        acceptor = Acceptor(store)
        acceptor.start()
        gateway = SmtpGateway(settings, acceptor)
        await gateway.start()
        await stop.wait()
        await gateway.stop()
        await acceptor.close()

    try:
        asyncio.run(serve())
    finally:
        store.dispose()
    return 0


# --- messages ----------------------------------------------------------------------------------------

_WORDS = ("invoice order refund payment account charge card delivery missing twice please "
          "could you check the amount we were billed last month and confirm whether a credit "
          "note will follow thanks regards support ticket reference customer number").split()


def _text_lines(rng: random.Random, size: int) -> list[str]:
    """Plain-text lines (at most 76 characters) adding up to about ``size`` bytes with CRLF."""
    lines: list[str] = []
    total = 0
    while total < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 11)))[:76]
        if rng.random() < 0.03:
            line = "." + line  # exercises dot-stuffing
        lines.append(line)
        total += len(line) + 2
    return lines


def _dot_stuff(lines: list[str]) -> bytes:
    return "".join(("." + line if line.startswith(".") else line) + "\r\n" for line in lines).encode("ascii")


@dataclass(frozen=True)
class Message:
    mail_from: bytes  # the MAIL command
    wire: bytes  # CRLF, dot-stuffed, without the final ".\r\n"
    size: int  # the message as stored (before dot-stuffing)


def make_message(seq: int, size: int, rng: random.Random) -> Message:
    """A well-formed message from a sender of its own (the gateway limits new requests per sender)."""
    domain = f"client-{seq % 97}.example"
    sender = f"customer{seq}.{RUN_ID}@{domain}"
    headers = [
        f"From: Customer {seq} <{sender}>",
        f"To: Support <{RECIPIENT}>",
        f"Subject: Problem with order {seq}, invoice INV-{100 + seq % 900}",
        f"Date: {formatdate(localtime=False)}",
        f"Message-ID: <bench.{RUN_ID}.{seq}@{domain}>",
        "MIME-Version: 1.0",
    ]
    if size <= 8 * 1024:
        headers += ["Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit"]
        head_len = sum(len(h) + 2 for h in headers) + 2
        lines = _text_lines(rng, size - head_len)
        overshoot = head_len + sum(len(line) + 2 for line in lines) - size
        if overshoot > 0 and len(lines[-1]) > overshoot:
            lines[-1] = lines[-1][: len(lines[-1]) - overshoot].rstrip() or "x"
        lines = headers + [""] + lines
    else:
        boundary = f"=_bench_{RUN_ID}_{seq}"
        headers.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
        head = headers + ["", "This is a multi-part message in MIME format.", f"--{boundary}",
                          "Content-Type: text/plain; charset=us-ascii", "Content-Transfer-Encoding: 7bit", ""]
        head += _text_lines(rng, 1500)
        head += [f"--{boundary}", f'Content-Type: application/pdf; name="invoice-{seq}.pdf"',
                 "Content-Transfer-Encoding: base64",
                 f'Content-Disposition: attachment; filename="invoice-{seq}.pdf"', ""]
        tail = ["", f"--{boundary}--"]
        used = sum(len(line) + 2 for line in head + tail)
        encoded = base64.b64encode(rng.randbytes(max(0, (size - used) * 3 * 76 // (4 * 78)))).decode("ascii")
        lines = head + [encoded[i:i + 76] for i in range(0, len(encoded), 76)] + tail
    return Message(f"MAIL FROM:<{sender}>\r\n".encode("ascii"), _dot_stuff(lines),
                   sum(len(line) + 2 for line in lines))


class Numbering:
    """Message numbers unique over the whole run, so no two messages share bytes or a sender."""

    def __init__(self) -> None:
        self._next = 0

    def take(self, n: int) -> range:
        start = self._next
        self._next += n
        return range(start, start + n)


# --- the client -----------------------------------------------------------------------------------------


class ClientProtocol(asyncio.Protocol):
    """One SMTP session with one command outstanding at a time (the servers do not offer PIPELINING)."""

    last_reply = 0.0  # when any session last read a reply (perf_counter), for the stall watchdog

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._waiter = asyncio.get_running_loop().create_future()  # for the greeting

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                return
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 2]
            if line[3:4] == b"-":  # a continuation line of a multi-line reply
                continue
            ClientProtocol.last_reply = time.perf_counter()
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result((int(line[:3]) if line[:3].isdigit() else 0, line))

    def connection_lost(self, exc: Exception | None) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection closed"))

    def reply(self) -> asyncio.Future[tuple[int, bytes]]:
        if self._waiter is None:
            self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def send(self, data: bytes) -> asyncio.Future[tuple[int, bytes]]:
        self._waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(data)
        return self._waiter


@dataclass
class SessionResult:
    accepted: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


async def run_session(port: int, messages: list[Message], result: SessionResult,
                      transports: list[asyncio.Transport]) -> None:
    loop = asyncio.get_running_loop()
    rcpt = f"RCPT TO:<{RECIPIENT}>\r\n".encode()
    try:
        transport, proto = await loop.create_connection(ClientProtocol, "127.0.0.1", port)
        transports.append(transport)
        code, line = await proto.reply()
        if code != 220:
            raise ConnectionError(f"greeting {line[:40]!r}")
        code, line = await proto.send(b"EHLO bench.example\r\n")
        if code != 250:
            raise ConnectionError(f"EHLO {line[:40]!r}")
        for message in messages:
            code, line = await proto.send(message.mail_from)
            if code == 250:
                code, line = await proto.send(rcpt)
                if code == 250:
                    code, line = await proto.send(b"DATA\r\n")
                    if code == 354:
                        started = time.perf_counter()
                        code, line = await proto.send(message.wire + b".\r\n")
                        if 200 <= code < 300:
                            result.latencies.append(time.perf_counter() - started)
                            result.accepted += 1
                            continue
            result.errors[line[:40].decode("ascii", "replace")] += 1
            if code >= 400:
                await proto.send(b"RSET\r\n")
        await proto.send(b"QUIT\r\n")
        transport.close()
    except (ConnectionError, OSError) as exc:
        lost = len(messages) - result.accepted - sum(result.errors.values())
        if lost > 0:
            result.errors[f"{exc.__class__.__name__}: {exc}"[:60]] += lost


@dataclass
class CellRun:
    sent: int
    accepted: int
    seconds: float
    latencies_ms: list[float]
    errors: Counter[str]
    client_cpu: float  # CPU seconds of this script's main thread (the client's event loop)


def drive(port: int, messages: list[Message], connections: int) -> tuple[CellRun, float]:
    """Deliver ``messages`` over ``connections`` sessions; returns the run and when it started (perf_counter)."""
    shares = [messages[i::connections] for i in range(connections)]
    results = [SessionResult() for _ in shares]
    transports: list[asyncio.Transport] = []

    async def watchdog() -> None:
        # A server that stops answering must not hang the benchmark: close every session.
        while True:
            await asyncio.sleep(1.0)
            if time.perf_counter() - ClientProtocol.last_reply > STALL_SECONDS:
                for transport in transports:
                    transport.abort()
                return

    async def all_sessions() -> float:
        started = ClientProtocol.last_reply = time.perf_counter()
        guard = asyncio.get_running_loop().create_task(watchdog())
        await asyncio.gather(*(run_session(port, share, res, transports) for share, res in zip(shares, results)))
        guard.cancel()
        return started

    cpu0 = time.thread_time()
    started = asyncio.run(all_sessions())
    seconds = time.perf_counter() - started
    client_cpu = time.thread_time() - cpu0
    errors: Counter[str] = Counter()
    for res in results:
        errors.update(res.errors)
    latencies = sorted(x * 1000 for res in results for x in res.latencies)
    return CellRun(len(messages), sum(r.accepted for r in results), seconds, latencies, errors, client_cpu), started


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


# --- /proc ------------------------------------------------------------------------------------------------


def cpu_ticks(pid: int) -> int:
    fields = stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if fields else 0  # utime + stime


# serve's children name themselves (core/process_name.py). A forked one has serve's command line; a spawned
# one, "python -c ... spawn_main" until it has named itself.
CHILD_NAMES = {"sd-background": "background process", "sd-writer": "writer"}


def child_label(pid: int, parent: int | None = None) -> str:
    line = cmdline(pid)
    if "resource_tracker" in line:
        return "resource tracker"
    name = comm(pid)
    if name in CHILD_NAMES:
        return CHILD_NAMES[name]
    if parent is not None and line and line == cmdline(parent):
        return "background process"  # serve's one fork, in the instant before it names itself
    return "unnamed child" if "spawn_main" in line else (line.split() or ["?"])[0].rsplit("/", 1)[-1]


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    total = sum(values[:8])
    return total - values[3] - values[4], total  # idle and iowait are not busy


def _alive(pid: int) -> bool:
    return stat_fields(pid) is not None


class MemorySampler(threading.Thread):
    """Samples VmRSS and PSS of each watched process and its children every 0.2 s; keeps the maxima.

    Roles: "main" (the watched process), one per kind of child, "tree" (sum
    of RSS at one instant) and "tree pss" (sum of PSS at one instant), and
    "tree pss under load": the latter while a cell is under way for that
    target (from its first message until every message is filed and every
    acknowledgement sent), as DESIGN.md words the goal.
    """

    def __init__(self) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self._roots: dict[str, int] = {}
        self._children: dict[str, list[int]] = {}
        self.peak: dict[str, dict[str, int]] = {}  # name -> role -> kB
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._loaded: set[str] = set()

    def under_load(self, name: str, loaded: bool) -> None:
        with self._lock:
            (self._loaded.add if loaded else self._loaded.discard)(name)

    def watch(self, name: str, pid: int) -> None:
        with self._lock:
            self._roots[name] = pid
            self._children[name] = []
            self.peak.setdefault(name, {})

    def unwatch(self, name: str) -> None:
        self.record_hwm(name)
        with self._lock:
            self._roots.pop(name, None)

    def children(self, name: str) -> list[int]:
        with self._lock:
            return list(self._children.get(name, []))

    def record_hwm(self, name: str) -> None:
        """Fold in VmHWM (the kernel's own per-process peak) while the processes still exist."""
        with self._lock:
            root = self._roots.get(name)
            kids = list(self._children.get(name, []))
        if root is None:
            return
        self._note(name, "main", status_kb(root, "VmHWM"))
        for kid in kids:
            self._note(name, child_label(kid, root), status_kb(kid, "VmHWM"))

    def _note(self, name: str, role: str, kb: int) -> None:
        roles = self.peak.setdefault(name, {})
        if kb > roles.get(role, 0):
            roles[role] = kb

    def run(self) -> None:
        tick = 0
        while not self._halt.wait(0.2):
            with self._lock:
                roots = dict(self._roots)
            for name, root in roots.items():
                if tick % 5 == 0 or not self._children.get(name):
                    kids = children_of(root)
                    with self._lock:
                        self._children[name] = kids
                rss = status_kb(root, "VmRSS")
                total, pss = rss, pss_kb(root)
                self._note(name, "main", rss)
                for kid in self.children(name):
                    kid_rss = status_kb(kid, "VmRSS")
                    self._note(name, child_label(kid, root), kid_rss)
                    total += kid_rss
                    pss += pss_kb(kid)
                self._note(name, "tree", total)
                self._note(name, "tree pss", pss)
                if name in self._loaded:
                    self._note(name, "tree pss under load", pss)
            tick += 1

    def stop(self) -> None:
        self._halt.set()
        self.join()


# --- databases ---------------------------------------------------------------------------------------------


class Database:
    """A fresh database for one target, and the read-only queries the bench polls it with."""

    url: str

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def backend_pids(self) -> list[int]:
        return []

    def close(self) -> None:
        pass

    def counts(self) -> tuple[int, int, int]:
        """(messages stored, messages not filed yet, e-mails waiting in the outbox)."""
        row = self.query(
            "SELECT (SELECT count(*) FROM inbound_mail),"
            " (SELECT count(*) FROM inbound_mail WHERE status = 'received'),"
            " (SELECT count(*) FROM outbox WHERE channel = 'email' AND status = 'pending')")[0]
        return int(row[0]), int(row[1]), int(row[2])

    def outcomes(self) -> Counter[str]:
        return Counter({f"{status}/{outcome or '-'}": int(n) for status, outcome, n in self.query(
            "SELECT status, outcome, count(*) FROM inbound_mail GROUP BY status, outcome")})


class SqliteDatabase(Database):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.url = f"sqlite:///{path}"
        self._conn: sqlite3.Connection | None = None

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self._conn is None:
            self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        return self._conn.execute(sql).fetchall()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PostgresDatabase(Database):
    def __init__(self, admin_url: str, suffix: str) -> None:
        from sqlalchemy.engine import make_url

        admin = make_url(admin_url)
        self.name = f"bench_intake_{RUN_ID}{suffix}"
        self._admin = _conninfo(admin)
        self.conninfo = _conninfo(admin.set(database=self.name))
        self.url = admin.set(drivername="postgresql+psycopg", database=self.name).render_as_string(
            hide_password=False)
        self.server_version = ""
        self._conn: Any = None
        self._created = False

    def create(self) -> None:
        import psycopg

        with psycopg.connect(self._admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
            self.server_version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]
        self._created = True

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        if self._conn is None:
            self._conn = psycopg.connect(self.conninfo, autocommit=True)
        return self._conn.execute(sql).fetchall()

    def backend_pids(self) -> list[int]:
        marker = f" {self.name} "
        return [int(e) for e in os.listdir("/proc")
                if e.isdigit() and cmdline(int(e)).startswith("postgres:") and marker in cmdline(int(e))]

    def close(self) -> None:
        import psycopg

        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._created:
            with psycopg.connect(self._admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            self._created = False


def _conninfo(url: Any) -> str:
    parts = {"host": url.host or "127.0.0.1", "port": url.port or 5432, "user": url.username or "postgres",
             "dbname": url.database or "postgres"}
    if url.password:
        parts["password"] = url.password
    return " ".join(f"{k}={v}" for k, v in parts.items())


# --- targets ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TargetFailed(Exception):
    pass


class Target:
    """One server under test: "sink", "serve" (the full gateway) or "listener" (the listener alone)."""

    def __init__(self, name: str, kind: str, workdir: Path, db: Database | None = None) -> None:
        self.name = name
        self.kind = kind
        self.workdir = workdir
        self.db = db
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{name}.log"
        self.exit_note = ""

    @property
    def is_gateway(self) -> bool:
        return self.kind == "serve"

    def command(self) -> tuple[list[str], dict[str, str]]:
        if self.kind == "sink":
            return [PYTHON, str(Path(__file__).resolve()), "--sink-port", str(self.port)], dict(os.environ)
        assert self.db is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPPORTDESK_", "SLACK_"))}
        env.update(
            PYTHONPATH=str(ROOT),
            SUPPORTDESK_DATABASE_URL=self.db.url,
            SUPPORTDESK_SMTP_LISTEN=f"127.0.0.1:{self.port}",
            SUPPORTDESK_HTTP_LISTEN=f"127.0.0.1:{free_port()}",
            SUPPORTDESK_OUTGOING_MAILDIR=str(self.workdir / "outgoing-mail"),
        )
        if self.kind == "listener":
            return [PYTHON, str(Path(__file__).resolve()), "--listener-only"], env
        return [PYTHON, "-m", "cli.main", "serve"], env

    def start(self, sampler: MemorySampler) -> None:
        argv, env = self.command()
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        sampler.watch(self.name, self.process.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TargetFailed(f"{self.name} exited with {self.process.returncode} before listening:\n"
                                   + self.log_tail())
            if _greets(self.port):
                return
            time.sleep(0.1)
        raise TargetFailed(f"{self.name} did not listen on port {self.port} within 60 s:\n" + self.log_tail())

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu(self, sampler: MemorySampler) -> dict[str, float]:
        """CPU seconds used so far, by role."""
        if self.process is None:
            return {}
        roles = {"listener": cpu_ticks(self.process.pid) / CLK_TCK}
        for kid in sampler.children(self.name):
            role = "processor" if child_label(kid, self.process.pid) == "background process" else "other child"
            roles[role] = roles.get(role, 0.0) + cpu_ticks(kid) / CLK_TCK
        if self.db is not None and isinstance(self.db, PostgresDatabase):
            roles["postgres"] = sum(cpu_ticks(pid) for pid in self.db.backend_pids()) / CLK_TCK
        return roles

    def stop(self, sampler: MemorySampler) -> None:
        """SIGTERM, wait; serve stops its own children, which is checked."""
        if self.process is None:
            return
        sampler.unwatch(self.name)
        kids = sampler.children(self.name)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.exit_note = "did not stop within 60 s of SIGTERM; killed"
                self.process.kill()
                self.process.wait(10)
        code = self.process.returncode
        if code not in (0, -signal.SIGTERM) and not self.exit_note:
            self.exit_note = f"exited with {code}"
        for kid in kids:  # serve's own children, by pid
            deadline = time.monotonic() + 5
            while _alive(kid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(kid) and any(mark in cmdline(kid) for mark in ("multiprocessing", "cli.main")):  # still ours
                self.exit_note += f" ({child_label(kid)} {kid} outlived serve; killed)"
                os.kill(kid, signal.SIGKILL)
        self.process = None


def _greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.settimeout(5)
            greeting = sock.recv(512)
            sock.sendall(b"QUIT\r\n")
            sock.recv(512)
            return greeting.startswith(b"220")
    except OSError:
        return False


# --- cells -----------------------------------------------------------------------------------------------


@dataclass
class Cell:
    size: str
    connections: int
    target: str
    run: CellRun
    mean_size: float
    filed_seconds: float | None = None  # from the first message sent until all are filed
    acks_seconds: float | None = None  # ... until the e-mail outbox is empty
    drain_note: str = ""
    send_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds during the send phase, by role
    filed_cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds until filed, by role
    send_machine: float = 0.0  # the machine's busy CPU seconds during the send phase
    send_capacity: float = 0.0  # cores x seconds of the send phase
    send_bench_other: float = 0.0  # this script's threads other than the client (the sampler)

    @property
    def rate(self) -> float:
        return self.run.accepted / self.run.seconds if self.run.seconds else 0.0


class CpuSnapshot:
    def __init__(self, target: Target, sampler: MemorySampler) -> None:
        self.roles = target.cpu(sampler)
        self.machine, self.total = machine_ticks()
        self.bench_other = cpu_ticks(os.getpid()) / CLK_TCK - time.thread_time()

    def since(self, earlier: CpuSnapshot) -> dict[str, float]:
        return {role: max(0.0, self.roles[role] - earlier.roles.get(role, 0.0)) for role in self.roles}


def run_cell(target: Target, size_name: str, connections: int, count: int, seq: Numbering,
             sampler: MemorySampler, rng: random.Random, drain_timeout: float) -> Cell:
    """Send ``count`` messages; for a gateway, then wait until they are filed and acknowledged."""
    messages = [make_message(n, SIZES[size_name], rng) for n in seq.take(count)]
    before = target.db.counts()[0] if target.is_gateway and target.db else 0
    cpu_start = CpuSnapshot(target, sampler)
    sampler.under_load(target.name, True)
    try:
        return _run_cell(target, size_name, connections, messages, before, cpu_start, sampler, drain_timeout)
    finally:
        sampler.under_load(target.name, False)


def _run_cell(target: Target, size_name: str, connections: int, messages: list[Message], before: int,
              cpu_start: CpuSnapshot, sampler: MemorySampler, drain_timeout: float) -> Cell:
    run, started = drive(target.port, messages, connections)
    cpu_sent = CpuSnapshot(target, sampler)
    cell = Cell(size_name, connections, target.name, run, statistics.fmean(m.size for m in messages))
    cell.send_cpu = cpu_sent.since(cpu_start) | {"client": run.client_cpu}
    cell.send_machine = (cpu_sent.machine - cpu_start.machine) / CLK_TCK
    cell.send_capacity = (cpu_sent.total - cpu_start.total) / CLK_TCK
    cell.send_bench_other = max(0.0, cpu_sent.bench_other - cpu_start.bench_other)
    if target.is_gateway and target.db is not None:
        _wait_until_filed(target, target.db, cell, before + run.accepted, started, cpu_start, sampler, drain_timeout)
    return cell


def _wait_until_filed(target: Target, db: Database, cell: Cell, expected: int, started: float,
                      cpu_start: CpuSnapshot, sampler: MemorySampler, timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        stored, waiting, outbox = db.counts()
        now = time.perf_counter()
        if cell.filed_seconds is None and stored >= expected and waiting == 0:
            cell.filed_seconds = now - started
            cell.filed_cpu = CpuSnapshot(target, sampler).since(cpu_start)
        if cell.filed_seconds is not None and outbox == 0:
            cell.acks_seconds = now - started
            return
        if not target.running():
            cell.drain_note = f"serve exited with {target.process.returncode if target.process else '?'}"
            return
        time.sleep(0.05)
    stored, waiting, outbox = db.counts()
    cell.drain_note = (f"gave up after {timeout:.0f} s: {waiting} messages not filed, {outbox} e-mails waiting "
                       f"({stored} stored, {expected} expected)")


def settle(targets: list[Target], sampler: MemorySampler, limit: float = 15.0) -> None:
    """Wait until the targets are idle (under 5 % of a core over 0.3 s), so no cell pays for the last one."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = sum(sum(t.cpu(sampler).values()) for t in targets)
        time.sleep(0.3)
        if sum(sum(t.cpu(sampler).values()) for t in targets) - before < 0.015:
            return


@dataclass(frozen=True)
class CommitFloor:
    label: str
    rate: float
    p50_ms: float
    p99_ms: float


def _commit_floor(label: str, commit: Callable[[bytes], None], n: int) -> CommitFloor:
    payload = os.urandom(2048)
    latencies = []
    for _ in range(n):
        t0 = time.perf_counter()
        commit(payload)
        latencies.append((time.perf_counter() - t0) * 1000)
    latencies.sort()
    return CommitFloor(label, n / (sum(latencies) / 1000), statistics.median(latencies), percentile(latencies, 0.99))


def sqlite_commit_floor(folder: Path, when: str, n: int = 200) -> CommitFloor:
    """One INSERT of a 2 KB row and COMMIT, alone, in a file next to the gateway's."""
    path = folder / "floor.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE floor (id INTEGER PRIMARY KEY, raw BLOB)")

        def commit(payload: bytes) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO floor (raw) VALUES (?)", (payload,))
            conn.execute("COMMIT")

        return _commit_floor(f"SQLite (WAL, synchronous=FULL), {when}", commit, n)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def postgres_commit_floor(db: PostgresDatabase, when: str, n: int = 200) -> CommitFloor:
    import psycopg

    with psycopg.connect(db.conninfo, autocommit=True) as conn:
        conn.execute("CREATE TABLE bench_floor (id bigserial PRIMARY KEY, raw bytea)")
        try:
            def commit(payload: bytes) -> None:
                with conn.transaction():
                    conn.execute("INSERT INTO bench_floor (raw) VALUES (%s)", (payload,))

            return _commit_floor(f"PostgreSQL {db.server_version}, {when}", commit, n)
        finally:
            conn.execute("DROP TABLE bench_floor")


# --- ingest ----------------------------------------------------------------------------------------------


def write_eml_files(folder: Path, count: int, rng: random.Random) -> None:
    """2 KB messages from varied senders; about a quarter answer an earlier message; some name an invoice."""
    senders = max(1, count // 4)
    sent: dict[int, list[tuple[str, str]]] = {}
    for n in range(count):
        who = rng.randrange(senders)
        domain = f"shop-{who % 211}.example"
        message_id = f"<ingest.{RUN_ID}.{n}@{domain}>"
        earlier = sent.get(who)
        headers = [f"From: Buyer {who} <buyer{who}@{domain}>", f"To: Support <{RECIPIENT}>",
                   f"Date: {formatdate(localtime=False)}", f"Message-ID: {message_id}"]
        if earlier and rng.random() < 0.5:
            parent_id, subject = rng.choice(earlier)
            headers += [f"Subject: Re: {subject}", f"In-Reply-To: {parent_id}", f"References: {parent_id}"]
        else:
            subject = (f"Invoice INV-{100 + n % 5000} charged twice" if rng.random() < 0.3
                       else f"Question about my order {n}")
            headers.append(f"Subject: {subject}")
        headers += ["MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii",
                    "Content-Transfer-Encoding: 7bit"]
        body = _text_lines(rng, 2048 - sum(len(h) + 2 for h in headers) - 2)
        sent.setdefault(who, []).append((message_id, subject))
        (folder / f"{n:06d}.eml").write_bytes(("\r\n".join(headers + [""] + body) + "\r\n").encode("ascii"))


@dataclass
class IngestResult:
    files: int
    reported: dict[str, Any] | None
    wall_seconds: float
    peak_kb: int
    floor_rate: float
    error: str = ""


def run_ingest(workdir: Path, count: int, sampler: MemorySampler, rng: random.Random) -> IngestResult:
    folder = workdir / "eml"
    folder.mkdir()
    write_eml_files(folder, count, rng)
    floor_rate = stdlib_floor(folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SUPPORTDESK_", "SLACK_"))}
    env.update(PYTHONPATH=str(ROOT), SUPPORTDESK_DATABASE_URL=f"sqlite:///{workdir / 'ingest.db'}",
               SUPPORTDESK_OUTGOING_MAILDIR=str(workdir / "outgoing-mail"))
    upgrade = subprocess.run([PYTHON, "-m", "cli.main", "db", "upgrade"], cwd=workdir, env=env,
                             capture_output=True, text=True)
    if upgrade.returncode != 0:
        return IngestResult(count, None, 0.0, 0, floor_rate, f"db upgrade failed: {upgrade.stderr.strip()[-500:]}")
    started = time.perf_counter()
    process = subprocess.Popen([PYTHON, "-m", "cli.main", "ingest", str(folder), "--json"], cwd=workdir, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler.watch("ingest", process.pid)
    out, err = process.communicate()
    wall = time.perf_counter() - started
    sampler.unwatch("ingest")
    peak = sampler.peak.get("ingest", {}).get("main", 0)
    if process.returncode != 0:
        return IngestResult(count, None, wall, peak, floor_rate,
                            f"ingest exited with {process.returncode}: {err.strip()[-500:]}")
    try:
        reported = json.loads(out)
    except ValueError:
        return IngestResult(count, None, wall, peak, floor_rate, f"ingest printed no JSON: {out[-300:]!r}")
    return IngestResult(count, reported, wall, peak, floor_rate)


def stdlib_floor(folder: Path) -> float:
    """Read + parse every file with the standard library and take its text body; no store at all."""
    from email import message_from_bytes, policy

    files = sorted(folder.iterdir())
    started = time.perf_counter()
    for path in files:
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        body = message.get_body(("plain",))
        if body is not None:
            body.get_content()
        str(message["subject"])
    return len(files) / (time.perf_counter() - started)


# --- report ---------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return f"{value:.2f}" if value == value else "-"


def _ratio(cell: Cell, base: Cell | None) -> str:
    return f"{cell.rate / base.rate:.2f}x" if base is not None and base.rate and base is not cell else "-"


def print_floors(floors: list[CommitFloor]) -> None:
    if not floors:
        return
    print("\nBaseline: one INSERT of a 2 KB row + COMMIT, alone, 200 times (the least a 250 can wait for),")
    print("before the grid and after it")
    for floor in sorted(floors, key=lambda f: (f.label.split(",")[0], f.label.endswith("after"))):
        print(f"  {floor.label:<40}{floor.rate:>7,.0f} commits/s   p50 {floor.p50_ms:.2f} ms"
              f"   p99 {floor.p99_ms:.2f} ms")


def print_cells(cells: list[Cell], order: list[str]) -> None:
    sink = {(c.size, c.connections): c for c in cells if c.target == "sink"}
    print("\nAccepted and filed, per cell (latency: final '.' written -> reply read)")
    print(f"  {'size':<6}{'conns':>5}  {'target':<10}{'msgs':>6}{'errors':>7}{'accepted/s':>12}{'vs sink':>9}"
          f"{'p50 ms':>9}{'p99 ms':>9}{'filed/s':>10}{'acks out/s':>12}")
    for cell in cells:
        first = cell.target == order[0]
        filed = f"{cell.run.accepted / cell.filed_seconds:,.0f}" if cell.filed_seconds else "-"
        acks = f"{cell.run.accepted / cell.acks_seconds:,.0f}" if cell.acks_seconds else "-"
        print(f"  {cell.size if first else '':<6}{cell.connections if first else '':>5}  {cell.target:<10}"
              f"{cell.run.sent:>6}{sum(cell.run.errors.values()):>7}{cell.rate:>12,.0f}"
              f"{_ratio(cell, sink.get((cell.size, cell.connections))):>9}"
              f"{_ms(percentile(cell.run.latencies_ms, 0.50)):>9}{_ms(percentile(cell.run.latencies_ms, 0.99)):>9}"
              f"{filed:>10}{acks:>12}")
        if cell.drain_note:
            print(f"  {'':<13}{cell.target}: {cell.drain_note}")
        for reply, n in cell.run.errors.most_common(3):
            print(f"  {'':<13}{n} x {reply!r}")
    print("  filed/s: accepted messages / time from the first message sent until all are filed into requests;")
    print("  acks out/s: the same until the e-mail outbox is empty (one acknowledgement per new request).")


def print_listener_alone(alone: list[Cell], cells: list[Cell]) -> None:
    if not alone:
        return
    index = {(c.size, c.connections, c.target): c for c in cells}
    print("\nThe listener alone: SmtpGateway + Acceptor in a process of their own, no mail processor and no")
    print("delivery, on a database of their own (what acceptance costs when nothing else uses the store)")
    print(f"  {'size':<6}{'conns':>5}  {'store':<10}{'msgs':>6}{'errors':>7}{'accepted/s':>12}{'vs sink':>9}"
          f"{'p50 ms':>9}{'p99 ms':>9}{'serve/alone':>13}")
    for cell in alone:
        store = cell.target.split("-")[0]
        serve = index.get((cell.size, cell.connections, store))
        print(f"  {cell.size:<6}{cell.connections:>5}  {store:<10}{cell.run.sent:>6}"
              f"{sum(cell.run.errors.values()):>7}{cell.rate:>12,.0f}"
              f"{_ratio(cell, index.get((cell.size, cell.connections, 'sink'))):>9}"
              f"{_ms(percentile(cell.run.latencies_ms, 0.50)):>9}{_ms(percentile(cell.run.latencies_ms, 0.99)):>9}"
              f"{_ratio(serve, cell) if serve is not None else '-':>13}")
        for reply, n in cell.run.errors.most_common(3):
            print(f"  {'':<13}{n} x {reply!r}")
    print("  serve/alone: the full gateway's accepted/s in the same cell divided by the listener alone's.")


def print_cpu(cells: list[Cell], order: list[str]) -> None:
    print(f"\nWhere the CPU went while the client was sending (% of one core; {os.cpu_count()} cores = "
          f"{100 * (os.cpu_count() or 1)} %), and CPU per accepted message")
    print("from the first message sent until every message was filed (ms)")
    print(f"  {'size':<6}{'conns':>5}  {'target':<15}{'client':>7}{'server':>8}{'procssr':>8}{'pg':>6}"
          f"{'others':>8}{'idle':>6}  |{'server':>8}{'procssr':>8}{'pg':>6}")
    for cell in cells:
        seconds = cell.run.seconds or 1.0
        pct = {role: 100 * value / seconds for role, value in cell.send_cpu.items()}
        other = 100 * max(0.0, cell.send_machine - sum(cell.send_cpu.values()) - cell.send_bench_other) / seconds
        idle = 100 * max(0.0, cell.send_capacity - cell.send_machine) / seconds
        first = cell.target == order[0] or cell.target not in order

        def per_msg(role: str) -> str:
            spent = cell.filed_cpu.get(role)
            return f"{1000 * spent / cell.run.accepted:.2f}" if spent is not None and cell.run.accepted else "-"

        print(f"  {cell.size if first else '':<6}{cell.connections if first else '':>5}  {cell.target:<15}"
              f"{pct.get('client', 0):>7.0f}{pct.get('listener', 0):>8.0f}"
              f"{_pct(pct, 'processor'):>8}{_pct(pct, 'postgres'):>6}{other:>8.0f}{idle:>6.0f}  |"
              f"{per_msg('listener'):>8}{per_msg('processor'):>8}{per_msg('postgres'):>6}")
    print("  client = this script's event loop; server = the serving process (for the gateways: the SMTP")
    print("  listener, its commit thread and e-mail delivery); procssr = serve's background process;")
    print("  pg = PostgreSQL backends of that target's database; others = busy CPU of everything outside this")
    print("  run (other work on the machine); idle = cores idle (waiting on disk, locks or round trips).")


def _pct(pct: dict[str, float], role: str) -> str:
    return f"{pct[role]:.0f}" if role in pct else "-"


def print_memory(memory: dict[str, dict[str, int]], names: list[str]) -> None:
    print("\nPeak memory (max of VmHWM at the end and VmRSS sampled every 0.2 s; MB)")
    for name in names:
        roles = memory.get(name)
        if not roles:
            continue
        kind = "serve process" if name in ("sqlite", "postgres") else "process"
        children = [f"{role} {kb / 1024:.0f}" for role, kb in sorted(roles.items())
                    if role != "main" and not role.startswith("tree")]
        parts = [f"{kind} {roles.get('main', 0) / 1024:.0f}", *children]
        if children:
            parts.append(f"whole tree at one instant: RSS {roles.get('tree', 0) / 1024:.0f}, "
                         f"PSS {roles.get('tree pss', 0) / 1024:.0f} "
                         f"(under intake load {roles.get('tree pss under load', 0) / 1024:.0f})")
        print(f"  {name:<18}" + ", ".join(parts))
    print("  PSS divides pages the processes share (interpreter, libraries) among them; RSS counts them in each.")


def print_ingest(result: IngestResult) -> None:
    print(f"\nsupportdesk ingest: {result.files:,} generated .eml files (2 KB, {max(1, result.files // 4):,} senders, "
          "about 1 in 4 a reply with In-Reply-To,")
    print("some naming an invoice INV-nnn) into a fresh SQLite database; the whole pipeline: store raw + parse + file")
    if result.reported is None:
        print(f"  failed: {result.error}")
        return
    rep = result.reported
    filed = ", ".join(f"{n} {outcome}" for outcome, n in rep.get("filed", {}).items())
    print(f"  its own figure: {rep.get('messages_per_second')} messages/s over {rep.get('seconds')} s")
    print(f"  wall clock, interpreter start-up included: {result.files / result.wall_seconds:,.0f} messages/s over "
          f"{result.wall_seconds:.2f} s; peak RSS {result.peak_kb / 1024:.0f} MB")
    print(f"  filed: {filed or '-'}; new {rep.get('new')}, already stored {rep.get('already_stored')}")
    print("  for scale, in this process: reading and parsing the same files with the stdlib (policy.default, "
          "text body),")
    print(f"  storing nothing: {result.floor_rate:,.0f} messages/s")


def verdict(ok: bool | None) -> str:
    return "[met]    " if ok else "[not met]" if ok is not None else "[no data]"


def print_goals(cells: list[Cell], memory: dict[str, dict[str, int]], ingest: IngestResult | None,
                gateways: list[str]) -> None:
    print("\nGoals (DESIGN.md §7 and the issue), next to this run's figures")
    sink = {(c.size, c.connections): c for c in cells if c.target == "sink"}
    for name in gateways:
        ratios = [(c.rate / sink[(c.size, c.connections)].rate, c) for c in cells
                  if c.target == name and (c.size, c.connections) in sink and sink[(c.size, c.connections)].rate]
        if not ratios:
            print(f"  {verdict(None)} {name}: accepted >= {GOAL_RATIO:.0%} of the sink")
            continue
        met = sum(1 for r, _ in ratios if r >= GOAL_RATIO)
        worst, wcell = min(ratios, key=lambda rc: rc[0])
        best, bcell = max(ratios, key=lambda rc: rc[0])
        print(f"  {verdict(met == len(ratios))} {name}: accepted >= {GOAL_RATIO:.0%} of the sink in every cell: "
              f"met in {met} of {len(ratios)}, from {worst:.2f}x ({wcell.size}, {wcell.connections} conn) "
              f"to {best:.2f}x ({bcell.size}, {bcell.connections} conn)")
    p99_cells = [c for c in cells if c.target == "sqlite" and c.connections == GOAL_P99_CONNECTIONS]
    if not p99_cells:
        print(f"  {verdict(None)} sqlite: p99 < {GOAL_P99_MS:.0f} ms at {GOAL_P99_CONNECTIONS} connections")
    for cell in p99_cells:
        p99 = percentile(cell.run.latencies_ms, 0.99)
        print(f"  {verdict(p99 < GOAL_P99_MS)} sqlite: p99 < {GOAL_P99_MS:.0f} ms at {cell.connections} connections, "
              f"{cell.size}: {p99:.1f} ms")
    print(f"  {'':<10}(DESIGN.md §7 words it as 20 concurrent connections; the issue's grid stops at 16)")
    for name in gateways:
        roles = memory.get(name, {})
        if not roles:
            print(f"  {verdict(None)} {name}: peak memory of serve < {GOAL_RSS_MB:.0f} MB")
            continue
        processes = {"serve": roles.get("main", 0) / 1024}
        processes.update((role, kb / 1024) for role, kb in roles.items()
                         if role != "main" and not role.startswith("tree"))
        rss_mb, pss_mb = roles.get("tree", 0) / 1024, roles.get("tree pss", 0) / 1024
        print(f"  {verdict(max(processes.values()) < GOAL_RSS_MB)} {name}: peak RSS < {GOAL_RSS_MB:.0f} MB per "
              f"process: " + ", ".join(f"{role} {mb:.0f} MB" for role, mb in processes.items()))
        loaded_mb = roles.get("tree pss under load", 0) / 1024
        print(f"  {verdict(loaded_mb < GOAL_RSS_MB)} {name}: serve with its children < {GOAL_RSS_MB:.0f} MB at one "
              f"instant under intake load: PSS {loaded_mb:.0f} MB")
        print(f"  {'':<10}(at any instant of the run, start-up and its digests included: PSS {pss_mb:.0f} MB, "
              f"RSS summed {rss_mb:.0f} MB)")
    if ingest is None:
        return
    goal = GOAL_INGEST_FACTOR * HELPDESK_RATE
    if ingest.reported is None:
        print(f"  {verdict(None)} ingest >= {goal:.0f} messages/s: {ingest.error}")
        return
    rate = float(ingest.reported.get("messages_per_second") or 0.0)
    print(f"  {verdict(rate >= goal)} ingest >= {GOAL_INGEST_FACTOR:.0f}x django-helpdesk get_email "
          f"({HELPDESK_RATE:.0f}/s per the issue) = {goal:.0f} messages/s: {rate:,.0f}/s "
          f"({rate / HELPDESK_RATE:.1f}x); by the wall clock, start-up included, "
          f"{ingest.files / ingest.wall_seconds:,.0f}/s")
    print(f"  {'':<10}(DESIGN.md §7 quotes {HELPDESK_RATE_DESIGN:.0f}/s for get_email, a goal of "
          f"{GOAL_INGEST_FACTOR * HELPDESK_RATE_DESIGN:.0f}/s; that baseline is quoted, not measured in this run)")


# --- main ------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_MESSAGES} messages per 2 KB cell, "
                        "2,000 ingest files (about a minute)")
    parser.add_argument("--messages", type=int, help=f"messages per 2 KB cell (default {DEFAULT_MESSAGES}); "
                        "64 KB cells get a fifth")
    parser.add_argument("--ingest-files", type=int, help=".eml files for the ingest run (default 10,000; 0 skips)")
    parser.add_argument("--connections", default="1,4,16", help="comma-separated concurrency levels")
    parser.add_argument("--postgres-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
                        help="a database to connect to for CREATE/DROP DATABASE")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--drain-timeout", type=float, default=180.0,
                        help="seconds to wait for a cell's mail to be filed and acknowledged")
    parser.add_argument("--sink-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--listener-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sink_port:
        return run_sink(args.sink_port)
    if args.listener_only:
        return run_listener_only()
    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so servers are stopped and databases dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    small = args.messages or (QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES)
    counts = {"2 KB": small, "64 KB": max(16, small // 5)}
    ingest_files = args.ingest_files if args.ingest_files is not None else (2000 if args.quick else 10_000)
    levels = [int(x) for x in args.connections.split(",") if x.strip()]
    rng = random.Random(20261123)
    seq = Numbering()

    import aiosmtpd

    started = time.perf_counter()
    print(f"supportdesk intake benchmark — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} cores, Python {platform.python_version()}, aiosmtpd {aiosmtpd.__version__}, "
          f"load average before {os.getloadavg()[0]:.2f}")
    print(f"messages per cell: {counts['2 KB']} x 2 KB, {counts['64 KB']} x 64 KB; connections {levels}; "
          "one sender address per message (the new-request limit is per sender)")
    sys.stdout.flush()

    sampler = MemorySampler()
    sampler.start()
    workdir = Path(tempfile.mkdtemp(prefix="bench_intake_", dir="/tmp"))
    started_targets: list[Target] = []
    databases: list[Database] = []
    notes: list[str] = []
    floors: list[CommitFloor] = []
    cells: list[Cell] = []
    alone: list[Cell] = []
    outcomes: dict[str, Counter[str]] = {}
    ingest: IngestResult | None = None

    def start(target: Target) -> bool:
        try:
            started_targets.append(target)
            target.start(sampler)
            return True
        except TargetFailed as exc:
            notes.append(f"{target.name} not measured: {exc}")
            target.stop(sampler)
            return False

    def stop(target: Target) -> None:
        target.stop(sampler)
        if target.exit_note:
            notes.append(f"{target.name}: {target.exit_note}\n{target.log_tail(10)}")

    try:
        stores: list[tuple[str, Database, Database]] = []  # (name, for serve, for the listener alone)
        sqlite_dir = _sub(workdir, "sqlite")
        floors.append(sqlite_commit_floor(sqlite_dir, "before"))
        stores.append(("sqlite", SqliteDatabase(sqlite_dir / "bench.db"), SqliteDatabase(sqlite_dir / "alone.db")))
        if not args.no_postgres:
            pg, pg_alone = PostgresDatabase(args.postgres_url, ""), PostgresDatabase(args.postgres_url, "_alone")
            try:
                for db in (pg, pg_alone):
                    databases.append(db)
                    db.create()
                floors.append(postgres_commit_floor(pg, "before"))
                stores.append(("postgres", pg, pg_alone))
            except Exception as exc:  # noqa: BLE001 - report it and go on without PostgreSQL
                notes.append(f"PostgreSQL skipped: {exc.__class__.__name__}: {exc}")
        databases += [db for _, serve_db, alone_db in stores for db in (serve_db, alone_db)
                      if db not in databases]

        targets = [t for t in [Target("sink", "sink", _sub(workdir, "sink"))]
                   + [Target(name, "serve", _sub(workdir, name) if name != "sqlite" else sqlite_dir, db)
                      for name, db, _ in stores] if start(t)]
        if not targets or targets[0].name != "sink":
            print("\n".join(notes))
            return 1
        print("targets: sink = aiosmtpd SMTP answering 250 and keeping nothing"
              + "".join(f"; {t.name} = supportdesk serve" for t in targets if t.is_gateway)
              + "".join(f" (PostgreSQL {t.db.server_version})" for t in targets
                        if isinstance(t.db, PostgresDatabase)))
        print(f"SQLite files and temp files on {_fs_type('/tmp')} (/tmp); SQLite in WAL mode with synchronous=FULL")
        sys.stdout.flush()

        # Warm-up: first connections, lazy imports, pools and page caches, outside the figures.
        for target in targets:
            run_cell(target, "2 KB", 4, 40, seq, sampler, rng, args.drain_timeout)
        settle(targets, sampler)

        for size_name in SIZES:
            for connections in levels:
                for target in targets:
                    if target.running():
                        _progress(f"{size_name} x {connections} -> {target.name}")
                        cells.append(run_cell(target, size_name, connections, counts[size_name], seq, sampler,
                                              rng, args.drain_timeout))
                        settle(targets, sampler)
        for target in targets:
            sampler.record_hwm(target.name)
            if target.is_gateway and target.db is not None:
                outcomes[target.name] = target.db.outcomes()

        # The listener alone, 2 KB at the lowest and highest concurrency, while the full gateways idle.
        for name, _, alone_db in stores:
            listener = Target(f"{name}-alone", "listener", workdir / name if name != "sqlite" else sqlite_dir,
                              alone_db)
            if not start(listener):
                continue
            run_cell(listener, "2 KB", 4, 40, seq, sampler, rng, args.drain_timeout)
            for connections in sorted({min(levels), max(levels)}):
                _progress(f"2 KB x {connections} -> {listener.name}")
                settle(targets + [listener], sampler)
                alone.append(run_cell(listener, "2 KB", connections, counts["2 KB"], seq, sampler, rng,
                                      args.drain_timeout))
            stop(listener)
        # The disk and the machine are shared: the same baseline again, to show how much it moved.
        floors.append(sqlite_commit_floor(sqlite_dir, "after"))
        for name, db, _ in stores:
            if isinstance(db, PostgresDatabase):
                floors.append(postgres_commit_floor(db, "after"))
    finally:
        for target in started_targets:
            try:
                stop(target)
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                print(f"cleanup of {target.name}: {exc}", file=sys.stderr)
        for db in databases:
            try:
                db.close()
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                print(f"cleanup of a database: {exc}", file=sys.stderr)
    try:
        if ingest_files:
            _progress(f"ingest of {ingest_files} files")
            ingest = run_ingest(_sub(workdir, "ingest"), ingest_files, sampler, rng)
    finally:
        sampler.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    _progress("")

    names = [t.name for t in targets]
    gateways = [t.name for t in targets if t.is_gateway]
    print("message sizes as stored: " + ", ".join(f"{k} = {v:,.0f} B" for k, v in
                                                   {c.size: c.mean_size for c in cells}.items()))
    print_floors(floors)
    print_cells(cells, names)
    print_listener_alone(alone, cells)
    print_cpu(cells + alone, names)
    for name, counter in outcomes.items():
        print(f"\n{name}: inbound_mail at the end, status/outcome: "
              + ", ".join(f"{k} {v}" for k, v in sorted(counter.items())))
    print_memory(sampler.peak, names + list(dict.fromkeys(c.target for c in alone)))
    if ingest is not None:
        print_ingest(ingest)
    print_goals(cells, sampler.peak, ingest, gateways)
    for note in notes:
        print(f"\nnote: {note}")
    print(f"\ntotal time {time.perf_counter() - started:.0f} s")
    return 0


def _sub(workdir: Path, name: str) -> Path:
    path = workdir / name
    path.mkdir(exist_ok=True)
    return path


def _fs_type(path: str) -> str:
    best, kind = "", "?"
    try:
        with open("/proc/mounts") as handle:
            for line in handle:
                parts = line.split()
                if path.startswith(parts[1]) and len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    except OSError:
        pass
    return kind


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\r\x1b[K{text}")
        sys.stderr.flush()
    elif text:
        print(f"... {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
