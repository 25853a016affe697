"""``supportdesk serve``: every configured part in one process and one event loop.

It opens the store and brings its schema up to date, then starts each part
that is configured and says, for each one that does not start, why not. It
runs until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

from core import migrate
from core.facade import AsyncCore
from core.settings import Settings
from core.store import Store

log = logging.getLogger("supportdesk.serve")


@dataclass(frozen=True)
class PartPlan:
    name: str
    start: bool
    reason: str


def plan_parts(settings: Settings) -> list[PartPlan]:
    """Which parts would start with these settings, and why the others would not. Pure."""
    slack_mode = "Socket Mode" if settings.slack_app_token else f"HTTP on {settings.http_listen}/slack/events"
    slack_missing = [
        name for name, value in (("SLACK_BOT_TOKEN", settings.slack_bot_token),
                                 ("SLACK_SIGNING_SECRET", settings.slack_signing_secret or settings.slack_app_token))
        if not value
    ]
    return [
        PartPlan("store", True, f"{_safe_url(settings.database_url)}"),
        PartPlan("smtp listener", False,
                 f"would listen on {settings.smtp_listen} for {', '.join(settings.support_addresses)}; "
                 "the mail gateway is not part of this version yet"),
        PartPlan("slack app", False,
                 f"not configured: {' and '.join(slack_missing)} unset" if slack_missing
                 else f"configured for {slack_mode}; the Slack app is not part of this version yet"),
        PartPlan("scheduler", False, "SLA alerts and digests are not part of this version yet"),
        PartPlan("outbox delivery", False,
                 "notifications are queued in the outbox and wait for the delivery workers of a later version"),
    ]


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def serve(settings: Settings) -> int:
    store = Store.open(settings)
    try:
        migrate.upgrade(store.engine)
        store.ping()
        for part in plan_parts(settings):
            if part.start:
                log.info("%s: started (%s)", part.name, part.reason)
            else:
                log.info("%s: not started (%s)", part.name, part.reason)
        asyncio.run(_run(store))
    finally:
        store.dispose()
    log.info("stopped")
    return 0


async def _run(store: Store) -> None:
    core = AsyncCore(store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("supportdesk is running; stop it with Ctrl-C or SIGTERM")
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        core.close()
