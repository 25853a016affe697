"""The SMTP listener over real loopback SMTP: exact reply codes, commit-before-250, limits. Both databases."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import shutil
import smtplib
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select, text

from aiosmtpd.smtp import SMTP

from core.db import make_engine
from core.models import ReceivedMail
from core.services.mail_intake import RawMail
from core.store import Store
from intake.acceptance import Acceptor
from intake.listener import GatewaySMTP, SmtpGateway
from tests.intake.gateway import message, running_gateway
from tests.store_locks import hold_write_lock

TOKEN = "0123456789abcdef"


def stored(store: Store) -> list[ReceivedMail]:
    with store.read() as session:
        return list(session.execute(select(ReceivedMail).order_by(ReceivedMail.id)).scalars())


def test_ehlo_advertises_size_8bitmime_and_smtputf8(store: Store) -> None:
    with running_gateway(store) as gw, gw.client() as client:
        code, reply = client.ehlo("client.test")
    assert code == 250
    assert b"SIZE 26214400" in reply and b"8BITMIME" in reply and b"SMTPUTF8" in reply


@pytest.mark.parametrize("recipient, expected", [
    ("support@localhost", 250),
    ("SUPPORT@LOCALHOST", 250),
    (f"support+{TOKEN}@localhost", 250),
    (f"support.{TOKEN}@localhost", 250),
    ("postmaster", 250),
    ("postmaster@localhost", 250),
    ("sales@localhost", 550),
    ("support@elsewhere.test", 550),
    ("postmaster@elsewhere.test", 550),
    ("support+nottoken@localhost", 550),
])
def test_recipients(store: Store, recipient: str, expected: int) -> None:
    with running_gateway(store) as gw, gw.client() as client:
        client.ehlo("client.test")
        client.mail("jane@acme.test")
        code, reply = client.rcpt(recipient)
    assert code == expected, reply
    if expected == 550:
        assert reply.startswith(b"5.1.1")


ADDRESSES = [
    "", "<>", "<jane@acme.test>", "jane@acme.test", " <jane@acme.test> SIZE=100 BODY=8BITMIME",
    "<\"jane doe\"@acme.test>", "<jäne@äcme.test> SMTPUTF8", "<@relay.test:jane@acme.test>", "<jane@[10.0.0.1]>",
    "<jane@acme.test", "jane", "<>>", "<jane@@acme.test>", "<" + "j" * 64 + "@acme.test>", "<" + "j" * 65 + "@acme.test>",
    "<jane@acme.test> <john@acme.test>", "(comment) <jane@acme.test>",
    # Around the plain-path shortcut: what follows the path, and paths just outside it.
    "<jane@acme.test>SIZE=100", "<jane@acme.test>\tBODY=8BITMIME", "<jane@acme.test>   ", "<jane@acme.test> \r\n",
    "<jane@acme.test> (a comment) SIZE=100", "<jane@acme.test>(comment)", "<jane@acme.test> (unclosed",
    "<jane@acme.test>>", "<jane.doe+billing@mail.acme-corp.test>", "<J.Doe@ACME.Test>", "<jane@acme.test.>",
    "<jane..doe@acme.test>", "<.jane@acme.test>", "<jane.@acme.test>", "<jane@-acme.test>", "<jane@acme..test>",
    "<jane@acme>", "<a!#$%&'*+/=?^_`{|}~-z@acme.test>", "<jane@acme.test> SIZE=1 (x)",
]


def _random_paths(count: int) -> list[str]:
    """MAIL/RCPT arguments pieced together at random from the characters that matter to an address."""
    pieces = ["<", ">", "@", ".", "..", "jane", "Acme", "9", "-", "+", "_", " ", "\t", "(", ")", "(c)", '"', "\\",
              "[", "]", ":", ",", "SIZE=1", "ä", "test", "<jane@acme.test>", "@relay:"]
    rng = random.Random(5321)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 9))) for _ in range(count)]


@pytest.mark.parametrize("args", [ADDRESSES, _random_paths(3000)], ids=["chosen", "random"])
def test_our_address_parsing_gives_aiosmtpds_answers(store: Store, args: list[str]) -> None:
    """GatewaySMTP's _getaddr (no class defined per call, a shortcut for plain paths) answers as aiosmtpd's."""
    loop = asyncio.new_event_loop()
    try:
        ours = GatewaySMTP(SmtpGateway(store.settings, Acceptor(store)), object(), hostname="mx.test", loop=loop)
        theirs = SMTP(object(), hostname="mx.test", loop=loop)
        for arg in args:
            try:
                expected: object = theirs._getaddr(arg)
            except Exception as exc:  # noqa: BLE001 - then ours must fail the same way
                with pytest.raises(type(exc)):
                    ours._getaddr(arg)
            else:
                assert ours._getaddr(arg) == expected, arg
    finally:
        loop.close()


def test_a_sender_or_recipient_that_does_not_parse_is_refused(store: Store) -> None:
    with running_gateway(store) as gw, gw.client() as client:
        client.ehlo()
        assert client.docmd("MAIL", "FROM:<jane@@acme.test>")[0] == 553
        assert client.docmd("MAIL", "FROM:<jane@acme.test>")[0] == 250
        assert client.docmd("RCPT", "TO:<support@@localhost>")[0] == 553
        assert client.docmd("RCPT", "TO:<support@localhost>")[0] == 250
    assert stored(store) == []


def test_250_only_after_the_raw_bytes_and_envelope_are_committed(store: Store) -> None:
    raw = message(message_id="<one@acme.test>")
    with running_gateway(store) as gw, gw.client() as client:
        client.ehlo("client.test")
        client.mail("jane@acme.test")
        client.rcpt("support@localhost")
        client.rcpt(f"support+{TOKEN}@localhost")
        code, reply = client.data(raw)
        assert code == 250, reply
        # Committed by the time the client has its 250: another connection sees it.
        rows = stored(store)
    assert len(rows) == 1
    assert rows[0].raw == raw
    assert rows[0].envelope_from == "jane@acme.test"
    assert rows[0].recipients.split("\n") == ["support@localhost", f"support+{TOKEN}@localhost"]
    assert rows[0].helo == "client.test" and rows[0].peer == "127.0.0.1"
    assert rows[0].source == "smtp" and rows[0].status == "received"


def test_the_same_message_delivered_twice_is_answered_250_and_stored_once(store: Store) -> None:
    raw = message()
    with running_gateway(store) as gw:
        for _ in range(2):
            with gw.client() as client:
                refused = client.sendmail("jane@acme.test", ["support@localhost"], raw)
                assert refused == {}
    assert len(stored(store)) == 1


def test_the_null_sender_is_accepted_and_kept(store: Store) -> None:
    with running_gateway(store) as gw, gw.client() as client:
        client.sendmail("<>", ["support@localhost"], message(sender="MAILER-DAEMON@mx.test"))
    assert stored(store)[0].envelope_from == ""


def test_a_session_may_deliver_several_messages(store: Store) -> None:
    with running_gateway(store) as gw, gw.client() as client:
        for n in range(5):
            client.sendmail("jane@acme.test", ["support@localhost"], message(subject=f"n{n}"))
            client.rset()
    assert len(stored(store)) == 5


def test_smtputf8_and_8bit_bodies_are_accepted_byte_for_byte(store: Store) -> None:
    raw = ("From: jürgen@bücher.test\r\nTo: support@localhost\r\nSubject: Grüße\r\n"
           "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           "Rechnung über 12,50 €\r\n").encode()
    with running_gateway(store) as gw, gw.client() as client:
        client.ehlo("client.test")
        code, _ = client.mail("jürgen@bücher.test", ["SMTPUTF8", "BODY=8BITMIME"])
        assert code == 250
        client.rcpt("support@localhost")
        code, _ = client.data(raw)
    assert code == 250
    assert stored(store)[0].raw == raw


def test_size_over_the_limit_is_552_at_mail_and_after_data_and_nothing_is_stored(store: Store) -> None:
    settings = dataclasses.replace(store.settings, smtp_max_message_size=4096)
    with running_gateway(store, settings) as gw, gw.client() as client:
        client.ehlo("client.test")
        code, _ = client.mail("jane@acme.test", ["SIZE=100000"])
        assert code == 552
        client.rset()
        client.mail("jane@acme.test")
        client.rcpt("support@localhost")
        code, _ = client.data(message(body=("y" * 70 + "\n") * 100))
        assert code == 552
    assert stored(store) == []


def test_long_lines_up_to_64_kib_are_accepted_longer_ones_refused(store: Store) -> None:
    long_line = b"From: jane@acme.test\r\nSubject: long\r\n\r\n" + b"a" * 5000 + b"\r\n"
    too_long = b"From: jane@acme.test\r\nSubject: too long\r\n\r\n" + b"b" * 70_000 + b"\r\n"
    with running_gateway(store) as gw, gw.client() as client:
        client.ehlo("client.test")
        client.mail("jane@acme.test")
        client.rcpt("support@localhost")
        assert client.data(long_line)[0] == 250
        client.mail("jane@acme.test")
        client.rcpt("support@localhost")
        code, reply = client.data(too_long)
    assert code == 500 and b"Line too long" in reply
    assert [r.raw for r in stored(store)] == [long_line]


def test_sessions_beyond_the_cap_are_told_421_and_closed(store: Store) -> None:
    settings = dataclasses.replace(store.settings, smtp_max_sessions=2)
    with running_gateway(store, settings) as gw:
        first, second = gw.client(), gw.client()
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            gw.client()
        assert refused.value.smtp_code == 421
        first.quit()
        second.quit()
        with gw.client() as again:  # a freed slot is usable again
            assert again.noop()[0] == 250
    assert gw.gateway.counters.refused_busy == 1


def test_a_store_that_cannot_commit_answers_451_and_the_retry_is_stored_once(store: Store, tmp_path: Path) -> None:
    raw = message(subject="retry me")
    unavailable = _unavailable_store(store, tmp_path)
    with running_gateway(unavailable, store.settings) as gw, gw.client() as client:
        client.ehlo("client.test")
        client.mail("jane@acme.test")
        client.rcpt("support@localhost")
        code, reply = client.data(raw)
    assert code == 451 and reply.startswith(b"4.3.0"), reply
    assert b"Error" not in reply and b"database" not in reply.lower() and b"lock" not in reply.lower()
    unavailable.dispose()
    _make_available(store)
    with running_gateway(store) as gw, gw.client() as client:
        assert client.sendmail("jane@acme.test", ["support@localhost"], raw) == {}
        assert client.sendmail("jane@acme.test", ["support@localhost"], raw) == {}
    assert [r.raw for r in stored(store)] == [raw]


def test_a_write_lock_held_for_a_moment_by_another_writer_is_waited_out_and_answered_250(store: Store) -> None:
    """Another writer holds the lock for 0.3 s: the session hears 250, not 451, and the message is stored once.

    On SQLite the acceptor retries the database lock itself (its connections
    do not wait); on PostgreSQL the INSERT waits for the table lock.
    """
    released = threading.Timer(0.3, hold_write_lock(store, "inbound_mail"))
    with running_gateway(store) as gw, gw.client() as client:
        released.start()
        assert client.sendmail("jane@acme.test", ["support@localhost"], message(subject="wait for it")) == {}
    released.join()
    assert len(stored(store)) == 1 and gw.gateway.counters.temporary_failures == 0


def test_closing_the_acceptor_commits_what_waits_behind_the_commit_in_progress(store: Store) -> None:
    """close() returns only once every message handed over is committed, also one queued behind a slow commit,
    even when the loop ends right after it (as serve's does)."""
    released = threading.Timer(0.4, hold_write_lock(store, "inbound_mail"))

    async def hand_over_then_close() -> None:
        acceptor = Acceptor(store)
        acceptor.start()
        first = asyncio.create_task(acceptor.accept(RawMail(b"first\r\n", "jane@acme.test", ("support@localhost",))))
        await asyncio.sleep(0.15)  # the first commit now waits for the lock
        second = asyncio.create_task(acceptor.accept(RawMail(b"second\r\n", "jane@acme.test", ("support@localhost",))))
        await asyncio.sleep(0.05)
        released.start()
        await acceptor.close()
        assert first.done() and second.done()

    asyncio.run(hand_over_then_close())
    released.join()
    assert [r.raw for r in stored(store)] == [b"first\r\n", b"second\r\n"]


def test_help_knows_data_as_aiosmtpd_does(store: Store) -> None:
    with running_gateway(store) as gw, gw.client() as client:
        client.ehlo("client.test")
        assert client.docmd("HELP", "DATA") == (250, b"Syntax: DATA")
        code, listing = client.docmd("HELP")
    assert code == 250 and b" DATA" in listing


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)  # SQLite has no connection to lose
def test_a_connection_postgresql_dropped_between_messages_costs_the_next_one_nothing(store: Store) -> None:
    """The acceptor does not ping before each commit: a commit that finds its connection gone is made again
    at once on a new one, so the sender still hears 250 and the message is stored once."""
    database = store.engine.url.database
    with running_gateway(store) as gw, gw.client() as client:
        assert client.sendmail("jane@acme.test", ["support@localhost"], message(subject="first")) == {}
        with make_engine(str(store.engine.url.set(database="postgres")), isolation_level="AUTOCOMMIT").connect() as c:
            ended = c.execute(text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                   " WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": database}).scalar()
        assert ended >= 1
        assert client.sendmail("jane@acme.test", ["support@localhost"], message(subject="second")) == {}
    assert [m.raw.count(b"Subject: second") for m in stored(store)] == [0, 1]
    assert gw.gateway.counters.temporary_failures == 0


def test_an_unexpected_store_error_is_451_never_500_and_leaks_nothing(store: Store, tmp_path: Path) -> None:
    broken_file = tmp_path / "not-a-database.db"
    broken_file.write_bytes(b"this is not an SQLite database " * 100)
    broken = Store(make_engine(f"sqlite:///{broken_file}"), store.clock, store.settings)
    with running_gateway(broken, store.settings) as gw, gw.client() as client:
        client.ehlo("client.test")
        client.mail("jane@acme.test")
        client.rcpt("support@localhost")
        code, reply = client.data(message())
    broken.dispose()
    assert code == 451 and reply.startswith(b"4.3.0"), reply
    assert b"not a database" not in reply and b"(" not in reply


def test_shutdown_answers_new_mail_421_and_refuses_new_connections(store: Store) -> None:
    with running_gateway(store) as gw:
        client = gw.client()
        client.ehlo("client.test")
        gw.stop()
        with pytest.raises((smtplib.SMTPServerDisconnected, smtplib.SMTPSenderRefused, ConnectionError)):
            client.sendmail("jane@acme.test", ["support@localhost"], message())
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", gw.port), timeout=2)
    assert stored(store) == []


def test_a_transfer_in_progress_at_shutdown_is_committed_and_answered(store: Store) -> None:
    raw = message(subject="in flight")
    with running_gateway(store) as gw:
        sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        reader = sock.makefile("rb")
        reader.readline()
        for command in (b"EHLO client.test", b"MAIL FROM:<jane@acme.test>", b"RCPT TO:<support@localhost>",
                        b"DATA"):
            sock.sendall(command + b"\r\n")
            while True:
                line = reader.readline()
                if line[3:4] != b"-":
                    break
        sock.sendall(raw[: len(raw) // 2])
        stopping = threading.Thread(target=gw.stop, kwargs={"grace_seconds": 10})
        stopping.start()
        sock.sendall(raw[len(raw) // 2:] + b".\r\n")
        reply = reader.readline()
        stopping.join(20)
        sock.close()
    assert reply.startswith(b"250"), reply
    assert [r.raw for r in stored(store)] == [raw]


@pytest.mark.skipif(shutil.which("swaks") is None and not os.environ.get("CI"), reason="swaks is not installed")
def test_swaks_delivers_a_message_with_an_attachment(store: Store, tmp_path: Path) -> None:
    attachment = tmp_path / "invoice.pdf"
    attachment.write_bytes(b"%PDF-1.4 fake but binary \x00\x01\x02")
    with running_gateway(store) as gw:
        result = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{gw.port}", "--from", "jane@acme.test", "--to", "support@localhost",
             "--header", "Subject: Invoice INV-100 is wrong", "--body", "Please check.",
             "--attach", f"@{attachment}", "--attach-type", "application/pdf"],
            capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 OK" in result.stdout
    [row] = stored(store)
    assert b"Subject: Invoice INV-100 is wrong" in row.raw


@pytest.mark.skipif(shutil.which("swaks") is None and not os.environ.get("CI"), reason="swaks is not installed")
def test_swaks_unknown_recipient_gets_550(store: Store) -> None:
    with running_gateway(store) as gw:
        result = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{gw.port}", "--from", "jane@acme.test", "--to", "nobody@localhost",
             "--quit-after", "RCPT"],
            capture_output=True, text=True, timeout=60,
        )
    assert "<** 550 5.1.1" in result.stdout, result.stdout


def _unavailable_store(store: Store, tmp_path: Path) -> Store:
    """A store whose commits fail for now: SQLite locked by another process, PostgreSQL refusing connections."""
    if store.is_sqlite:
        path = store.engine.url.database
        locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        locker.execute("BEGIN EXCLUSIVE")
        _LOCKS[id(store)] = locker
        return Store(make_engine(f"sqlite:///{path}", connect_args={"timeout": 0.3}), store.clock, store.settings)
    database = store.engine.url.database
    with make_engine(str(store.engine.url.set(database="postgres")), isolation_level="AUTOCOMMIT").connect() as c:
        c.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        c.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": database})
    store.engine.dispose()
    return Store(make_engine(store.engine.url.render_as_string(hide_password=False)), store.clock, store.settings)


def _make_available(store: Store) -> None:
    if store.is_sqlite:
        _LOCKS.pop(id(store)).close()
        return
    database = store.engine.url.database
    with make_engine(str(store.engine.url.set(database="postgres")), isolation_level="AUTOCOMMIT").connect() as c:
        c.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))


_LOCKS: dict[int, sqlite3.Connection] = {}



# --- DATA: our reader against aiosmtpd's, byte for byte ---------------------------------------------

SMALL_LINE_LIMIT = 200  # both servers' line limit (and their stream reader's) in the comparison below
SMALL_SIZE_LIMIT = 6_000


class _Recorder:
    """An aiosmtpd handler that keeps what each DATA delivered."""

    def __init__(self) -> None:
        self.contents: list[bytes] = []

    async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
        self.contents.append(bytes(envelope.original_content))  # type: ignore[attr-defined]
        return "250 OK"


class _SmallOurs(GatewaySMTP):
    line_length_limit = SMALL_LINE_LIMIT


class _SmallTheirs(SMTP):
    line_length_limit = SMALL_LINE_LIMIT


def _data_payloads(count: int) -> list[bytes]:
    """DATA as clients send it (end of data included), built to reach every edge.

    Each payload breaks at most one limit: a message with a line too long and
    too much data may be refused with either reply.
    """
    rng = random.Random(1870)
    ordinary = [b"", b".", b"..", b"...", b".x", b"x.", b"end of sentence.", b"Hi", b"a\rb", b"a\nb", b"a\n.",
                b"\r", b".\r", b"QUIT", b"=2E", b"x" * 76]
    payloads = [b".\r\n", b"..\r\n.\r\n", b"\r\n.\r\n", b"x\r\n.\r\n", b".x\r\n.\r\n", b"x\r\n..\r\n.\r\n"]
    while len(payloads) < count:
        mode = rng.choice(["ordinary", "ordinary", "long line", "too much"])
        lines = [rng.choice(ordinary) for _ in range(rng.randint(0, 40))]
        if mode == "long line":
            lines.insert(rng.randint(0, len(lines)), b"y" * rng.randint(SMALL_LINE_LIMIT - 4, SMALL_LINE_LIMIT + 2))
        elif mode == "too much":
            lines += [b"z" * 70] * rng.randint(80, 95)
        # A line that is a dot alone would end the data: clients double it. Other leading dots are left
        # as some clients send them, for the server to remove.
        payloads.append(b"".join((b".." if line == b"." else line) + b"\r\n" for line in lines) + b".\r\n")
    return payloads


# DATA in parts the server reads one at a time: the reader's limit falls where an end of line is split.
SPLIT_PAYLOADS = [
    # the <CR><LF> before the end of data in one piece, ".<CR><LF>" in the next
    (b"abc\r\n" * 60 + b"abc\r\n.", b"\r\n"),
    # a line one octet too long whose <CR><LF> is split between two pieces
    (b"abc\r\n" + b"y" * (SMALL_LINE_LIMIT - 1) + b"\r\nQ", b"\r\n.\r\n"),
    # the same line one octet shorter: it fits
    (b"abc\r\n" + b"y" * (SMALL_LINE_LIMIT - 2) + b"\r\nQ", b"\r\n.\r\n"),
]


def _deliver(make_protocol: Callable[[], asyncio.Protocol], payloads: list[bytes | tuple[bytes, ...]],
             seed: int) -> list[bytes]:
    """One SMTP session: each payload after MAIL, RCPT and DATA, the replies.

    A payload is written in random pieces; one given in parts is written a
    part at a time, with a pause for the server to read each.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(loop.create_server(make_protocol, "127.0.0.1", 0), loop).result(10)
    rng = random.Random(seed)
    replies = []
    try:
        with socket.create_connection(server.sockets[0].getsockname()[:2], timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = sock.makefile("rb")

            def reply() -> bytes:
                while (line := reader.readline())[3:4] == b"-":
                    pass
                return line

            reply()
            sock.sendall(b"EHLO client.test\r\n")
            reply()
            for payload in payloads:
                sock.sendall(b"MAIL FROM:<jane@acme.test>\r\nRCPT TO:<support@localhost>\r\nDATA\r\n")
                assert [reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
                if isinstance(payload, tuple):
                    for part in payload:
                        sock.sendall(part)
                        time.sleep(0.05)
                    replies.append(reply())
                    continue
                at = 0
                while at < len(payload):
                    step = rng.choice([1, 2, 3, 5, 64, 199, 201, 4096])
                    sock.sendall(payload[at:at + step])
                    at += step
                    if rng.random() < 0.2:
                        time.sleep(0.0005)  # let the server read what has come so far
                replies.append(reply())
            sock.sendall(b"QUIT\r\n")
            assert reply()[:3] == b"221"
            assert reader.read() == b""  # the server closed the session: its task has ended
    finally:
        # In the loop's thread, as asyncio requires: closed from here, it raced the session's end there
        # (both saw the server idle and woke its waiters; the second found none: TypeError).
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    return replies


def test_our_data_reader_gives_aiosmtpds_answers_and_content(store: Store) -> None:
    """The same DATA, cut at random places, to aiosmtpd's SMTP and to ours: the same replies, the same bytes."""
    payloads: list[bytes | tuple[bytes, ...]] = [*_data_payloads(400), *SPLIT_PAYLOADS]
    runs = {}
    for name, cls in (("theirs", _SmallTheirs), ("ours", _SmallOurs)):
        recorder = _Recorder()
        gateway = SmtpGateway(store.settings, Acceptor(store))
        options = dict(hostname="mx.test", data_size_limit=SMALL_SIZE_LIMIT, enable_SMTPUTF8=True, decode_data=False)
        if cls is _SmallOurs:
            make: Callable[[], asyncio.Protocol] = lambda: _SmallOurs(gateway, recorder, **options)  # noqa: E731
        else:
            make = lambda: _SmallTheirs(recorder, **options)  # noqa: E731
        runs[name] = (_deliver(make, payloads, seed=7), recorder.contents)
    their_replies, their_contents = runs["theirs"]
    our_replies, our_contents = runs["ours"]
    assert {reply[:3] for reply in their_replies} == {b"250", b"500", b"552"}  # every outcome was reached
    assert our_replies == their_replies
    assert our_contents == their_contents
