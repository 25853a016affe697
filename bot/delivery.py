"""The Slack delivery worker: due ``slack`` outbox rows in, cards posted or updated, each row marked.

Every change to a request writes a ``triage_card`` row in the same
transaction (see ``core.notification_policy``); this worker draws the card
as the request is *now* and posts it to the triage channel the first time,
then updates that same message in place. Several rows for one request in one
pass become one update. Customer mail is mirrored into the card's thread
(``thread_mirror``), which waits until the card exists; approval cards go to
the approvals channel the same way.

Nothing is lost when Slack is slow or down: the row stays in the outbox and
is tried again, after the ``Retry-After`` Slack sent with a ``429`` or with
back-off after a ``5xx`` or a dropped connection. Errors that retrying
cannot fix (no such channel, bot not in it, invalid blocks) mark the row
failed with Slack's reason, for a person to look at. Posting is paced per
channel, as Slack asks (about one message a second, short bursts allowed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.blocks import approval_card, digest_message, mirrored_message, sla_alert, triage_card
from core.errors import InvalidInput, NotFound, StoreUnavailable
from core.facade import AsyncCore
from core.queries import get_message
from core.services.alerts import AlertView, alert_view, alerts_of_request, record_alert_place, record_alert_text, \
    text_digest
from core.services.digests import get_digest, record_digest_chart, record_digest_post
from core.services.cards import approval_card as approval_card_view
from core.services.cards import request_card
from core.services.outbox import (
    OutboxItem,
    PassLease,
    claim_due,
    extend_lease,
    mark_failed,
    mark_retry,
    mark_sent,
    release,
    retry_delay,
)
from core.services.slack_state import (
    CardPlace,
    approval_card_place,
    record_approval_card,
    record_request_card,
    request_card_place,
)

log = logging.getLogger("supportdesk.slack")

CHANNEL = "slack"
BATCH_SIZE = 50
GIVE_UP_AFTER_ATTEMPTS = 120  # 30 s doubling to an hour: about five days, as for mail
CARD_NOT_YET_SECONDS = 5  # a thread reply waits this long for its card to be posted
# Woken by a change made in Slack, the worker waits this long first, so that a
# burst of clicks becomes a few card updates instead of one each.
COALESCE_SECONDS = 0.1
# Slack errors that the same call will meet again however often it is retried.
PERMANENT_ERRORS = frozenset({
    "channel_not_found", "not_in_channel", "is_archived", "msg_too_long", "invalid_blocks", "invalid_blocks_format",
    "no_text", "cant_update_message", "edit_window_closed", "restricted_action", "invalid_arguments",
    "too_many_attachments", "message_limit_exceeded", "account_inactive", "invalid_auth", "not_authed",
    "token_revoked", "missing_scope",
})

Outcome = Literal["sent", "retried", "failed"]


class NotReady(Exception):
    """What this row needs is not there yet (a thread reply before its card): try again shortly."""


@dataclass(frozen=True)
class DeliveryReport:
    claimed: int = 0
    sent: int = 0
    retried: int = 0
    failed: int = 0


class ChannelPacer:
    """At most ``rate`` calls a second per channel after a burst of ``burst``: a token bucket per channel.

    A ``429`` for a channel (:meth:`rate_limited`) means Slack allows it less
    than we thought: its next call waits the ``Retry-After``, and its rate is
    halved, then grows back by 2 % a call up to ``rate``. Without that, a
    pacer set above Slack's real limit would meet a ``429`` at nearly every
    call and wait a whole ``Retry-After`` each time.
    """

    RECOVERY = 1.02
    FLOOR = 0.1  # calls a second; never slower than this

    def __init__(self, rate: float = 1.0, burst: int = 4) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # channel -> (tokens, when counted)
        self._rates: dict[str, float] = {}  # channels slowed down after a 429
        self._last: str | None = None

    async def wait(self, channel: str) -> None:
        rate = self._rates.get(channel, self._rate)
        tokens, counted = self._buckets.get(channel, (float(self._burst), time.monotonic()))
        now = time.monotonic()
        tokens = min(float(self._burst), tokens + (now - counted) * rate)
        if tokens < 1.0:
            await asyncio.sleep((1.0 - tokens) / rate)
            now, tokens = time.monotonic(), 1.0
        self._buckets[channel] = (tokens - 1.0, now)
        self._last = channel
        if channel in self._rates:
            recovered = rate * self.RECOVERY
            if recovered >= self._rate:
                del self._rates[channel]
            else:
                self._rates[channel] = recovered

    def rate_of(self, channel: str) -> float:
        """Calls a second this channel is paced at now."""
        return self._rates.get(channel, self._rate)

    def rate_limited(self, retry_after: float, channel: str | None = None) -> None:
        """Slack answered ``429`` to the last call (to ``channel``): wait ``retry_after``, then go slower."""
        channel = channel or self._last
        if channel is None:
            return
        rate = max(self.FLOOR, self._rates.get(channel, self._rate) / 2)
        self._rates[channel] = rate
        self._buckets[channel] = (1.0 - retry_after * rate, time.monotonic())


class SlackDelivery:
    """Delivers the ``slack`` outbox with one Web API client; :meth:`run` until told to stop."""

    def __init__(self, core: AsyncCore, client: AsyncWebClient, *, triage_channel: str | None,
                 approvals_channel: str | None, alerts_channel: str | None = None, digest_channel: str | None = None,
                 pacer: ChannelPacer | None = None) -> None:
        self._core = core
        self._client = client
        self._triage_channel = triage_channel
        self._approvals_channel = approvals_channel
        self._alerts_channel = alerts_channel
        self._digest_channel = digest_channel
        self._pacer = pacer or ChannelPacer()
        self.wake = asyncio.Event()

    async def run(self, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Deliver until ``stop`` is set; then the message in hand is finished and the rest of the pass given back.

        Slack's pace is about one message a second per channel, so finishing
        a whole pass of 50 first kept a stopping serve for most of a minute;
        the rows not tried are due again at once for any other process.
        """
        while not stop.is_set():
            self.wake.clear()
            report = await self._guarded_pass(stop)
            if report.claimed < BATCH_SIZE and await _sleep(stop, self.wake, interval) and not stop.is_set():
                await asyncio.sleep(COALESCE_SECONDS)

    async def deliver_due(self, limit: int = BATCH_SIZE, stop: asyncio.Event | None = None) -> DeliveryReport:
        """One pass: claim the due rows, deliver them in order, one update per request and card.

        When ``stop`` is set during the pass, the rows not yet tried are released (not counted as attempts).
        """
        items = await self._core.call(claim_due, CHANNEL, limit)
        lease = PassLease()
        outcomes: Counter[str] = Counter()
        done: dict[tuple[str, str], Outcome] = {}
        for position, item in enumerate(items):
            if stop is not None and stop.is_set():
                await self._core.call(release, items[position:])
                return DeliveryReport(len(items), outcomes["sent"], outcomes["retried"], outcomes["failed"])
            if lease.due():  # paced posting (and a 429's wait) can outlast the lease
                await self._core.call(extend_lease, items[position:])
                lease.renewed()
            target = _target(item)
            if target is not None and target in done:  # a later change to a card drawn in this pass already
                outcomes[await self._settle(item, done[target])] += 1
                continue
            outcome = await self._deliver_guarded(item)
            if target is not None:
                done[target] = outcome
            outcomes[outcome] += 1
        return DeliveryReport(len(items), outcomes["sent"], outcomes["retried"], outcomes["failed"])

    async def _guarded_pass(self, stop: asyncio.Event) -> DeliveryReport:
        try:
            return await self.deliver_due(stop=stop)
        except StoreUnavailable as exc:
            log.warning("Slack delivery paused: %s", exc)
        except Exception:
            log.exception("Slack delivery pass failed; trying again shortly")
        return DeliveryReport()

    async def _deliver_guarded(self, item: OutboxItem) -> Outcome:
        try:
            await self._deliver(item)
        except NotReady as exc:
            await self._core.call(mark_retry, item.id, str(exc), CARD_NOT_YET_SECONDS)
            return "retried"
        except SlackApiError as exc:
            return await self._slack_refused(item, exc)
        except (SlackClientError, aiohttp.ClientError, asyncio.TimeoutError) as exc:  # Slack, or the way there, is down
            return await self._retry(item, f"Slack unreachable: {exc.__class__.__name__}: {exc}")
        except (NotFound, InvalidInput) as exc:
            return await self._give_up(item, f"cannot draw the {item.topic}: {exc}")
        except StoreUnavailable:
            raise
        except Exception as exc:
            log.exception("outbox row %d (%s): unexpected error while delivering to Slack", item.id, item.topic)
            return await self._retry(item, f"unexpected error: {exc.__class__.__name__}")
        await self._core.call(mark_sent, item.id)
        return "sent"

    async def _deliver(self, item: OutboxItem) -> None:
        if item.topic == "triage_card":
            await self._triage_card(str(item.payload["request_key"]))
        elif item.topic == "thread_mirror":
            await self._thread_mirror(int(item.payload["message_id"]))
        elif item.topic == "approval_card":
            await self._approval_card(int(item.payload["approval_id"]), str(item.payload["request_key"]))
        elif item.topic == "sla_alert":
            await self._sla_alert(int(item.payload["crossing_id"]))
        elif item.topic == "digest":
            await self._digest(int(item.payload["digest_id"]))
        else:
            raise InvalidInput(f"unknown Slack outbox topic {item.topic!r}")

    async def _triage_card(self, key: str) -> None:
        card = await self._core.read(request_card, key)
        text, blocks = triage_card(card, now=self._core.store.clock.now())
        place = await self._core.read(request_card_place, key)
        if place is not None:
            await self._update(place, text, blocks)
            await self._refresh_alerts(key)
            return
        channel = _configured(self._triage_channel, "SUPPORTDESK_TRIAGE_CHANNEL")
        posted = await self._post(channel, text, blocks)
        winner = await self._core.call(record_request_card, key, posted)
        if winner != posted:  # another delivery posted it first: ours is a duplicate
            await self._client.chat_delete(channel=posted.channel, ts=posted.ts)

    async def _thread_mirror(self, message_id: int) -> None:
        key, message = await self._core.read(get_message, message_id)
        place = await self._core.read(request_card_place, key)
        if place is None:
            raise NotReady(f"the card of {key} is not posted yet")
        text, blocks = mirrored_message(message)
        await self._post(place.channel, text, blocks, thread_ts=place.ts)

    async def _approval_card(self, approval_id: int, key: str) -> None:
        card = await self._core.read(approval_card_view, approval_id)
        text, blocks = approval_card(card)
        place = await self._core.read(approval_card_place, approval_id)
        if place is not None:
            await self._update(place, text, blocks)
            return
        channel = _configured(self._approvals_channel, "SUPPORTDESK_APPROVALS_CHANNEL")
        posted = await self._post(channel, text, blocks)
        winner = await self._core.call(record_approval_card, approval_id, key, posted)
        if winner != posted:
            await self._client.chat_delete(channel=posted.channel, ts=posted.ts)

    async def _sla_alert(self, crossing_id: int) -> None:
        """A warning goes into the card's thread (to the channel too while nobody has the request); a breach
        to the alerts channel. Posted once per crossing; a retried row only brings the text up to date."""
        view = await self._core.read(alert_view, crossing_id)
        text, blocks = sla_alert(view)
        if view.place is not None:
            await self._refresh_alert(view)
            return
        broadcast = False
        thread_ts = None
        if view.threshold == "warning":
            if view.card is None:
                raise NotReady(f"the card of {view.request_key} is not posted yet")
            channel, thread_ts, broadcast = view.card.channel, view.card.ts, view.assignee is None
        else:
            channel = _configured(self._alerts_channel or self._triage_channel, "SUPPORTDESK_ALERTS_CHANNEL")
        posted = await self._post(channel, text, blocks, thread_ts=thread_ts, reply_broadcast=broadcast)
        winner = await self._core.call(record_alert_place, crossing_id, posted, blocks[0]["text"]["text"])
        if winner != posted:
            await self._client.chat_delete(channel=posted.channel, ts=posted.ts)

    async def _refresh_alerts(self, key: str) -> None:
        """After a change to the request, its posted alerts say where their targets stand now."""
        for view in await self._core.read(alerts_of_request, key):
            await self._refresh_alert(view)

    async def _refresh_alert(self, view: AlertView) -> None:
        text, blocks = sla_alert(view)
        shown = blocks[0]["text"]["text"]
        if view.place is None or text_digest(shown) == view.text_sha256:
            return
        await self._update(view.place, text, blocks)
        await self._core.call(record_alert_text, view.crossing_id, shown)

    async def _digest(self, digest_id: int) -> None:
        """The digest's message with its buttons, then the chart right below it; each step recorded once done."""
        digest = await self._core.read(get_digest, digest_id)
        channel = _configured(self._digest_channel, "SUPPORTDESK_DIGEST_CHANNEL")
        if digest.slack_ts is None:
            text, blocks = digest_message(digest)
            posted = await self._post(channel, text, blocks)
            await self._core.call(record_digest_post, digest_id, channel=posted.channel, ts=posted.ts)
        if digest.chart_file_id is None:
            await self._pacer.wait(channel)
            response = await self._client.files_upload_v2(
                channel=channel, content=digest.chart_png, filename="trend.png",
                title=f"Trend: 14 days to {digest.period}" if digest.kind == "daily" else f"Trend: {digest.period}",
            )
            uploaded = response.get("file") or {}
            await self._core.call(record_digest_chart, digest_id, file_id=str(uploaded.get("id") or "?"))

    async def _post(self, channel: str, text: str, blocks: list[dict[str, Any]],
                    thread_ts: str | None = None, reply_broadcast: bool = False) -> CardPlace:
        await self._pacer.wait(channel)
        extra = {"reply_broadcast": True} if thread_ts and reply_broadcast else {}
        response = await self._client.chat_postMessage(
            channel=channel, text=text, blocks=blocks, thread_ts=thread_ts,
            unfurl_links=False, unfurl_media=False,  # customer text must not unfurl into previews
            **extra,
        )
        return CardPlace(str(response["channel"]), str(response["ts"]))

    async def _update(self, place: CardPlace, text: str, blocks: list[dict[str, Any]]) -> None:
        await self._pacer.wait(place.channel)
        await self._client.chat_update(channel=place.channel, ts=place.ts, text=text, blocks=blocks)

    async def _slack_refused(self, item: OutboxItem, exc: SlackApiError) -> Outcome:
        status = getattr(exc.response, "status_code", None)
        error = str(exc.response.get("error") or "") if exc.response is not None else ""
        if status == 429:
            after = _retry_after(exc)
            self._pacer.rate_limited(after)
            await self._core.call(mark_retry, item.id, f"Slack rate limit; retry after {after} s", after)
            log.info("Slack asked to wait %d s before outbox row %d", after, item.id)
            return "retried"
        if error in PERMANENT_ERRORS:
            return await self._give_up(item, f"Slack refused the {item.topic}: {error}")
        return await self._retry(item, f"Slack answered {status}: {error or exc}")

    async def _retry(self, item: OutboxItem, error: str) -> Outcome:
        if item.attempts >= GIVE_UP_AFTER_ATTEMPTS:
            return await self._give_up(item, f"gave up after {item.attempts} attempts; the last: {error}")
        delay = retry_delay(item.attempts)
        await self._core.call(mark_retry, item.id, error, delay)
        log.info("the %s of outbox row %d will be retried in %d s: %s", item.topic, item.id, delay, error)
        return "retried"

    async def _give_up(self, item: OutboxItem, error: str) -> Outcome:
        await self._core.call(mark_failed, item.id, error)
        log.warning("the %s of outbox row %d was not delivered: %s", item.topic, item.id, error)
        return "failed"

    async def _settle(self, item: OutboxItem, outcome: Outcome) -> Outcome:
        """A row whose card this pass already drew ends as that drawing did."""
        if outcome == "sent":
            await self._core.call(mark_sent, item.id)
        elif outcome == "retried":
            await self._core.call(mark_retry, item.id, "retried with an earlier change to the same card",
                                  retry_delay(item.attempts))
        else:
            await self._core.call(mark_failed, item.id, "failed with an earlier change to the same card")
        return outcome


def _target(item: OutboxItem) -> tuple[str, str] | None:
    """Which card a row redraws (rows for the same card coalesce); None for rows that post something new."""
    if item.topic == "triage_card":
        return ("request", str(item.payload.get("request_key")))
    if item.topic == "approval_card":
        return ("approval", str(item.payload.get("approval_id")))
    return None


def _configured(channel: str | None, setting: str) -> str:
    if not channel:
        raise InvalidInput(f"{setting} is not set, so there is no channel to post to")
    return channel


def _retry_after(exc: SlackApiError) -> int:
    headers = getattr(exc.response, "headers", None) or {}
    value = headers.get("Retry-After") or headers.get("retry-after") or "1"
    try:
        return max(1, int(float(str(value if not isinstance(value, list) else value[0]))))
    except ValueError:
        return 30


async def _sleep(stop: asyncio.Event, wake: asyncio.Event, interval: float) -> bool:
    """Wait ``interval`` or until stopped or woken; True when woken."""
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    _done, pending = await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
    for waiter in pending:
        waiter.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return wake.is_set()
