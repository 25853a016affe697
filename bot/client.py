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
"""

from __future__ import annotations

from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
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


def make_client(settings: Settings) -> AsyncWebClient:
    """The bot-token client with Slack's retry conventions."""
    return AsyncWebClient(
        token=settings.slack_bot_token,
        base_url=api_url(settings),
        timeout=TIMEOUT_SECONDS,
        retry_handlers=[
            AsyncConnectionErrorRetryHandler(max_retry_count=SERVER_ERROR_RETRIES),
            AsyncRateLimitErrorRetryHandler(max_retry_count=RATE_LIMIT_RETRIES),
            AsyncServerErrorRetryHandler(max_retry_count=SERVER_ERROR_RETRIES),
        ],
    )
