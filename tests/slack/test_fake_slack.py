"""Proof that the Slack doubles behave like Slack, as seen by slack-sdk and slack-bolt.

The app's Slack tests are only as good as these doubles: if the fake answered
shapes the SDK cannot parse, or its 429 were not the 429 the SDK's retry
handler honours, or the signed requests were not the ones Bolt verifies, every
test built on them would be testing fiction. So each behaviour is checked here
through the real clients, over real sockets.

AsyncWebClient and AsyncApp need aiohttp, which the project does not list yet:
like the swaks tests, the tests that need it skip on a machine without it and
fail in CI (CI=true), so a missing dependency cannot pass silently.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import threading
import time
import urllib.error
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (ConnectionErrorRetryHandler, RateLimitErrorRetryHandler,
                                                   ServerErrorRetryHandler)
from slack_sdk.http_retry.builtin_interval_calculators import FixedValueRetryIntervalCalculator
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from tests.slack import signing
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import (AGENT, EXTERNAL_USER, PARTNER_TEAM, Signing, block_actions, button, event_callback,
                                 message_action, message_event, signed_event, signed_interaction, signed_slash_command,
                                 slash_command, static_select, text_input, url_verification, users_select,
                                 view_submission)

try:  # see the module docstring
    from aiohttp import ClientConnectorError
    from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
    from slack_bolt.error import BoltError
    from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
    from slack_sdk.web.async_client import AsyncWebClient

    from tests.slack.bolt_http import serve_async_app
    AIOHTTP_MISSING: ImportError | None = None
except ImportError as missing:
    AIOHTTP_MISSING = missing

TS = re.compile(r"^\d{10}\.\d{6}$")
MODAL = {"type": "modal", "callback_id": "new-request", "title": {"type": "plain_text", "text": "New request"},
         "blocks": [], "private_metadata": "REQ-1"}


@pytest.fixture
def async_stack() -> None:
    """Skip without aiohttp on a developer machine; fail in CI, where it must be installed."""
    if AIOHTTP_MISSING is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"aiohttp is required for AsyncWebClient/AsyncApp: {AIOHTTP_MISSING}")
    pytest.skip(f"aiohttp is not installed: {AIOHTTP_MISSING}")


@pytest.fixture
def client(fake_slack: FakeSlack) -> WebClient:
    """A sync client with no retry handlers, so every fault surfaces at once."""
    return WebClient(token=fake_slack.token, base_url=fake_slack.base_url, retry_handlers=[])


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run one async scenario in a fresh loop (the project does not use pytest-asyncio)."""
    asyncio.run(scenario())


# ------------------------------------------------------------- every method answered


def answers_from_sync(client: WebClient, fake: FakeSlack) -> dict[str, dict[str, Any]]:
    fake.add_user("U0REQUEST", name="rita")
    posted = client.chat_postMessage(channel="C0TRIAGE1", text="New request REQ-1")
    opened = client.views_open(trigger_id="t-1", view=MODAL)
    return {
        "auth.test": client.auth_test().data,
        "chat.postMessage": posted.data,
        "chat.update": client.chat_update(channel=posted["channel"], ts=posted["ts"], text="Claimed").data,
        "chat.postEphemeral": client.chat_postEphemeral(channel="C0TRIAGE1", user="U0REQUEST", text="psst").data,
        "chat.getPermalink": client.chat_getPermalink(channel=posted["channel"], message_ts=posted["ts"]).data,
        "views.open": opened.data,
        "views.push": client.views_push(trigger_id="t-2", view=MODAL).data,
        "views.update": client.views_update(view_id=opened["view"]["id"], view={**MODAL, "private_metadata": "REQ-2"}).data,
        "views.publish": client.views_publish(user_id="U0REQUEST", view={"type": "home", "blocks": []}).data,
        "conversations.info": client.conversations_info(channel="C0TRIAGE1").data,
        "users.info": client.users_info(user="U0REQUEST").data,
    }


async def answers_from_async(client: AsyncWebClient, fake: FakeSlack) -> dict[str, dict[str, Any]]:
    fake.add_user("U0REQUEST", name="rita")
    posted = await client.chat_postMessage(channel="C0TRIAGE1", text="New request REQ-1")
    opened = await client.views_open(trigger_id="t-1", view=MODAL)
    return {
        "auth.test": (await client.auth_test()).data,
        "chat.postMessage": posted.data,
        "chat.update": (await client.chat_update(channel=posted["channel"], ts=posted["ts"], text="Claimed")).data,
        "chat.postEphemeral": (await client.chat_postEphemeral(channel="C0TRIAGE1", user="U0REQUEST", text="psst")).data,
        "chat.getPermalink": (await client.chat_getPermalink(channel=posted["channel"], message_ts=posted["ts"])).data,
        "views.open": opened.data,
        "views.push": (await client.views_push(trigger_id="t-2", view=MODAL)).data,
        "views.update": (await client.views_update(view_id=opened["view"]["id"],
                                                   view={**MODAL, "private_metadata": "REQ-2"})).data,
        "views.publish": (await client.views_publish(user_id="U0REQUEST", view={"type": "home", "blocks": []})).data,
        "conversations.info": (await client.conversations_info(channel="C0TRIAGE1")).data,
        "users.info": (await client.users_info(user="U0REQUEST")).data,
    }


def check_answers(answers: dict[str, dict[str, Any]], fake: FakeSlack) -> None:
    """The documented response shapes, and the fake's state after them."""
    assert all(answer["ok"] is True for answer in answers.values()), answers
    ws = fake.workspace
    assert {k: answers["auth.test"][k] for k in ("team_id", "user_id", "bot_id", "team", "user", "url")} == {
        "team_id": ws.team_id, "user_id": ws.bot_user_id, "bot_id": ws.bot_id, "team": ws.team,
        "user": ws.bot_name, "url": ws.url}
    posted = answers["chat.postMessage"]
    assert posted["channel"] == "C0TRIAGE1" and TS.match(posted["ts"])
    assert posted["message"]["text"] == "New request REQ-1" and posted["message"]["bot_id"] == ws.bot_id
    assert {k: answers["chat.update"][k] for k in ("channel", "ts", "text")} == {
        "channel": "C0TRIAGE1", "ts": posted["ts"], "text": "Claimed"}
    assert TS.match(answers["chat.postEphemeral"]["message_ts"])
    assert answers["chat.getPermalink"]["permalink"] == f"{ws.url}archives/C0TRIAGE1/p{posted['ts'].replace('.', '')}"
    opened, pushed, updated = answers["views.open"]["view"], answers["views.push"]["view"], answers["views.update"]["view"]
    assert opened["id"].startswith("V") and opened["callback_id"] == "new-request"
    assert pushed["id"] != opened["id"] and pushed["previous_view_id"] == opened["id"]
    assert updated["id"] == opened["id"] and updated["private_metadata"] == "REQ-2"
    assert answers["views.publish"]["view"]["type"] == "home" and answers["views.publish"]["view"]["id"]
    assert answers["conversations.info"]["channel"]["id"] == "C0TRIAGE1"
    assert answers["users.info"]["user"]["id"] == "U0REQUEST"
    assert answers["users.info"]["user"]["team_id"] == ws.team_id
    assert fake.message("C0TRIAGE1", posted["ts"])["text"] == "Claimed"  # type: ignore[index]
    assert all(call.token == fake.token for call in fake.calls())


def test_sync_web_client_gets_slack_shaped_answers_for_every_method(client: WebClient, fake_slack: FakeSlack) -> None:
    check_answers(answers_from_sync(client, fake_slack), fake_slack)
    assert fake_slack.last_call("chat.update").authorization == f"Bearer {fake_slack.token}"


def test_async_web_client_gets_slack_shaped_answers_for_every_method(async_stack: None, fake_slack: FakeSlack) -> None:
    async def scenario() -> None:
        client = AsyncWebClient(token=fake_slack.token, base_url=fake_slack.base_url)
        check_answers(await answers_from_async(client, fake_slack), fake_slack)

    run(scenario)
    # the async client sends lookups as GET with a query string, the sync one as a form POST
    assert fake_slack.last_call("users.info").http_method == "GET"


def test_form_and_json_bodies_are_recorded_alike(client: WebClient, fake_slack: FakeSlack) -> None:
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*REQ-1*"}}]
    client.api_call("chat.postMessage", data={"channel": "C1", "text": "t", "blocks": json.dumps(blocks)})
    client.api_call("chat.postMessage", json={"channel": "C1", "text": "t", "blocks": blocks})
    form, as_json = fake_slack.calls("chat.postMessage")
    assert form.content_type.startswith("application/x-www-form-urlencoded")
    assert as_json.content_type.startswith("application/json")
    assert form.args == as_json.args == {"channel": "C1", "text": "t", "blocks": blocks}


def test_message_ts_are_unique_and_increasing_under_concurrency(fake_slack: FakeSlack) -> None:
    """Also: a burst of 20 connections is served at once (a small listen backlog costs a 1 s SYN retry)."""

    def post(n: int) -> str:
        return str(WebClient(token=fake_slack.token, base_url=fake_slack.base_url)
                   .chat_postMessage(channel="C1", text=str(n))["ts"])

    results: list[str] = []
    threads = [threading.Thread(target=lambda n=n: results.append(post(n))) for n in range(20)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert time.monotonic() - started < 0.9
    assert len(set(results)) == 20 and all(TS.match(ts) for ts in results)
    recorded = [str(call.response["ts"]) for call in fake_slack.calls("chat.postMessage") if call.response]
    assert recorded == sorted(recorded, key=lambda ts: tuple(map(int, ts.split("."))))


# -------------------------------------------------------------- Slack's errors


def api_error(call: Callable[[], object]) -> SlackApiError:
    with pytest.raises(SlackApiError) as raised:
        call()
    return raised.value


def test_chat_update_of_a_message_the_fake_never_posted_is_message_not_found(client: WebClient,
                                                                             fake_slack: FakeSlack) -> None:
    error = api_error(lambda: client.chat_update(channel="C1", ts="1700000000.000100", text="x"))
    assert error.response.status_code == 200 and error.response["error"] == "message_not_found"
    ephemeral = client.chat_postEphemeral(channel="C1", user="U1", text="only you")
    error = api_error(lambda: client.chat_update(channel="C1", ts=ephemeral["message_ts"], text="x"))
    assert error.response["error"] == "message_not_found"  # ephemeral messages cannot be updated


def test_a_dm_posted_to_a_user_id_must_be_updated_by_its_d_channel(client: WebClient) -> None:
    posted = client.chat_postMessage(channel="U0REQUEST", text="your request")
    assert posted["channel"] == "D0REQUEST"
    assert api_error(lambda: client.chat_update(channel="U0REQUEST", ts=posted["ts"], text="x")).response[
        "error"] == "message_not_found"
    assert client.chat_update(channel=posted["channel"], ts=posted["ts"], text="x")["ok"]


def test_seeded_messages_can_be_updated_and_keep_blocks_unless_sent(client: WebClient, fake_slack: FakeSlack) -> None:
    ts = fake_slack.seed_message("C1", "card", blocks=[{"type": "divider"}])
    client.chat_update(channel="C1", ts=ts, text="claimed")
    assert fake_slack.message("C1", ts)["blocks"] == [{"type": "divider"}]  # type: ignore[index]
    client.chat_update(channel="C1", ts=ts, text="closed", blocks=[])
    assert fake_slack.message("C1", ts)["blocks"] == []  # type: ignore[index]


def test_chat_delete_removes_the_message_once(client: WebClient, fake_slack: FakeSlack) -> None:
    posted = client.chat_postMessage(channel="C1", text="a duplicate card")
    assert client.chat_delete(channel="C1", ts=posted["ts"])["ts"] == posted["ts"]
    assert fake_slack.message("C1", posted["ts"]) is None
    assert api_error(lambda: client.chat_delete(channel="C1", ts=posted["ts"])).response["error"] == "message_not_found"


def test_a_wrong_or_missing_token_is_refused(fake_slack: FakeSlack) -> None:
    wrong = WebClient(token="xoxb-not-ours", base_url=fake_slack.base_url)
    assert api_error(wrong.auth_test).response["error"] == "invalid_auth"
    assert api_error(WebClient(base_url=fake_slack.base_url).auth_test).response["error"] == "not_authed"
    assert fake_slack.last_call("auth.test").authorization is None


def test_unknown_methods_and_a_wrong_base_url_are_visible(fake_slack: FakeSlack, client: WebClient) -> None:
    assert api_error(lambda: client.api_call("chat.teleport")).response["error"] == "unknown_method"
    wrong_base = WebClient(token=fake_slack.token, base_url=fake_slack.root_url)  # no /api/
    assert api_error(wrong_base.auth_test).response["error"] == "unknown_method"
    assert fake_slack.calls()[-1].path == "/auth.test"


def test_a_trigger_id_opens_one_view_only(client: WebClient) -> None:
    client.views_open(trigger_id="t-1", view=MODAL)
    assert api_error(lambda: client.views_open(trigger_id="t-1", view=MODAL)).response[
        "error"] == "exchanged_trigger_id"


def test_views_update_with_a_stale_hash_conflicts(client: WebClient) -> None:
    view = client.views_open(trigger_id="t-1", view=MODAL)["view"]
    client.views_update(view_id=view["id"], hash=view["hash"], view=MODAL)
    assert api_error(lambda: client.views_update(view_id=view["id"], hash=view["hash"], view=MODAL)).response[
        "error"] == "hash_conflict"
    assert api_error(lambda: client.views_update(view_id="V404", view=MODAL)).response["error"] == "not_found"


def test_users_are_configurable_including_slack_connect_users(client: WebClient, fake_slack: FakeSlack) -> None:
    fake_slack.add_user(EXTERNAL_USER.id, team_id=EXTERNAL_USER.team_id, name=EXTERNAL_USER.username)
    assert client.users_info(user=EXTERNAL_USER.id)["user"]["team_id"] == PARTNER_TEAM.id
    assert api_error(lambda: client.users_info(user="U0NOBODY")).response["error"] == "user_not_found"
    assert client.users_info(user=fake_slack.workspace.bot_user_id)["user"]["is_bot"] is True


# ------------------------------------------------------------------------ faults


def test_429_is_retried_by_the_sync_rate_limit_handler_after_retry_after(fake_slack: FakeSlack) -> None:
    fake_slack.rate_limit("chat.postMessage", retry_after=1)
    client = WebClient(token=fake_slack.token, base_url=fake_slack.base_url,
                       retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    started = time.monotonic()
    assert client.chat_postMessage(channel="C1", text="hi")["ok"]
    assert time.monotonic() - started >= 1.0
    limited, retried = fake_slack.calls("chat.postMessage")
    assert (limited.status, limited.response) == (429, {"ok": False, "error": "ratelimited"})
    assert retried.ok and retried.at - limited.at >= 1.0


def test_429_without_a_retry_handler_raises_with_retry_after(client: WebClient, fake_slack: FakeSlack) -> None:
    fake_slack.rate_limit("chat.postMessage", retry_after=7)
    error = api_error(lambda: client.chat_postMessage(channel="C1", text="hi"))
    assert error.response.status_code == 429 and error.response["error"] == "ratelimited"
    assert error.response.headers["Retry-After"] == "7"
    assert client.chat_postMessage(channel="C1", text="hi")["ok"]  # only the next call was limited


def test_429_is_retried_by_the_async_rate_limit_handler_after_retry_after(async_stack: None,
                                                                          fake_slack: FakeSlack) -> None:
    async def scenario() -> None:
        fake_slack.rate_limit(retry_after=1)  # every method
        client = AsyncWebClient(token=fake_slack.token, base_url=fake_slack.base_url,
                                retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)])
        started = time.monotonic()
        assert (await client.chat_update(channel="C1", ts=fake_slack.seed_message("C1", "x"), text="y"))["ok"]
        assert time.monotonic() - started >= 1.0

    run(scenario)
    assert [call.status for call in fake_slack.calls("chat.update")] == [429, 200]


def test_429_without_an_async_retry_handler_raises(async_stack: None, fake_slack: FakeSlack) -> None:
    async def scenario() -> None:
        fake_slack.rate_limit("views.open", retry_after=1)
        client = AsyncWebClient(token=fake_slack.token, base_url=fake_slack.base_url)
        with pytest.raises(SlackApiError) as raised:
            await client.views_open(trigger_id="t-1", view=MODAL)
        assert raised.value.response.status_code == 429 and raised.value.response["error"] == "ratelimited"
        assert raised.value.response.headers["Retry-After"] == "1"

    run(scenario)


def test_5xx_raises_then_recovers_and_the_server_error_handler_retries(client: WebClient,
                                                                       fake_slack: FakeSlack) -> None:
    fake_slack.server_error("chat.postMessage", times=1, status=503)
    assert api_error(lambda: client.chat_postMessage(channel="C1", text="hi")).response.status_code == 503
    assert client.chat_postMessage(channel="C1", text="hi")["ok"]
    fake_slack.server_error(times=1, status=500)
    retrying = WebClient(token=fake_slack.token, base_url=fake_slack.base_url, retry_handlers=[
        ServerErrorRetryHandler(interval_calculator=FixedValueRetryIntervalCalculator(0.05))])
    assert retrying.auth_test()["ok"]
    assert [c.status for c in fake_slack.calls("auth.test")] == [500, 200]


def test_ok_false_errors_for_the_next_n_calls_of_one_method(client: WebClient, fake_slack: FakeSlack) -> None:
    fake_slack.fail("chat.postMessage", "not_in_channel", times=2)
    for _ in range(2):
        assert api_error(lambda: client.chat_postMessage(channel="C1", text="hi")).response["error"] == "not_in_channel"
    assert client.auth_test()["ok"]  # other methods are untouched
    assert client.chat_postMessage(channel="C1", text="hi")["ok"]


def test_down_refuses_connections_and_up_returns_on_the_same_port(client: WebClient, fake_slack: FakeSlack) -> None:
    client.auth_test()
    port = fake_slack.port
    fake_slack.down()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    with pytest.raises(urllib.error.URLError):
        client.auth_test()
    fake_slack.up()
    assert fake_slack.port == port and client.auth_test()["ok"]
    assert len(fake_slack.calls("auth.test")) == 2  # the refused call never arrived; the log survived


def test_the_connection_retry_handler_rides_out_a_short_outage(fake_slack: FakeSlack) -> None:
    fake_slack.down()
    coming_back = threading.Timer(0.1, fake_slack.up)
    coming_back.start()
    client = WebClient(token=fake_slack.token, base_url=fake_slack.base_url, retry_handlers=[
        ConnectionErrorRetryHandler(max_retry_count=3, interval_calculator=FixedValueRetryIntervalCalculator(0.2))])
    assert client.auth_test()["ok"]
    coming_back.join()


def test_down_is_a_connection_error_for_the_async_client(async_stack: None, fake_slack: FakeSlack) -> None:
    async def scenario() -> None:
        client = AsyncWebClient(token=fake_slack.token, base_url=fake_slack.base_url, retry_handlers=[])
        fake_slack.down()
        with pytest.raises(ClientConnectorError):
            await client.auth_test()
        fake_slack.up()
        assert (await client.auth_test())["ok"]

    run(scenario)


def test_latency_delays_only_the_chosen_method_and_calls_run_concurrently(fake_slack: FakeSlack) -> None:
    fake_slack.set_latency(0.3, "chat.postMessage")
    client = WebClient(token=fake_slack.token, base_url=fake_slack.base_url)
    started = time.monotonic()
    client.auth_test()
    assert time.monotonic() - started < 0.3
    threads = [threading.Thread(target=client.chat_postMessage, kwargs={"channel": "C1", "text": "x"})
               for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 0.3 <= time.monotonic() - started < 0.85  # three slow calls in parallel, not in series


def test_wait_for_calls_wakes_on_arrival_and_fails_with_what_it_saw(client: WebClient, fake_slack: FakeSlack) -> None:
    threading.Timer(0.05, lambda: client.chat_postMessage(channel="C1", text="late")).start()
    started = time.monotonic()
    assert len(fake_slack.wait_for_calls("chat.postMessage", 1, timeout=2)) == 1
    assert time.monotonic() - started < 1
    with pytest.raises(AssertionError, match=r"expected 2 chat.postMessage call\(s\).*chat.postMessage -> 200"):
        fake_slack.wait_for_calls("chat.postMessage", 2, timeout=0.1)


def test_response_url_posts_are_recorded_per_webhook(fake_slack: FakeSlack) -> None:
    WebhookClient(fake_slack.webhook_url("claim")).send(text="Claimed by you", replace_original=True)
    WebhookClient(fake_slack.webhook_url()).send(text="other")
    [post] = fake_slack.webhook_posts("claim")
    assert post.args == {"text": "Claimed by you", "replace_original": True}
    assert len(fake_slack.webhook_posts()) == 2


# ---------------------------------------------------------------------- signing


def test_the_signature_matches_slacks_documented_example() -> None:
    body = (b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
            b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
            b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
            b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c")
    assert signing.signature(body, 1531420618, "8f742231b10e8888abcd99yyyzzz85a5") == (
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503")


def every_signed_request(signing_options: Signing) -> Iterator[signing.SignedRequest]:
    yield signed_slash_command(slash_command(text="help"), signing_options)
    yield signed_interaction(block_actions(button("claim", "REQ-1")), signing_options)
    yield signed_interaction(view_submission("new-request", {"b": {"a": text_input("x")}}), signing_options)
    yield signed_interaction(message_action("file-request", "printer is on fire"), signing_options)
    yield signed_event(event_callback(message_event("help")), signing_options)
    yield signed_event(url_verification(), signing_options)


@pytest.mark.parametrize("options, valid", [
    (Signing(), True),
    (Signing(retry_num=1), True),
    (Signing(stale=True), False),
    (Signing(wrong_signature=True), False),
    (Signing(secret="another-apps-secret"), False),
])
def test_sdk_signature_verifier_agrees(options: Signing, valid: bool) -> None:
    verifier = SignatureVerifier(signing.DEFAULT_SIGNING_SECRET)
    for request in every_signed_request(options):
        headers = request.headers
        assert verifier.is_valid(request.body, headers["X-Slack-Request-Timestamp"],
                                 headers["X-Slack-Signature"]) is valid


def test_retry_and_stale_options_set_slacks_headers() -> None:
    request = signed_event(event_callback(message_event("hi")), Signing(retry_num=2, retry_reason="http_error"))
    assert (request.headers["X-Slack-Retry-Num"], request.headers["X-Slack-Retry-Reason"]) == ("2", "http_error")
    stale = signed_event(url_verification(), Signing(stale=True))
    assert time.time() - int(stale.headers["X-Slack-Request-Timestamp"]) > signing.MAX_AGE_SECONDS


def test_payloads_carry_the_fields_listeners_read() -> None:
    command = slash_command("/support", "open printer broken")
    assert {"token", "team_id", "team_domain", "channel_id", "channel_name", "user_id", "user_name", "command",
            "text", "response_url", "trigger_id", "api_app_id"} <= command.keys()
    actions = block_actions(button("claim", "REQ-1"), static_select("prio", "high"), users_select("assign", "U2"),
                            message_ts="1700000000.000300", user=EXTERNAL_USER)
    assert actions["container"] == {"type": "message", "message_ts": "1700000000.000300", "channel_id": "C0TRIAGE1",
                                    "is_ephemeral": False}
    assert actions["user"]["team_id"] == PARTNER_TEAM.id != actions["team"]["id"]  # Slack Connect
    assert [a.get("value") or a.get("selected_option", {}).get("value") or a.get("selected_user")
            for a in actions["actions"]] == ["REQ-1", "high", "U2"]
    submitted = view_submission("new-request", {"subject": {"input": text_input("Printer")}}, private_metadata="m")
    assert submitted["view"]["state"]["values"]["subject"]["input"]["value"] == "Printer"
    event = event_callback(message_event("hi", user=EXTERNAL_USER))
    assert event["is_ext_shared_channel"] is True and event["event"]["user_team"] == PARTNER_TEAM.id
    assert event["event_id"] != event_callback(message_event("hi"))["event_id"]


# ------------------------------------------------------------- Bolt end to end


def bolt_app(fake: FakeSlack) -> AsyncApp:
    """The recipe: the token goes on the client; AsyncApp ignores ``token=`` when ``client=`` is given."""
    client = AsyncWebClient(token=fake.token, base_url=fake.base_url)
    app = AsyncApp(signing_secret=signing.DEFAULT_SIGNING_SECRET, client=client)

    @app.command("/support")
    async def support(ack: AsyncAck, command: dict[str, Any]) -> None:
        await ack(f"Got it: {command['text']}")

    @app.action("claim")
    async def claim(ack: AsyncAck, body: dict[str, Any], client: AsyncWebClient, respond: AsyncRespond) -> None:
        await ack()
        container = body["container"]
        await client.chat_update(channel=container["channel_id"], ts=container["message_ts"],
                                 text=f"Claimed by <@{body['user']['id']}>", blocks=[])
        await respond("You claimed it", replace_original=False)

    return app


def test_bolt_over_http_acks_a_signed_slash_command_and_401s_a_bad_one(async_stack: None,
                                                                         fake_slack: FakeSlack) -> None:
    async def scenario() -> None:
        async with serve_async_app(bolt_app(fake_slack)) as url:
            good = await signing.post_async(url, signed_slash_command(slash_command("/support", "printer")))
            assert (good.status, good.text) == (200, "Got it: printer") and good.elapsed < 3
            for bad in (Signing(wrong_signature=True), Signing(stale=True)):
                refused = await signing.post_async(url, signed_slash_command(slash_command("/support"), bad))
                assert (refused.status, refused.json()) == (401, {"error": "invalid request"})
            echoed = await signing.post_async(url, signed_event(url_verification("c-123")))
            assert (echoed.status, echoed.json()) == (200, {"challenge": "c-123"})

    run(scenario)
    assert [c.method for c in fake_slack.calls()] == ["auth.test"]  # refused requests cost no API call


def test_a_block_actions_listener_updates_the_card_on_the_fake(async_stack: None, fake_slack: FakeSlack) -> None:
    ts = fake_slack.seed_message("C0TRIAGE1", "REQ-1: printer", blocks=[{"type": "actions", "elements": []}])
    payload = block_actions(button("claim", "REQ-1"), message_ts=ts, response_url=fake_slack.webhook_url("claim"))

    async def scenario() -> None:
        async with serve_async_app(bolt_app(fake_slack)) as url:
            result = await signing.post_async(url, signed_interaction(payload))
            assert (result.status, result.text) == (200, "") and result.elapsed < 3
            await asyncio.to_thread(fake_slack.wait_for_calls, "chat.update", 1)
            await asyncio.to_thread(fake_slack.wait_for_webhook_posts, 1)

    run(scenario)
    update = fake_slack.last_call("chat.update")
    assert update.ok and update.args["ts"] == ts and update.token == fake_slack.token
    card = fake_slack.message("C0TRIAGE1", ts)
    assert card is not None and (card["text"], card["blocks"]) == (f"Claimed by <@{AGENT.id}>", [])
    assert fake_slack.webhook_posts("claim")[0].args["text"] == "You claimed it"


def test_async_app_ignores_token_when_a_client_is_given(async_stack: None, fake_slack: FakeSlack,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLACK_BOT_TOKEN", raising=False)
    tokenless = AsyncWebClient(base_url=fake_slack.base_url)
    with pytest.raises(BoltError, match="token"):
        AsyncApp(token=fake_slack.token, signing_secret=signing.DEFAULT_SIGNING_SECRET, client=tokenless)


def test_a_rate_limit_per_channel_answers_429_with_the_wait(fake_slack: FakeSlack) -> None:
    fake_slack.limit_rate("chat.postMessage", 1.0, burst=2)
    bare = WebClient(token=fake_slack.token, base_url=fake_slack.base_url)  # no retry handlers
    for _ in range(2):
        assert bare.chat_postMessage(channel="C1", text="within the burst")["ok"]
    with pytest.raises(SlackApiError) as refused:
        bare.chat_postMessage(channel="C1", text="one too many")
    assert refused.value.response.status_code == 429 and refused.value.response.headers["Retry-After"] == "1"
    assert bare.chat_postMessage(channel="C2", text="another channel has its own bucket")["ok"]
    time.sleep(1.05)
    assert bare.chat_postMessage(channel="C1", text="a token came back")["ok"]


def test_a_file_is_uploaded_in_three_steps_and_shared(fake_slack: FakeSlack) -> None:
    bare = WebClient(token=fake_slack.token, base_url=fake_slack.base_url)
    response = bare.files_upload_v2(channel="C1", content=b"\x89PNG...", filename="trend.png", title="Trend")
    stored = fake_slack.file(response["file"]["id"])
    assert stored is not None and stored["content"] == b"\x89PNG..." and stored["channel"] == "C1"
    assert stored["title"] == "Trend" and stored["complete"]
    assert [c.method for c in fake_slack.calls()] == ["files.getUploadURLExternal", "upload",
                                                      "files.completeUploadExternal"]
