"""The Slack app in Socket Mode: envelopes over a real WebSocket on loopback, Web API calls to the fake Slack. Both databases.

The real ``SlackPart`` runs with ``SLACK_APP_TOKEN`` and no signing secret,
as an admin without a public URL would run it. It asks the fake Web API's
``apps.connections.open`` for a URL, connects to the fake Socket Mode
server, and every test talks to it only the way Slack does: envelopes on the
socket, whose acknowledgments the fake records, and ``response_url`` posts
and Web API calls, which the fake Slack records.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from bot.app import SlackPart
from core import services
from core.errors import InvalidInput
from core.queries import get_request_detail
from core.services import InboundMail
from core.store import Store
from tests import factories as f
from tests.bot.slack_harness import ALICE, STRANGER, RunningSlack, running_slack
from tests.intake.serve_process import ServeProcess, free_port, serve_env, wait_for_port
from tests.slack.fake_slack import FakeSlack
from tests.slack.fake_socket_mode import Ack, FakeSocketMode, events_api, interactive, slash_commands
from tests.slack.signing import (
    EXTERNAL_USER,
    TRIAGE_CHANNEL,
    SlackUser,
    block_actions,
    button,
    event_callback,
    message_event,
    post,
    signed_slash_command,
    slash_command,
    text_input,
    view_submission,
)


@pytest.fixture
def fake_socket_mode(fake_slack: FakeSlack) -> Iterator[FakeSocketMode]:
    with FakeSocketMode() as socket:
        fake_slack.offer_socket_mode(socket.url)
        yield socket


def socket_mode_part(store: Store, fake: FakeSlack, *,
                     app_token: str | None = None) -> AbstractContextManager[RunningSlack]:
    """The real Slack part in Socket Mode (no signing secret), in an event loop on a thread of its own."""
    return running_slack(store, fake, app_token=app_token or fake.app_token)


@pytest.fixture
def slack(store: Store, fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode) -> Iterator[RunningSlack]:
    f.seed(store)
    with socket_mode_part(store, fake_slack) as running:
        fake_socket_mode.wait_for_connections(1)
        yield running


def email_request(store: Store, subject: str = "Charged twice") -> str:
    return services.open_request(
        store, channel="email",
        mail=InboundMail(from_address="jane@acme.test", subject=subject, body_text="Please help.",
                         message_id=f"<{time.time()}@x>"),
    ).key


def command(socket: FakeSocketMode, fake: FakeSlack, text: str, user: SlackUser = ALICE) -> Ack:
    envelope_id = socket.send(slash_commands(slash_command("/sd", text, user=user, response_url=fake.webhook_url())))
    return socket.wait_for_ack(envelope_id)


def click(socket: FakeSocketMode, fake: FakeSlack, action: dict[str, Any], user: SlackUser = ALICE) -> Ack:
    envelope_id = socket.send(interactive(block_actions(action, user=user, response_url=fake.webhook_url())))
    return socket.wait_for_ack(envelope_id)


# --- the connection ----------------------------------------------------------------------------


def test_the_app_opens_its_connection_with_the_app_token_and_calls_everything_else_with_the_bot_token(
    slack: RunningSlack, fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode
) -> None:
    (opened,) = fake_slack.calls("apps.connections.open")
    assert opened.ok and opened.authorization == f"Bearer {fake_slack.app_token}"
    command(fake_socket_mode, fake_slack, "help")  # Bolt asks auth.test who it is before answering
    others = [c for c in fake_slack.calls() if c.method != "apps.connections.open"]
    assert "auth.test" in [c.method for c in others] and all(c.token == fake_slack.token for c in others)


def test_slack_posts_are_404_in_socket_mode_and_health_still_answers(slack: RunningSlack, fake_slack: FakeSlack,
                                                                     fake_socket_mode: FakeSocketMode) -> None:
    key = email_request(slack.store)
    # Correctly signed with a secret the app might once have had: still nothing there to take it.
    answer = post(slack.url, signed_slash_command(slash_command("/sd", f"claim {key}", user=ALICE,
                                                                response_url=fake_slack.webhook_url())))
    assert answer.status == 404
    with urllib.request.urlopen(slack.health_url, timeout=5) as response:
        body = json.load(response)
    assert response.status == 200 and body["store"] is True and body["parts"]["slack"] == "socket_mode"
    assert get_request_detail(slack.store, key).request.status == "new"
    assert fake_slack.webhook_posts() == [] and fake_socket_mode.acks() == []


def test_slack_asking_for_a_refresh_gets_a_new_connection_that_answers(slack: RunningSlack, fake_slack: FakeSlack,
                                                                       fake_socket_mode: FakeSocketMode) -> None:
    fake_socket_mode.request_refresh()
    fake_socket_mode.wait_for_connections(2)
    assert len(fake_slack.calls("apps.connections.open")) == 2
    ack = command(fake_socket_mode, fake_slack, "help")
    assert ack.payload is not None and "/sd show SR-12" in ack.payload["text"]


def test_a_refused_app_token_stops_the_start_with_a_clear_error_and_leaves_nothing_listening(
    store: Store, fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode
) -> None:
    with pytest.raises(InvalidInput, match=r"Slack refused SLACK_APP_TOKEN \(invalid_auth\)"):
        with socket_mode_part(store, fake_slack, app_token="xapp-1-A0OTHER-1-revoked"):
            pass
    assert fake_socket_mode.connections == 0
    assert [c.response["error"] for c in fake_slack.calls("apps.connections.open")] == ["invalid_auth"]


def test_slack_out_of_reach_at_start_is_tried_again_until_it_answers(store: Store, fake_slack: FakeSlack,
                                                                     fake_socket_mode: FakeSocketMode) -> None:
    f.seed(store)
    fake_slack.down()
    with socket_mode_part(store, fake_slack) as slack:
        with urllib.request.urlopen(slack.health_url, timeout=5) as response:
            assert response.status == 200  # the part started; Slack is tried again in the background
        assert fake_socket_mode.connections == 0
        fake_slack.up()
        fake_socket_mode.wait_for_connections(1, timeout=20)
        ack = command(fake_socket_mode, fake_slack, "help")
        assert ack.payload is not None and ack.payload["response_type"] == "ephemeral"


def test_stopping_answers_the_envelope_in_hand_closes_the_connection_and_leaves_no_task_behind(
    store: Store, fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode
) -> None:
    f.seed(store)
    fake_slack.set_latency(1.5, "auth.test")  # Bolt asks Slack who it is before its first acknowledgment
    with socket_mode_part(store, fake_slack) as slack:
        fake_socket_mode.wait_for_connections(1)
        envelope_id = fake_socket_mode.send(slash_commands(slash_command("/sd", "help", user=ALICE)))
        time.sleep(0.3)  # the envelope is in the app's hands, waiting for auth.test
        unfinished = slack.run(_stop_and_list_unfinished(slack.part))
    ack = fake_socket_mode.wait_for_ack(envelope_id, timeout=1)
    assert ack.payload is not None and "/sd show SR-12" in ack.payload["text"]
    fake_socket_mode.wait_until_closed()
    assert unfinished == []


async def _stop_and_list_unfinished(part: SlackPart) -> list[str]:
    """Tasks not finished the moment ``stop()`` returns: the loop could end right then."""
    await part.stop()
    return [repr(t.get_coro()) for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]


# --- commands, clicks, modals and events over the socket ----------------------------------------


def test_help_is_acknowledged_on_the_socket_with_the_usage_ephemerally(slack: RunningSlack, fake_slack: FakeSlack,
                                                                        fake_socket_mode: FakeSocketMode) -> None:
    started = time.monotonic()
    ack = command(fake_socket_mode, fake_slack, "help")
    assert time.monotonic() - started < 3
    assert ack.payload is not None and ack.payload["response_type"] == "ephemeral"
    assert "/sd show SR-12" in ack.payload["text"]


def test_a_command_is_acknowledged_and_its_answer_reaches_the_response_url(slack: RunningSlack, fake_slack: FakeSlack,
                                                                           fake_socket_mode: FakeSocketMode) -> None:
    key = email_request(slack.store, subject="Invoice INV-100 charged twice")
    ack = command(fake_socket_mode, fake_slack, f"show {key}")
    assert ack.payload is None  # acknowledged empty: the answer needs the store, so it follows on the response_url
    (answer,) = fake_slack.wait_for_webhook_posts(1, timeout=5)
    assert answer.args["response_type"] == "ephemeral" and key in json.dumps(answer.args)


@pytest.mark.parametrize("user", [STRANGER, EXTERNAL_USER], ids=["not an agent", "slack connect"])
def test_strangers_are_refused_over_the_socket_too(slack: RunningSlack, fake_slack: FakeSlack,
                                                   fake_socket_mode: FakeSocketMode, user: SlackUser) -> None:
    key = email_request(slack.store)
    ack = command(fake_socket_mode, fake_slack, f"claim {key}", user=user)
    assert ack.payload is not None and "did nothing" in ack.payload["text"]
    assert get_request_detail(slack.store, key).request.status == "new"


def test_a_claim_click_over_the_socket_claims_the_request(slack: RunningSlack, fake_slack: FakeSlack,
                                                          fake_socket_mode: FakeSocketMode) -> None:
    key = email_request(slack.store)
    ack = click(fake_socket_mode, fake_slack, button("claim", key))
    assert ack.payload is None
    deadline = time.monotonic() + 5
    while get_request_detail(slack.store, key).request.assignee is None and time.monotonic() < deadline:
        time.sleep(0.05)
    request = get_request_detail(slack.store, key).request
    assert (request.status, request.assignee) == ("assigned", ALICE.id)
    assert fake_slack.webhook_posts() == []  # nothing was refused


def test_a_modal_submission_is_answered_in_its_acknowledgment(slack: RunningSlack, fake_slack: FakeSlack,
                                                              fake_socket_mode: FakeSocketMode) -> None:
    key = email_request(slack.store)
    services.claim(slack.store, key, actor=ALICE.id)
    click(fake_socket_mode, fake_slack, button("resolve", key))
    (opened,) = fake_slack.wait_for_calls("views.open", timeout=5)
    meta = opened.args["view"]["private_metadata"]

    empty = fake_socket_mode.send(interactive(view_submission("resolve_modal", {"note": {"value": text_input(" ")}},
                                                              private_metadata=meta, user=ALICE)))
    errors = fake_socket_mode.wait_for_ack(empty).payload
    assert errors is not None and errors["response_action"] == "errors" and "note" in errors["errors"]
    done = fake_socket_mode.send(interactive(view_submission("resolve_modal", {"note": {"value": text_input("Refunded")}},
                                                             private_metadata=meta, user=ALICE)))
    fake_socket_mode.wait_for_ack(done)
    assert get_request_detail(slack.store, key).request.resolution_note == "Refunded"


def test_an_event_delivered_twice_is_handled_once(slack: RunningSlack, fake_slack: FakeSlack,
                                                  fake_socket_mode: FakeSocketMode) -> None:
    key = email_request(slack.store)
    slack.deliver()
    card_ts = fake_slack.calls("chat.postMessage")[0].response["ts"]
    payload = event_callback(message_event("Checked the ledger: it is a duplicate.", user=ALICE, thread_ts=card_ts),
                             event_id="Ev0SOCKET1")
    first = fake_socket_mode.send(events_api(payload))
    again = fake_socket_mode.send(events_api(payload, retry_attempt=1, retry_reason="timeout"))
    assert fake_socket_mode.wait_for_ack(first).payload is None
    assert fake_socket_mode.wait_for_ack(again).payload is None
    deadline = time.monotonic() + 5
    while not _notes(slack.store, key) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a second note, if there were one, would have landed by now
    assert _notes(slack.store, key) == ["Checked the ledger: it is a duplicate."]


def _notes(store: Store, key: str) -> list[str]:
    return [m.body_text for m in get_request_detail(store, key).messages if m.direction == "note"]


# --- serve --------------------------------------------------------------------------------------


def test_serve_runs_the_slack_app_in_socket_mode_and_stops_cleanly_on_sigterm(
    store: Store, database, fake_slack: FakeSlack, fake_socket_mode: FakeSocketMode,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    f.seed(store)
    smtp_port, http_port = free_port(), free_port()
    env = serve_env(database.url, smtp_port, tmp_path, SLACK_BOT_TOKEN=fake_slack.token,
                    SLACK_APP_TOKEN=fake_slack.app_token, SUPPORTDESK_SLACK_API_URL=fake_slack.base_url,
                    SUPPORTDESK_TRIAGE_CHANNEL=TRIAGE_CHANNEL.id, SUPPORTDESK_HTTP_LISTEN=f"127.0.0.1:{http_port}")
    env.pop("SLACK_SIGNING_SECRET", None)
    serve = ServeProcess(env, tmp_path, smtp_port, tmp_path / "serve.log")
    serve.start()
    try:
        wait_for_port(http_port)
        fake_socket_mode.wait_for_connections(1, timeout=30)
        ack = command(fake_socket_mode, fake_slack, "help")
        refused = post(f"http://127.0.0.1:{http_port}/slack/events",
                       signed_slash_command(slash_command("/sd", "help", user=ALICE)))
    finally:
        assert serve.terminate() == 0, serve.log()
    log = serve.log()
    assert ack.payload is not None and "/sd show SR-12" in ack.payload["text"]
    assert refused.status == 404
    assert "slack app: started (in Socket Mode" in log and "Slack: connected in Socket Mode" in log
    fake_socket_mode.wait_until_closed()
    for trouble in ("Traceback", "Task was destroyed", "Unclosed", "ERROR"):
        assert trouble not in log, log


def test_serve_refuses_to_start_when_slack_refuses_the_app_token(store: Store, database, fake_slack: FakeSlack,  # type: ignore[no-untyped-def]
                                                                  fake_socket_mode: FakeSocketMode,
                                                                  tmp_path: Path) -> None:
    env = serve_env(database.url, free_port(), tmp_path, SLACK_BOT_TOKEN=fake_slack.token,
                    SLACK_APP_TOKEN="xapp-1-A0OTHER-1-revoked", SUPPORTDESK_SLACK_API_URL=fake_slack.base_url,
                    SUPPORTDESK_TRIAGE_CHANNEL=TRIAGE_CHANNEL.id)
    done = subprocess.run([sys.executable, "-m", "cli.main", "serve"], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "supportdesk: Slack refused SLACK_APP_TOKEN (invalid_auth)" in done.stderr
    assert fake_socket_mode.connections == 0
