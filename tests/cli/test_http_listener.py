"""``cli.http_listener`` with ``cli.vitals`` in-process: real aiohttp on loopback, a real store or one that fails.

The parts of serve it reports on are the real objects as serve builds them
before they start: SMTP counters nothing has counted yet, a mail processor
not started (so not alive), no scheduler. The end-to-end tests with a real
``serve`` are in test_ops_endpoints.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.background import BackgroundProcess
from cli.http_listener import HttpListener
from cli.vitals import ServeVitals
from core.facade import AsyncCore
from core.settings import HostPort, Settings
from core.store import Store
from intake.listener import IntakeCounters
from tests import factories as f

T = TypeVar("T")
Fetched = tuple[int, str, str]  # status, content type, body


def with_listener(store: Store, scenario: Callable[[str], Awaitable[T]], *, timeout: float = 5.0) -> T:
    """Start a listener on a free port for ``store``, run ``scenario(base_url)``, stop everything."""
    core = AsyncCore(store)
    vitals = ServeVitals(core, IntakeCounters(), BackgroundProcess(store.settings), store_timeout=timeout)

    async def run() -> T:
        listener = HttpListener(HostPort("127.0.0.1", 0), vitals)
        await listener.start()
        try:
            return await scenario(f"http://127.0.0.1:{listener.port}")
        finally:
            await listener.stop()

    try:
        return asyncio.run(run())
    finally:
        core.close()


async def fetch(url: str, method: str = "GET") -> Fetched:
    async with aiohttp.ClientSession() as session, session.request(method, url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_health_and_metrics_of_a_store_that_answers(store: Store) -> None:
    f.seed(store)
    f.open_request(store)

    async def scenario(base: str) -> tuple[Fetched, Fetched, Fetched, Fetched]:
        return (await fetch(base + "/health"), await fetch(base + "/metrics"),
                await fetch(base + "/slack/events", "POST"), await fetch(base + "/metrics", "POST"))

    health, metrics, slack, post_metrics = with_listener(store, scenario)
    assert health[0] == 200 and health[1].startswith("application/json")
    assert json.loads(health[2]) == {
        "status": "degraded", "store": True,  # degraded: the mail processor and the scheduler do not run here
        "parts": {"smtp": True, "slack": "off", "scheduler": False, "scheduler_leader": False,
                  "mail_processor": False}}
    assert metrics[0] == 200 and metrics[1].startswith("text/plain; version=0.0.4")
    values = metric_values(metrics[2])
    assert values[("supportdesk_store_up", ())] == 1
    assert values[("supportdesk_requests_open", (("status", "new"),))] == 1
    assert values[("supportdesk_mail_processor_up", ())] == 0
    assert values[("supportdesk_slack_mode", (("mode", "off"),))] == 1
    assert slack[0] == 404  # no Slack route unless the Slack part hands one over
    assert post_metrics[0] == 405


@pytest.mark.parametrize("url", ["sqlite:////nonexistent-dir/supportdesk.db",
                                 "postgresql+psycopg://postgres:pw-hunter2@127.0.0.1:1/nothing"],
                         ids=["sqlite", "postgresql"])
def test_a_store_that_does_not_answer_is_503_and_store_up_0(url: str, caplog: pytest.LogCaptureFixture) -> None:
    store = Store.open(Settings(database_url=url))

    async def scenario(base: str) -> tuple[Fetched, Fetched, Fetched]:
        return await fetch(base + "/health"), await fetch(base + "/metrics"), await fetch(base + "/health")

    try:
        first, metrics, again = with_listener(store, scenario)
    finally:
        store.dispose()
    assert first[0] == again[0] == 503
    assert json.loads(first[2])["status"] == "degraded" and json.loads(first[2])["store"] is False
    assert metrics[0] == 200
    values = metric_values(metrics[2])
    assert values[("supportdesk_store_up", ())] == 0
    assert not [name for name, _ in values if name.startswith(("supportdesk_requests", "supportdesk_outbox"))]
    warnings = [r.getMessage() for r in caplog.records if r.name == "supportdesk.serve"]
    assert any(w.startswith("health: the store did not answer") for w in warnings), warnings
    assert any(w.startswith("metrics: the store did not answer") for w in warnings), warnings
    assert "hunter2" not in caplog.text


def test_a_port_in_use_fails_to_start_with_the_reason(store: Store) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        core = AsyncCore(store)
        listener = HttpListener(HostPort("127.0.0.1", port),
                                ServeVitals(core, IntakeCounters(), BackgroundProcess(store.settings)))

        async def start() -> Any:
            await listener.start()

        try:
            with pytest.raises(OSError) as failed:
                asyncio.run(start())
        finally:
            core.close()
    assert "address already in use" in str(failed.value).lower()
