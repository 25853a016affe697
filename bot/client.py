"""The Slack Web API client every part of the bot shares.

Built once with the retry handlers slack-sdk ships but does not install by
default: a ``429`` is retried after the ``Retry-After`` Slack sends, a
``5xx`` and a dropped connection a couple of times with back-off. What is
still failing after that surfaces as an error to the caller (the outbox
worker then keeps the row and tries again later, so nothing is lost).
``SUPPORTDESK_SLACK_API_URL`` points the client somewhere else than Slack,
which is how the tests run the real app against a recording fake. In Socket
Mode the same client asks ``apps.connections.open`` for the WebSocket URL
(the SDK sends the app token for that one call), so that goes there too.
Every answer that is an error or a ``429`` is counted (:class:`SlackApiCounters`)
for serve's ``/metrics``, whichever part of the app made the call.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.web.async_client import AsyncWebClient

from core.settings import Settings

SLACK_API_URL = "https://slack.com/api/"
# One retry after the Retry-After Slack asks for; a second 429 is left to
# the caller, whose own pacing (the outbox worker) knows what else waits.
RATE_LIMIT_RETRIES = 1
SERVER_ERROR_RETRIES = 2
TIMEOUT_SECONDS = 10


def api_url(settings: Settings) -> str:
    """The Web API base URL, always ending in ``/`` (slack-sdk joins method names with urljoin)."""
    url = settings.slack_api_url or SLACK_API_URL
    return url if url.endswith("/") else url + "/"


# Web API method names as Slack spells them (chat.postMessage); anything else (a file upload URL) is one label.
_METHOD = re.compile(r"^[a-z]+(\.[a-zA-Z]+)+$")
_ERROR_CODE = re.compile(r"^[a-z0-9_]{1,64}$")


@dataclass
class SlackApiCounters:
    """What Slack answered that was not a success, counted per answer (a retried call counts each failure).

    ``errors`` by (method, error): Slack's own error code for ``"ok": false``,
    ``http_5xx`` for a server error, ``connection_error`` when Slack could not
    be reached; ``rate_limited`` by method for each ``429``. Plain counters in
    the event loop's thread; serve's metrics endpoint reads them.
    """

    errors: Counter[tuple[str, str]] = field(default_factory=Counter)
    rate_limited: Counter[str] = field(default_factory=Counter)


class CountingHandler(AsyncRetryHandler):
    """Sees every answer of every call (slack-sdk asks each retry handler in turn) and never retries itself.

    It must come first in the client's handlers: the SDK stops asking at the
    first handler that retries. Bolt copies the list into the client it makes
    for each request, so calls from listeners are counted too.
    """

    def __init__(self, counters: SlackApiCounters) -> None:
        super().__init__(max_retry_count=0)
        self.counters = counters

    async def can_retry_async(self, *, state: RetryState, request: HttpRequest,
                              response: HttpResponse | None = None, error: Exception | None = None) -> bool:
        method = _method(request.url)
        if error is not None:
            self.counters.errors[(method, "connection_error")] += 1
        elif response is not None and response.status_code == 429:
            self.counters.rate_limited[method] += 1
        elif response is not None and response.status_code >= 400:
            self.counters.errors[(method, f"http_{response.status_code}")] += 1
        elif response is not None and isinstance(response.body, dict) and response.body.get("ok") is False:
            code = str(response.body.get("error") or "")
            self.counters.errors[(method, code if _ERROR_CODE.match(code) else "unknown")] += 1
        return False


def _method(url: str) -> str:
    name = urlsplit(url).path.rstrip("/").rpartition("/")[2]
    return name if _METHOD.match(name) else "file_upload"


def make_client(settings: Settings, counters: SlackApiCounters | None = None) -> AsyncWebClient:
    """The bot-token client with Slack's retry conventions; with ``counters``, its failures are counted."""
    counting: list[AsyncRetryHandler] = [CountingHandler(counters)] if counters is not None else []
    return AsyncWebClient(
        token=settings.slack_bot_token,
        base_url=api_url(settings),
        timeout=TIMEOUT_SECONDS,
        retry_handlers=[
            *counting,
            AsyncConnectionErrorRetryHandler(max_retry_count=SERVER_ERROR_RETRIES),
            AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
            AsyncServerErrorRetryHandler(max_retry_count=SERVER_ERROR_RETRIES),
        ],
    )
