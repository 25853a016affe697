"""Nothing answered 250 is ever lost: kill -9 of ``supportdesk serve`` under load from 16 connections.

The same check is run against a deliberately wrong gateway that answers 250
before it commits; the check must catch it, or it proves nothing.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from core.models import Message, ReceivedMail
from core.store import Store
from tests.intake.serve_process import (
    LoadResult,
    ServeProcess,
    drive,
    free_port,
    kill_when,
    problems,
    serve_env,
    wait_for_port,
)

pytestmark = pytest.mark.slow

CONNECTIONS = 16
PER_CONNECTION = 25
_MESSAGE_ID = re.compile(rb"^Message-ID: (<[^>]+>)", re.MULTILINE | re.IGNORECASE)


def stored_markers(store: Store) -> list[str]:
    with store.read() as session:
        raws = session.execute(select(ReceivedMail.raw)).scalars().all()
    return [m.group(1).decode() for m in (_MESSAGE_ID.search(raw) for raw in raws) if m]


def wait_until_filed(store: Store, expected: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with store.read() as session:
            waiting = session.execute(select(ReceivedMail.id).where(ReceivedMail.status == "received")).all()
            total = len(session.execute(select(ReceivedMail.id)).all())
        if total >= expected and not waiting:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{len(waiting)} of {total} messages still wait to be filed")


def test_kill_9_under_load_loses_nothing_answered_250_and_stores_nothing_twice(store: Store, tmp_path: Path) -> None:
    store.dispose()  # the child processes own the database during the run
    port = free_port()
    url = store.engine.url.render_as_string(hide_password=False)
    serve = ServeProcess(serve_env(url, port, tmp_path), tmp_path, port, tmp_path / "serve.log")
    serve.start()
    result = LoadResult()
    deadline = time.monotonic() + 240
    load = threading.Thread(target=drive, args=(port, CONNECTIONS, PER_CONNECTION, result, deadline))
    load.start()

    def kill_and_restart() -> None:
        serve.kill9()
        time.sleep(0.3)
        serve.start()

    kill_when(result, CONNECTIONS * PER_CONNECTION // 3, kill_and_restart)
    load.join(260)
    total = CONNECTIONS * PER_CONNECTION
    assert len(result.acked) == total, serve.log()[-3000:]
    wait_until_filed(store, total)
    assert serve.terminate() == 0, serve.log()[-3000:]

    assert problems(result.acked, stored_markers(store), result.sent) == []
    assert result.retries > 0, "the kill happened after the load finished; the test proved nothing"
    with store.read() as session:
        inbound = session.execute(select(Message.message_id).where(Message.direction == "inbound")).scalars().all()
    # Filed exactly once each, too: one message row per marker.
    assert sorted(inbound) == sorted(set(result.sent))


MUTANT = textwrap.dedent('''
    """A wrong gateway: answers 250 at once and writes to the database half a second later."""
    import asyncio, sqlite3, sys, threading, time
    from aiosmtpd.smtp import SMTP

    queue = []
    def writer(path):
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("CREATE TABLE IF NOT EXISTS mail (raw BLOB)")
        while True:
            time.sleep(0.5)
            batch = queue[:]
            del queue[:len(batch)]
            db.executemany("INSERT INTO mail VALUES (?)", [(raw,) for raw in batch])

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            queue.append(envelope.original_content)
            return "250 OK"

    async def main(port, path):
        threading.Thread(target=writer, args=(path,), daemon=True).start()
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: SMTP(Handler(), hostname="mutant"), "127.0.0.1", port)
        await asyncio.Event().wait()

    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
''')


def test_the_check_catches_a_gateway_that_answers_before_committing(tmp_path: Path) -> None:
    script = tmp_path / "mutant.py"
    script.write_text(MUTANT)
    database = tmp_path / "mutant.db"
    port = free_port()

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, str(script), str(port), str(database)], start_new_session=True)
        wait_for_port(port)
        return process

    process = start()
    result = LoadResult()
    deadline = time.monotonic() + 120
    load = threading.Thread(target=drive, args=(port, CONNECTIONS, PER_CONNECTION, result, deadline))
    load.start()
    holder = {"process": process}

    def kill_and_restart() -> None:
        holder["process"].kill()
        holder["process"].wait()
        holder["process"] = start()

    kill_when(result, CONNECTIONS * PER_CONNECTION // 3, kill_and_restart)
    load.join(130)
    time.sleep(1.0)  # let the mutant's writer catch up on what it still holds
    holder["process"].kill()
    holder["process"].wait()
    with sqlite3.connect(database) as db:
        raws = [row[0] for row in db.execute("SELECT raw FROM mail")]
    markers = [m.group(1).decode() for m in (_MESSAGE_ID.search(raw) for raw in raws) if m]
    found = problems(result.acked, markers, result.sent)
    assert found and "answered 250 are not stored" in found[0], found
