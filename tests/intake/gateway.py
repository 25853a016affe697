"""A running SMTP gateway on loopback for tests: the real listener and acceptor in a background event loop."""

from __future__ import annotations

import asyncio
import email.policy
import smtplib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage

from core.settings import Settings
from core.store import Store
from intake.acceptance import Acceptor
from intake.listener import SmtpGateway


@dataclass
class RunningGateway:
    gateway: SmtpGateway
    loop: asyncio.AbstractEventLoop
    host: str = "127.0.0.1"

    @property
    def port(self) -> int:
        return self.gateway.port

    def client(self) -> smtplib.SMTP:
        return smtplib.SMTP(self.host, self.port, timeout=30)

    def stop(self, grace_seconds: float = 5.0) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.stop(grace_seconds), self.loop).result(grace_seconds + 10)


@contextmanager
def running_gateway(store: Store, settings: Settings | None = None) -> Iterator[RunningGateway]:
    """Start the listener on an ephemeral loopback port; stop it and its writer on exit."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-smtp-gateway", daemon=True)
    thread.start()
    settings = settings or store.settings

    async def start() -> tuple[SmtpGateway, Acceptor]:
        acceptor = Acceptor(store)
        acceptor.start()
        gateway = SmtpGateway(settings, acceptor)
        await gateway.start(host="127.0.0.1", port=0)
        return gateway, acceptor

    gateway, acceptor = asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    running = RunningGateway(gateway, loop)
    try:
        yield running
    finally:
        async def stop() -> None:
            if not gateway.handler.draining:
                await gateway.stop(2.0)
            await acceptor.close()

        asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def message(
    subject: str = "Charged twice",
    body: str = "Hello, I was charged twice for INV-100.\n",
    *,
    sender: str = "jane@acme.test",
    to: str = "support@localhost",
    message_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    """A well-formed message with CRLF line ends, as a real client sends it."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    if message_id is not None:
        msg["Message-ID"] = message_id
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(body)
    return msg.as_bytes()
