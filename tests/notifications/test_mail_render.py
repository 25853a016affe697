"""Building the message: headers, automatic-mail markers, threading, and header injection. No database."""

from __future__ import annotations

import re
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from typing import cast

import pytest

from core.settings import Settings
from notifications.mail_render import (
    LOOP_HEADER,
    MAX_REFERENCES,
    RenderError,
    build_message,
    capped_references,
    check_headers,
    envelope_problem,
    header_text,
    message_id,
)
from tests.notifications import DOMAIN, SUPPORT, TOKEN, sample_email

SETTINGS = Settings(support_addresses=(SUPPORT,))
BASE_HEADERS = ["from", "to", "reply-to", "subject", "date", "message-id", "in-reply-to", "references",
                "content-type", "content-transfer-encoding", "mime-version"]
AUTOMATIC_HEADERS = ["auto-submitted", "x-auto-response-suppress", "precedence", LOOP_HEADER.lower()]
INJECTION = "\r\nBcc: evil@x.test\x00\n\rX-Evil: 1\x0b\x1b\u2028\x85"


def parsed(topic: str, **overrides: object) -> tuple[bytes, EmailMessage]:
    raw = build_message(sample_email(topic, **overrides), SETTINGS).as_bytes()
    return raw, cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(raw))


def sender(msg: EmailMessage) -> Address:
    return msg["From"].addresses[0]


def content(msg: EmailMessage) -> str:
    """The text part as the reader sees it (on the wire its lines end in CRLF)."""
    return str(msg.get_content()).replace("\r\n", "\n")


def header_names(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return [line.split(":", 1)[0].lower() for line in head.split("\r\n") if not line[:1].isspace()]


def test_acknowledgment_headers() -> None:
    raw, msg = parsed("acknowledgment")

    assert msg["From"] == f"Support <{SUPPORT}>"
    assert msg["To"] == "jane@acme.test"
    assert msg["Reply-To"] == f"help+{TOKEN}@{DOMAIN}"
    assert msg["Subject"] == "Re: Charged twice [SR-12]"
    assert msg["Date"] == "Mon, 05 Jan 2026 09:00:00 +0000"
    assert msg["Message-ID"] == f"<outbox-7.{TOKEN}@{DOMAIN}>"
    assert msg["In-Reply-To"] == "<m1@acme.test>"
    assert msg["References"] == "<m1@acme.test>"
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["Precedence"] == "auto_reply"
    assert msg[LOOP_HEADER] == DOMAIN
    assert header_names(raw) == BASE_HEADERS[:8] + AUTOMATIC_HEADERS + BASE_HEADERS[8:]
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_resolution_notice_is_auto_generated() -> None:
    _raw, msg = parsed("resolution_notice")

    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg[LOOP_HEADER] == DOMAIN
    assert "\n\nRefunded EUR 20.00.\n\n" in content(msg)


def test_a_reply_is_not_marked_automatic_and_names_its_author() -> None:
    raw, msg = parsed("reply")

    assert header_names(raw) == BASE_HEADERS
    assert msg["Auto-Submitted"] is None and msg[LOOP_HEADER] is None and msg["Precedence"] is None
    assert (sender(msg).display_name, sender(msg).addr_spec) == ("Alice Agent (Support)", SUPPORT)
    assert msg["Message-ID"] == f"<3f2a.{TOKEN}@{DOMAIN}>"
    assert content(msg).startswith("We have refunded the second charge.\n")


def test_the_subject_is_the_views_subject_once_tagged() -> None:
    _raw, msg = parsed("acknowledgment", subject="Re: Charged twice [SR-12]")

    assert msg["Subject"].count("[SR-12]") == 1


def test_non_ascii_text_survives_a_relay_without_8bitmime() -> None:
    raw, msg = parsed("reply", body_text="Grüße, 20 € zurück.", author_name="Zoë Agent",
                      request_subject="Überweisung", subject="Re: Überweisung [SR-12]")

    assert raw.isascii()
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert content(msg).startswith("Grüße, 20 € zurück.\n")
    assert msg["Subject"] == "Re: Überweisung [SR-12]"
    assert sender(msg).display_name == "Zoë Agent (Support)"


def test_references_are_capped_to_the_root_and_the_latest_nine() -> None:
    ids = [f"<r{n}@acme.test>" for n in range(30)]

    _raw, msg = parsed("reply", references=tuple(ids))

    kept = msg["References"].split()
    assert len(kept) == MAX_REFERENCES
    assert kept == [ids[0], *ids[-9:]]
    assert capped_references(["<a@x>", "<a@x>", "junk", "<b@x>"]) == ["<a@x>", "<b@x>"]


def test_a_long_message_id_is_kept_verbatim_not_encoded() -> None:
    long_id = "<" + "c" * 150 + "@customer.example.com>"

    raw, msg = parsed("acknowledgment", in_reply_to=long_id, references=("<m1@acme.test>", long_id))

    assert msg["In-Reply-To"] == long_id
    assert msg["References"].split() == ["<m1@acme.test>", long_id]
    assert b"=?" not in raw


# --- header injection --------------------------------------------------------------------------


def test_cr_lf_nul_and_controls_in_every_free_text_field_stay_on_their_line() -> None:
    raw, msg = parsed(
        "reply",
        subject="Re: Refund" + INJECTION + " [SR-12]",
        request_subject="Refund" + INJECTION,
        request_key="SR-12" + INJECTION,
        customer_name="Evil" + INJECTION,
        author_name="Alice" + INJECTION,
        in_reply_to="<m1@acme.test>" + INJECTION,
        references=("<r1@acme.test>" + INJECTION, "<r2@acme.test>"),
        body_text="Body" + INJECTION,
    )

    assert header_names(raw) == [h for h in BASE_HEADERS if h != "in-reply-to"]  # what is left is not an id
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert msg["Subject"] == "Re: Refund Bcc: evil@x.test X-Evil: 1 [SR-12]"
    assert sender(msg).display_name == "Alice Bcc: evil@x.test X-Evil: 1 (Support)"
    assert msg["References"] == "<r2@acme.test>"
    # The body may have line breaks, but no NUL or escape characters.
    assert content(msg).startswith("Body\nBcc: evil@x.test\n\nX-Evil: 1\u2028\n\n-- \n")
    assert re.search(rb"[\x00\x0b\x1b]", raw) is None


def test_control_characters_never_reach_the_wire_even_in_an_ascii_body() -> None:
    raw, msg = parsed("reply", body_text="a\x00b\x1b[31mc\rd\r\ne\tf")

    assert msg["Content-Transfer-Encoding"] == "7bit"
    assert content(msg).startswith("ab[31mc\nd\ne\tf\n")
    assert re.search(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", raw) is None


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("to_addresses", ("jane@acme.test" + INJECTION,), "invalid recipient"),
        ("to_addresses", (), "no recipient"),
        ("message_id", f"<outbox-7.{TOKEN}@{DOMAIN}>" + INJECTION, "not a usable Message-ID"),
        ("reply_token", TOKEN + INJECTION, "not a reply token"),
    ],
)
def test_values_that_must_be_exact_are_refused_not_cleaned(field: str, value: object, error: str) -> None:
    with pytest.raises(RenderError, match=error):
        build_message(sample_email("acknowledgment", **{field: value}), SETTINGS)


def test_the_final_check_catches_a_header_that_broke_out() -> None:
    message = build_message(sample_email("reply"), SETTINGS)
    message.set_raw("X-Note", "fine\nBcc: evil@x.test")  # what a missing guard would let through

    with pytest.raises(RenderError, match="headers came out as"):
        check_headers(message)


def test_header_text_and_message_id() -> None:
    assert header_text(" a\r\n b\x00c\td\u2029e  ") == "a b c d e"
    assert message_id(" <a@b>\r\n") == "<a@b>"
    assert message_id("<a@b> <c@d>") is None
    assert message_id("a@b") is None
    assert message_id(None) is None


@pytest.mark.parametrize(
    ("address", "ok"),
    [
        ("jane@acme.test", True),
        ("jane.doe+tag@sub.acme.test", True),
        ("", False),
        ("jane @acme.test", False),
        ("jane@acme.test\r\nRCPT TO:<evil@x.test>", False),
        ("jane\x7f@acme.test", False),
        ("jane\x00@acme.test", False),
        ("jane@acme@test", False),
        ("@acme.test", False),
        ("jane@", False),
        ("<jane@acme.test>", False),
        ("jane,evil@acme.test", False),
        ("jäne@acme.test", False),
        ("j" * 250 + "@acme.test", False),
    ],
)
def test_envelope_addresses(address: str, ok: bool) -> None:
    assert (envelope_problem(address) is None) is ok
