"""``supportdesk serve`` as a real child process, and a load of SMTP clients that retry like mail servers do."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.intake.gateway import message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@dataclass
class ServeProcess:
    """One ``supportdesk serve`` with its own log file; started in its own process group."""

    env: dict[str, str]
    cwd: Path
    port: int
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "serve"], env=self.env, cwd=self.cwd, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_port(self.port)

    def kill9(self) -> None:
        """SIGKILL the whole process group: serve and its mail processor die at once, mid-work."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def serve_env(database_url: str, port: int, tmp_path: Path, **extra: str) -> dict[str, str]:
    root = Path(__file__).resolve().parents[2]
    return {
        **os.environ,
        "PYTHONPATH": str(root),
        "PYTHONUNBUFFERED": "1",
        "SUPPORTDESK_DATABASE_URL": database_url,
        "SUPPORTDESK_SMTP_LISTEN": f"127.0.0.1:{port}",
        "SUPPORTDESK_OUTGOING_MAILDIR": str(tmp_path / "outgoing-mail"),
        "SUPPORTDESK_HTTP_LISTEN": f"127.0.0.1:{free_port()}",
        **extra,
    }


@dataclass
class LoadResult:
    """What the clients saw: which messages got a 250, how many attempts failed and were retried."""

    sent: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def drive(port: int, connections: int, per_connection: int, result: LoadResult, deadline: float) -> None:
    """``connections`` threads each deliver ``per_connection`` messages, retrying on 4xx or a dropped connection.

    Each message carries a unique marker (its Message-ID), so the test can
    match what the clients were told with what the store holds.
    """

    def worker(n: int) -> None:
        client: smtplib.SMTP | None = None
        for m in range(per_connection):
            marker = f"<load-{n}-{m}@acme.test>"
            sender = f"client{n}-{m}@load.test"  # one sender each: the per-sender limit must not hold any back
            raw = message(subject=f"load {n}/{m}", message_id=marker, sender=sender,
                          body=f"message {m} of connection {n}\n" * 8)
            with result.lock:
                result.sent.append(marker)
            while time.monotonic() < deadline:
                try:
                    if client is None:
                        client = smtplib.SMTP("127.0.0.1", port, timeout=30)
                    client.sendmail(sender, ["support@localhost"], raw)
                except (OSError, smtplib.SMTPException):
                    with result.lock:
                        result.retries += 1
                    client = close_quietly(client)
                    time.sleep(0.05)
                    continue
                with result.lock:
                    result.acked.add(marker)
                break
        close_quietly(client)

    threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5)


def close_quietly(client: smtplib.SMTP | None) -> None:
    """Drop an SMTP connection that may already be dead (the server was killed)."""
    if client is not None:
        try:
            client.close()
        except OSError:
            pass
    return None


def kill_when(result: LoadResult, acked_at_least: int, kill: Callable[[], None], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while len(result.acked) < acked_at_least and time.monotonic() < deadline:
        time.sleep(0.01)
    kill()


def problems(acked: set[str], stored: list[str], sent: list[str]) -> list[str]:
    """Every acknowledged message stored exactly once, nothing stored twice, nothing sent left out."""
    found: list[str] = []
    counts: dict[str, int] = {}
    for marker in stored:
        counts[marker] = counts.get(marker, 0) + 1
    lost = sorted(m for m in acked if counts.get(m, 0) == 0)
    doubled = sorted(m for m, n in counts.items() if n > 1)
    missing = sorted(set(sent) - set(counts))
    if lost:
        found.append(f"{len(lost)} messages answered 250 are not stored, e.g. {lost[:3]}")
    if doubled:
        found.append(f"{len(doubled)} messages are stored more than once, e.g. {doubled[:3]}")
    if missing:
        found.append(f"{len(missing)} messages sent (and retried) never got stored, e.g. {missing[:3]}")
    return found
