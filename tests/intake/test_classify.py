"""classify_machine_mail on every reason and on people's mail; parse_bounce on bounces of five MTAs.

The bounces in samples/ are written after the layouts Postfix, Exim, qmail,
Exchange Online and Gmail use, each returning one of our own messages.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from intake.classify import LOOP_HEADER, MACHINE_REASONS, Bounce, classify_machine_mail, parse_bounce
from intake.parsing import ParsedMail, parse_mail

SAMPLES = Path(__file__).parent / "samples"
TOKEN = "desk-7f3a"


def sample(name: str) -> bytes:
    """A sample with CRLF line ends, whatever a checkout did to them."""
    return (SAMPLES / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def person_mail(subject: str = "Where is my refund?", sender: str = "Carla <carla@example.com>",
                body: str = "Hello, my refund for order 17 has not arrived.\n", **headers: str) -> bytes:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = sender
    msg["To"] = "support@desk.example"
    msg["Subject"] = subject
    msg["Message-ID"] = "<person@example.com>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg.as_bytes()


def classify(raw: bytes, envelope_from: str | None = "carla@example.com", **kwargs: int) -> str | None:
    return classify_machine_mail(parse_mail(raw), envelope_from, loop_token=TOKEN, **kwargs)


def test_a_persons_mail_is_not_machine_mail() -> None:
    assert classify(person_mail()) is None
    assert classify(person_mail(), envelope_from=None) is None


def test_reasons_are_the_documented_ones() -> None:
    assert MACHINE_REASONS == ("loop", "bounce", "auto_reply", "list_mail", "null_sender", "mailer_daemon",
                               "too_many_hops")


# --- loop -------------------------------------------------------------------------


def test_our_own_loop_header_is_a_loop() -> None:
    assert classify(person_mail(**{LOOP_HEADER.replace("-", "_"): TOKEN})) == "loop"
    assert classify(person_mail(X_SUPPORTDESK_LOOP=f"  {TOKEN}  ")) == "loop"


def test_another_instances_loop_header_is_not_our_loop() -> None:
    assert classify(person_mail(X_Supportdesk_Loop="desk-other")) is None


def test_an_empty_loop_token_never_matches() -> None:
    raw = person_mail(X_Supportdesk_Loop="")
    assert classify_machine_mail(parse_mail(raw), "carla@example.com", loop_token="") is None


def test_loop_comes_before_every_other_reason() -> None:
    raw = person_mail(X_Supportdesk_Loop=TOKEN, Auto_Submitted="auto-replied", List_Id="<l.example.com>")
    assert classify(raw, envelope_from="") == "loop"


# --- bounces ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["postfix_dsn.eml", "exim_bounce.eml", "qmail_bounce.eml", "exchange_ndr.eml",
                                  "gmail_bounce.eml"])
def test_bounces_of_five_mtas(name: str) -> None:
    assert classify(sample(name), envelope_from="") == "bounce"
    assert classify(sample(name), envelope_from=None) == "bounce"


def test_a_bounce_of_our_own_mail_is_a_bounce_not_a_loop() -> None:
    raw = sample("postfix_dsn.eml")
    assert f"X-Supportdesk-Loop: {TOKEN}".encode() in raw  # inside the returned headers, not on top
    assert classify(raw, envelope_from="") == "bounce"


def test_delivery_status_report_is_a_bounce_from_any_sender() -> None:
    raw = sample("postfix_dsn.eml").replace(b"From: MAILER-DAEMON@mx.desk.example", b"From: relay@example.net")
    assert classify(raw, envelope_from="relay@example.net") == "bounce"


def test_bounce_phrases_count_only_from_null_senders_or_daemons() -> None:
    raw = person_mail(body="Your server said: This message was created automatically by mail delivery software.\n")
    assert classify(raw) is None
    assert classify(raw, envelope_from="") == "bounce"


@pytest.mark.parametrize(("subject", "body"), [
    ("Undeliverable Mail", "Delivery failed 10 attempts: info@example.net\n"),
    ("Re: Test message", "Error: Invalid user address\n\n550 - Requested action not taken: no such user here\n"),
])
def test_daemon_mail_saying_delivery_failed_is_a_bounce(subject: str, body: str) -> None:
    raw = person_mail(subject=subject, sender="Postmaster <post_master@mail.example.net>", body=body)
    assert classify(raw) == "bounce"


def test_daemon_mail_about_something_else_is_only_mailer_daemon() -> None:
    raw = person_mail(subject="Quota report", sender="postmaster@example.com", body="You use 40% of your quota.\n")
    assert classify(raw) == "mailer_daemon"


def test_imail_bounce_names_the_failed_recipient() -> None:
    raw = person_mail(subject="Undeliverable Mail", sender="postmaster@example.org",
                      body="Unknown user: Kijitora@example.com\n\n\nOriginal message follows.\n\n"
                           "Message-ID: <sr-3.ack.1@desk.example>\nSubject: [SR-3] received\n")
    assert parse_bounce(parse_mail(raw), raw) == Bounce(("kijitora@example.com",), ("<sr-3.ack.1@desk.example>",),
                                                        True)


# --- auto-replies -------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"Auto_Submitted": "auto-replied"},
    {"Auto_Submitted": "auto-generated; owner-email=x@example.com"},
    {"X_Autoreply": "yes"},
    {"X_Autorespond": "Out of office"},
    {"X_Autogenerated": "Reply"},
    {"X_FC_Machinegenerated": "true"},
    {"Precedence": "auto_reply"},
    {"X_Auto_Response_Suppress": "All"},
    {"X_Auto_Response_Suppress": "DR, RN, NRN"},
    {"X_Auto_Response_Suppress": "OOF"},
    {"X_Auto_Response_Suppress": "AutoReply"},
])
def test_auto_reply_headers(headers: dict[str, str]) -> None:
    assert classify(person_mail(**headers)) == "auto_reply"


@pytest.mark.parametrize("headers", [
    {"Auto_Submitted": "no"},
    {"X_Autoreply": "no"},
    {"X_Auto_Response_Suppress": "None"},
])
def test_headers_that_say_no(headers: dict[str, str]) -> None:
    assert classify(person_mail(**headers)) is None


@pytest.mark.parametrize("subject", [
    "Automatic reply: Where is my refund?", "Auto-Reply: Your message", "Out of Office: back on Monday",
    "OUT OF OFFICE", "Abwesenheitsnotiz: Ihre Nachricht", "Réponse automatique : Votre message",
])
def test_auto_reply_subjects(subject: str) -> None:
    assert classify(person_mail(subject=subject)) == "auto_reply"


@pytest.mark.parametrize("subject", ["Re: Automatic reply: loop?", "My office is out of paper", "Auto parts order"])
def test_subjects_that_only_mention_auto_replies(subject: str) -> None:
    assert classify(person_mail(subject=subject)) is None


def test_read_receipt_is_an_auto_reply() -> None:
    raw = b"""From: Carla <carla@example.com>\r
To: support@desk.example\r
Subject: Read: [SR-42] Refund\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=disposition-notification;\r
\tboundary="mdn"\r
\r
--mdn\r
Content-Type: text/plain\r
\r
Your message was displayed on Mon, 5 Jan 2026.\r
--mdn\r
Content-Type: message/disposition-notification\r
\r
Reporting-UA: mail.example.com; Example Mail\r
Final-Recipient: rfc822; carla@example.com\r
Original-Message-ID: <sr-42.reply.1@desk.example>\r
Disposition: manual-action/MDN-sent-manually; displayed\r
--mdn--\r
"""
    assert classify(raw) == "auto_reply"


# --- list mail, null sender, daemons, hops ---------------------------------------------


@pytest.mark.parametrize("headers", [
    {"List_Id": "Customers <customers.lists.example.com>"},
    {"List_Unsubscribe": "<mailto:unsubscribe@lists.example.com>"},
    {"List_Post": "<mailto:customers@lists.example.com>"},
    {"X_BeenThere": "customers@lists.example.com"},
    {"X_Mailman_Version": "2.1.39"},
    {"Precedence": "bulk"},
    {"Precedence": "list"},
    {"Precedence": "junk"},
])
def test_list_mail(headers: dict[str, str]) -> None:
    assert classify(person_mail(**headers)) == "list_mail"


@pytest.mark.parametrize("envelope_from", ["", "<>", " "])
def test_null_sender(envelope_from: str) -> None:
    assert classify(person_mail(), envelope_from=envelope_from) == "null_sender"


@pytest.mark.parametrize("sender", ["MAILER-DAEMON@mx.example.com", "Mail System <Postmaster@example.com>"])
def test_mailer_daemon_and_postmaster(sender: str) -> None:
    assert classify(person_mail(sender=sender, body="Something happened.\n")) == "mailer_daemon"


def test_postmaster_as_sender_header() -> None:
    raw = person_mail(Sender="postmaster@example.com")
    assert classify(raw) == "mailer_daemon"


@pytest.mark.parametrize("sender", ["noreply@shop.example", "no-reply@shop.example", "donotreply@shop.example"])
def test_noreply_senders_are_not_machine_mail_by_themselves(sender: str) -> None:
    assert classify(person_mail(sender=sender)) is None


def with_received(count: int) -> bytes:
    hops = "".join(f"Received: from relay{i}.example.net by relay{i + 1}.example.net; Mon, 5 Jan 2026\r\n"
                   for i in range(count))
    return hops.encode() + person_mail()


def test_too_many_hops() -> None:
    assert classify(with_received(51)) == "too_many_hops"
    assert classify(with_received(50)) is None
    assert classify(with_received(11), max_received=10) == "too_many_hops"


# --- parse_bounce -----------------------------------------------------------------------


@pytest.mark.parametrize(("name", "failed", "original"), [
    ("postfix_dsn.eml", "customer.gone@example.net", "<sr-42.ack.1@desk.example>"),
    ("exim_bounce.eml", "nobody@example.org", "<sr-77.reply.3@desk.example>"),
    ("qmail_bounce.eml", "old.customer@example.com", "<sr-9.ack.1@desk.example>"),
    ("exchange_ndr.eml", "jane.doe@contoso.com", "<sr-101.reply.2@desk.example>"),
    ("gmail_bounce.eml", "lost.customer@gmail.com", "<sr-5.ack.1@desk.example>"),
])
def test_parse_bounce_finds_the_failed_recipient_and_our_message(name: str, failed: str, original: str) -> None:
    raw = sample(name)
    assert parse_bounce(parse_mail(raw), raw) == Bounce((failed,), (original,), True)


def test_dsn_prefers_the_original_recipient_we_sent_to() -> None:
    raw = sample("postfix_dsn.eml").replace(b"Original-Recipient: rfc822;Customer.Gone@example.net",
                                            b"Original-Recipient: rfc822;carla.alias@example.net")
    bounce = parse_bounce(parse_mail(raw), raw)
    assert bounce is not None and bounce.failed_recipients == ("carla.alias@example.net",)


def test_delayed_dsn_is_not_permanent() -> None:
    raw = sample("postfix_dsn.eml").replace(b"Action: failed\r\nStatus: 5.1.1", b"Action: delayed\r\nStatus: 4.4.1")
    assert parse_bounce(parse_mail(raw), raw) == Bounce((), ("<sr-42.ack.1@desk.example>",), False)


def test_exim_delay_warning_is_not_permanent() -> None:
    raw = sample("exim_bounce.eml").replace(
        b"A message that you sent could not be delivered to one or more of its\r\n"
        b"recipients. This is a permanent error. The following address(es) failed:",
        b"A message that you sent has not yet been delivered to one or more of its\r\n"
        b"recipients after more than 24 hours on the queue. Delivery will be retried:",
    ).replace(b"550 5.1.1", b"451 4.4.1").replace(b"X-Failed-Recipients: nobody@example.org\r\n", b"")
    assert parse_bounce(parse_mail(raw), raw) == Bounce((), ("<sr-77.reply.3@desk.example>",), False)


def test_addresses_mentioned_in_the_explanation_are_not_failed_recipients() -> None:
    raw = sample("exim_bounce.eml")
    assert b"abuse@example.org" in raw
    bounce = parse_bounce(parse_mail(raw), raw)
    assert bounce is not None and bounce.failed_recipients == ("nobody@example.org",)


def test_a_persons_mail_is_no_bounce() -> None:
    raw = person_mail(body="Hi,\nplease write to accounting@example.com.\nMessage-ID: is what?\n")
    assert parse_bounce(parse_mail(raw), raw) is None


def test_parse_bounce_survives_raw_it_cannot_read() -> None:
    mail: ParsedMail = parse_mail(sample("qmail_bounce.eml"))
    assert parse_bounce(mail, b"\x00\xff garbage") == Bounce(
        ("old.customer@example.com",), ("<sr-9.ack.1@desk.example>",), True)
