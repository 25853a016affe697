"""``supportdesk serve`` with Slack configured: mail in over SMTP becomes a card at the (fake) Slack. Both databases."""

from __future__ import annotations

import json
import smtplib
import urllib.request
from pathlib import Path

from core.store import Store
from tests import factories as f
from tests.intake.gateway import message
from tests.intake.serve_process import ServeProcess, free_port, serve_env, wait_for_port
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import DEFAULT_SIGNING_SECRET, TRIAGE_CHANNEL


def test_mail_becomes_a_card_in_the_triage_channel_with_its_text_in_the_thread(
    store: Store, database, fake_slack: FakeSlack, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    f.seed(store)
    smtp_port, http_port = free_port(), free_port()
    env = serve_env(database.url, smtp_port, tmp_path, SLACK_BOT_TOKEN=fake_slack.token,
                    SLACK_SIGNING_SECRET=DEFAULT_SIGNING_SECRET, SUPPORTDESK_SLACK_API_URL=fake_slack.base_url,
                    SUPPORTDESK_TRIAGE_CHANNEL=TRIAGE_CHANNEL.id, SUPPORTDESK_HTTP_LISTEN=f"127.0.0.1:{http_port}")
    serve = ServeProcess(env, tmp_path, smtp_port, tmp_path / "serve.log")
    serve.start()
    try:
        wait_for_port(http_port)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/health", timeout=5) as response:
            assert json.load(response)["status"] == "ok"
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.sendmail("jane@acme.test", ["support@localhost"],
                            message(subject="Invoice INV-100 charged twice <!channel>", body="Please refund me."))
        (card,) = fake_slack.wait_for_calls("chat.postMessage", 2, timeout=30)[:1]
        (mirror,) = [c for c in fake_slack.calls("chat.postMessage") if c.args.get("thread_ts")]
    finally:
        assert serve.terminate() == 0, serve.log()
    assert card.args["channel"] == TRIAGE_CHANNEL.id and "SR-1" in card.args["text"]
    assert "<!channel>" not in json.dumps(card.args)
    assert mirror.args["thread_ts"] == card.response["ts"] and "Please refund me." in json.dumps(mirror.args)
    assert "slack app: started (HTTP on" in serve.log()
