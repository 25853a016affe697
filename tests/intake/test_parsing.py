"""parse_mail and salvage on mail built here: charsets, bodies, attachments, ids, hostile input.

Mail is built with email.policy.SMTP (CRLF line ends, as it arrives over SMTP)
or written byte by byte where a generator would refuse or repair what real
mailers send.
"""

from __future__ import annotations

import base64
import random
from datetime import datetime, timezone
from email import message_from_bytes, policy
from email.message import EmailMessage

import mailparser
import pytest

from intake.parsing import (
    MAX_TEXT_CHARS, SALVAGED, ParsedAttachment, ParsedMail, ParseError, decode_header_value, html_to_text,
    normalise_message_id, normalise_message_ids, parse_mail, salvage,
)


def message(subject: str = "Help with my order", **headers: str) -> EmailMessage:
    msg = EmailMessage(policy=policy.SMTP)
    msg["From"] = "Carla Customer <Carla@Example.COM>"
    msg["To"] = "support@desk.example"
    msg["Subject"] = subject
    msg["Message-ID"] = "<m1@example.com>"
    msg["Date"] = "Mon, 05 Jan 2026 10:00:00 +0100"
    for name, value in headers.items():
        del msg[name.replace("_", "-")]
        msg[name.replace("_", "-")] = value
    return msg


def raw_mail(headers: str, body: bytes) -> bytes:
    """A message written byte by byte: headers as given (LF or CRLF), CRLF line ends throughout."""
    head = headers.strip("\n").replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
    return head + b"\r\n\r\n" + body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def text_mail(charset: str | None, body: bytes, encoding: str = "7bit") -> bytes:
    content_type = f"text/plain; charset={charset}" if charset else "text/plain"
    return raw_mail(f"""From: a@example.com
To: support@desk.example
Subject: charset test
MIME-Version: 1.0
Content-Type: {content_type}
Content-Transfer-Encoding: {encoding}""", body)


# --- charsets -----------------------------------------------------------------


def test_utf8_8bit_body() -> None:
    msg = message()
    msg.set_content("Grüße, der Betrag von 12 € fehlt\n", cte="8bit")
    assert b"Gr\xc3\xbc\xc3\x9fe" in msg.as_bytes()
    assert parse_mail(msg.as_bytes()).text == "Grüße, der Betrag von 12 € fehlt\n"


def test_iso_8859_1_quoted_printable_body() -> None:
    msg = message()
    msg.set_content("Grüße aus Köln\n", charset="iso-8859-1", cte="quoted-printable")
    assert b"Gr=FC=DFe" in msg.as_bytes()
    assert parse_mail(msg.as_bytes()).text == "Grüße aus Köln\n"


def test_iso_2022_jp_7bit_body_is_decoded() -> None:
    body = "請求書について質問があります。".encode("iso-2022-jp")
    assert body.startswith(b"\x1b$B")
    assert parse_mail(text_mail("ISO-2022-JP", body + b"\n")).text == "請求書について質問があります。\n"


def test_utf7_7bit_body_is_decoded() -> None:
    body = "Grüße €".encode("utf-7")
    assert parse_mail(text_mail("UTF-7", body + b"\n")).text == "Grüße €\n"


def test_mail_parser_still_leaves_7bit_iso_2022_jp_and_utf7_undecoded() -> None:
    """Why bodies come from the stdlib tree: mail-parser 4.8 returns these as sent.

    When this fails, mail-parser decodes them itself and the workaround in
    intake.parsing could be reconsidered.
    """
    japanese = mailparser.parse_from_bytes(text_mail("ISO-2022-JP", "請求書".encode("iso-2022-jp")))
    utf7 = mailparser.parse_from_bytes(text_mail("UTF-7", "Grüße".encode("utf-7")))
    assert japanese.text_plain[0].startswith("\x1b$B")
    assert utf7.text_plain[0].startswith("Gr+")


def test_windows_1252_body() -> None:
    body = "Preis: 12 € – „netto“".encode("cp1252")
    assert parse_mail(text_mail("windows-1252", body, "8bit")).text == "Preis: 12 € – „netto“"


def test_latin1_declared_with_windows_1252_quotes() -> None:
    body = "“quoted” – 5 €".encode("cp1252")
    assert parse_mail(text_mail("iso-8859-1", body, "8bit")).text == "“quoted” – 5 €"


def test_koi8_r_body() -> None:
    body = "Здравствуйте, счёт не пришёл".encode("koi8-r")
    assert parse_mail(text_mail("koi8-r", body, "8bit")).text == "Здравствуйте, счёт не пришёл"


@pytest.mark.parametrize(("charset", "body", "expected"), [
    ("x-bogus-42", "héllo wörld".encode("utf-8"), "héllo wörld"),
    ("x-bogus-42", "héllo".encode("cp1252"), "héllo"),
    ("ansi_x3.110-1983", b"caf\xe9", "café"),      # a real qmail DSN declares this
    ("unicode_escape", b"\\u0041\\x00", "\\u0041\\x00"),  # a Python codec, not a mail charset
    ("us-ascii", "naïve".encode("utf-8"), "naïve"),  # declared ASCII, sent UTF-8
])
def test_unknown_refused_or_wrong_charset_falls_back(charset: str, body: bytes, expected: str) -> None:
    assert parse_mail(text_mail(charset, body, "8bit")).text == expected


def test_missing_charset_tries_utf8_then_latin1() -> None:
    assert parse_mail(text_mail(None, "Ärger über Rechnung".encode("utf-8"), "8bit")).text == "Ärger über Rechnung"
    assert parse_mail(text_mail(None, "Ärger".encode("latin-1"), "8bit")).text == "Ärger"


def test_invalid_bytes_in_a_known_charset_become_replacement_characters() -> None:
    parsed = parse_mail(text_mail("shift_jis", "請求".encode("shift_jis") + b"\x81\n", "8bit"))
    assert parsed.text.startswith("請求")
    assert "\ufffd" in parsed.text


def test_nul_bytes_are_removed_and_line_ends_normalised() -> None:
    parsed = parse_mail(text_mail("utf-8", b"one\x00two\r\nthree\rfour\n", "8bit"))
    assert parsed.text == "onetwo\nthree\nfour\n"


# --- HTML and multipart bodies --------------------------------------------------


def test_html_only_mail_becomes_text_without_script_or_style() -> None:
    msg = message()
    html = ("<html><head><style>p {color: red}</style><script>track()</script></head>"
            "<body><p>Hello <b>support</b>,</p><ul><li>order 17</li></ul><script>evil()</script></body></html>")
    msg.set_content(html, subtype="html")
    parsed = parse_mail(msg.as_bytes())
    assert "Hello support," in parsed.text
    assert "order 17" in parsed.text
    assert "track" not in parsed.text and "evil" not in parsed.text and "color" not in parsed.text
    assert parsed.html is not None and "<script>evil()</script>" in parsed.html


def test_html_that_lxml_refuses_is_still_turned_into_text(monkeypatch: pytest.MonkeyPatch) -> None:
    html = '<?xml version="1.0" encoding="utf-8"?><?xml version="1.0" encoding="utf-8"?><p>Refund</p>' \
           "<script>alert(1)</script><STYLE>p {}</STYLE><p>please"
    assert "Refund" in html_to_text(html) and "alert" not in html_to_text(html)

    def refuse(_: str) -> str:
        raise ValueError("Unicode strings with encoding declaration are not supported")
    monkeypatch.setattr("intake.parsing.get_text", refuse)
    text = html_to_text(html)
    assert "Refund" in text and "please" in text
    assert "alert" not in text and "p {}" not in text and "<" not in text


def test_multipart_alternative_prefers_text_plain() -> None:
    msg = message()
    msg.set_content("Plain words\n")
    msg.add_alternative("<p>HTML words</p>", subtype="html")
    parsed = parse_mail(msg.as_bytes())
    assert parsed.text == "Plain words\n"
    assert parsed.html is not None and "HTML words" in parsed.html
    assert parsed.content_type == "multipart/alternative"
    assert parsed.attachments == ()


def test_blank_text_plain_alternative_falls_back_to_html() -> None:
    msg = message()
    msg.set_content("\n \n")
    msg.add_alternative("<p>Only the HTML part says something</p>", subtype="html")
    assert "Only the HTML part says something" in parse_mail(msg.as_bytes()).text


def test_related_inline_image_is_kept_decoded_and_flagged() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    msg = message()
    msg.set_content("See the screenshot\n")
    msg.add_alternative('<p>See <img src="cid:shot1@example.com"></p>', subtype="html")
    msg.get_payload()[1].add_related(png, maintype="image", subtype="png", cid="<shot1@example.com>")
    parsed = parse_mail(msg.as_bytes())
    (image,) = parsed.attachments
    assert image.content == png
    assert image.content_id == "shot1@example.com"
    assert image.is_inline
    assert image.filename == "shot1@example.com"  # no name given: the Content-ID stands in
    assert image.content_type == "image/png"
    assert parsed.text == "See the screenshot\n"


def test_pdf_sent_inline_is_not_flagged_as_an_inline_image() -> None:
    msg = message()
    msg.set_content("Invoice attached\n")
    msg.add_attachment(b"%PDF-1.7 invoice", maintype="application", subtype="pdf", filename="invoice.pdf",
                       disposition="inline")
    (pdf,) = parse_mail(msg.as_bytes()).attachments
    assert (pdf.filename, pdf.is_inline) == ("invoice.pdf", False)


def test_base64_attachment_is_decoded_to_the_exact_bytes() -> None:
    payload = bytes(range(256)) * 40 + b"\x00\xff"
    msg = message()
    msg.set_content("Log attached\n")
    msg.add_attachment(payload, maintype="application", subtype="octet-stream", filename="server.log.gz")
    raw = msg.as_bytes()
    assert base64.b64encode(payload[:30]) in raw.replace(b"\r\n", b"")
    (attachment,) = parse_mail(raw).attachments
    assert attachment == ParsedAttachment("server.log.gz", "application/octet-stream", payload, None, False)


@pytest.mark.parametrize(("disposition", "expected"), [
    ('attachment; filename="C:\\Users\\carla\\Desktop\\report.pdf"', "report.pdf"),
    ('attachment; filename="../../etc/passwd"', "passwd"),
    ("attachment; filename*=utf-8''..%2F..%2Fevil%0D%0ABcc%3A%20x%00.txt", "evilBcc: x.txt"),
    ('attachment; filename="=?utf-8?q?r=C3=A9sum=C3=A9.pdf?="', "résumé.pdf"),
    ('attachment; filename=".."', "attachment-1.pdf"),
    ("attachment", "attachment-1.pdf"),
])
def test_attachment_filenames_are_safe_and_never_empty(disposition: str, expected: str) -> None:
    raw = raw_mail("""From: a@example.com
Subject: files
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=XX""", f"""--XX
Content-Type: text/plain

see attached
--XX
Content-Type: application/pdf
Content-Disposition: {disposition}
Content-Transfer-Encoding: base64

JVBERi0xLjcK
--XX--
""".encode())
    (attachment,) = parse_mail(raw).attachments
    assert attachment.filename == expected
    assert attachment.content == b"%PDF-1.7\n"


def test_unnamed_parts_get_the_same_names_on_every_parse() -> None:
    msg = message()
    msg.set_content("two files\n")
    msg.add_attachment(b"a,b\n", maintype="text", subtype="csv", disposition="attachment")
    msg.add_attachment(b"BEGIN:VCALENDAR", maintype="text", subtype="calendar")
    raw = msg.as_bytes()
    first, second = parse_mail(raw), parse_mail(raw)
    assert first == second
    assert [a.filename for a in first.attachments] == ["attachment-1.csv", "attachment-2.ics"]


def test_forwarded_message_becomes_an_eml_attachment_named_after_its_subject() -> None:
    inner = message("Re: Refund 2/3 for order 17", Message_ID="<inner@shop.example>")
    inner.set_content("The refund was sent on Friday.\n")
    outer = message("Fwd: Re: Refund")
    outer.set_content("Forwarding what the shop told me.\n")
    outer.add_attachment(inner)
    parsed = parse_mail(outer.as_bytes())
    assert parsed.text == "Forwarding what the shop told me.\n"
    (forwarded,) = parsed.attachments
    assert forwarded.filename == "Re: Refund 2_3 for order 17.eml"
    assert forwarded.content_type == "message/rfc822"
    assert forwarded.is_inline is False
    reparsed = message_from_bytes(forwarded.content)
    assert reparsed["Message-ID"] == "<inner@shop.example>"
    assert reparsed.get_payload().strip() == "The refund was sent on Friday."


def test_mail_parser_alone_would_merge_a_forwarded_message_into_the_body() -> None:
    inner = message("inner")
    inner.set_content("inner words\n")
    outer = message("Fwd: inner")
    outer.set_content("outer words\n")
    outer.add_attachment(inner, disposition="inline")
    assert any("inner words" in text for text in mailparser.parse_from_bytes(outer.as_bytes()).text_plain)
    assert "inner words" not in parse_mail(outer.as_bytes()).text


def test_forwarded_message_wrongly_base64_encoded_is_decoded() -> None:
    inner = (b"From: shop@example.com\r\nSubject: Order 17 shipped\r\nMessage-ID: <ship@shop.example>\r\n"
             b"\r\nShipped.\r\n")
    raw = raw_mail("""From: a@example.com
Subject: Fwd: Order 17 shipped
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary=ZZ""", b"""--ZZ
Content-Type: text/plain

see below
--ZZ
Content-Type: message/rfc822
Content-Transfer-Encoding: base64

""" + base64.encodebytes(inner) + b"--ZZ--\n")
    (forwarded,) = parse_mail(raw).attachments
    assert forwarded.filename == "Order 17 shipped.eml"
    assert forwarded.content.replace(b"\r\n", b"\n") == inner.replace(b"\r\n", b"\n")


def test_mixed_text_parts_around_an_image_are_joined() -> None:
    msg = message()
    msg.set_content("Before the photo\n")
    msg.add_attachment(b"\xff\xd8\xff\xe0jpeg", maintype="image", subtype="jpeg", disposition="inline")
    msg.add_attachment("After the photo\n", disposition="inline")
    msg.get_payload()[2].del_param("filename", header="Content-Disposition")
    msg.get_payload()[2].replace_header("Content-Disposition", "inline")
    parsed = parse_mail(msg.as_bytes())
    assert parsed.text == "Before the photo\n\nAfter the photo\n"
    (photo,) = parsed.attachments
    assert photo.filename == "attachment-1.jpg" and photo.is_inline


def test_multipart_without_boundary_still_shows_its_body() -> None:
    raw = raw_mail("""From: a@example.com
Subject: broken
MIME-Version: 1.0
Content-Type: multipart/mixed""", b"I still want to be read\n")
    parsed = parse_mail(raw)
    assert "I still want to be read" in parsed.text
    assert "NoBoundaryInMultipartDefect" in parsed.defects


def test_text_longer_than_the_cap_is_cut() -> None:
    body = ("x" * 99 + "\n").encode() * (MAX_TEXT_CHARS // 100 + 500)
    parsed = parse_mail(text_mail("utf-8", body, "8bit"))
    assert len(parsed.text) == MAX_TEXT_CHARS
    assert parsed.reply_text == parsed.text


# --- headers --------------------------------------------------------------------


def test_addresses_subject_date_and_ids() -> None:
    msg = message("Re: [SR-42] Refund", In_Reply_To="<ack-42@desk.example>",
                  References="<root@example.com> <ack-42@desk.example>",
                  Cc="Bob <BOB@example.org>, carla@example.com", Reply_To="Billing <billing@Example.com>")
    msg.set_content("Thanks\n")
    parsed = parse_mail(msg.as_bytes())
    assert parsed.from_address == "carla@example.com"
    assert parsed.from_name == "Carla Customer"
    assert parsed.to == ("support@desk.example",)
    assert parsed.cc == ("bob@example.org", "carla@example.com")
    assert parsed.reply_to == ("billing@example.com",)
    assert parsed.subject == "Re: [SR-42] Refund"
    assert parsed.message_id == "<m1@example.com>"
    assert parsed.in_reply_to == ("<ack-42@desk.example>",)
    assert parsed.references == ("<root@example.com>", "<ack-42@desk.example>")
    assert parsed.date == datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
    assert parsed.date.tzinfo == timezone.utc


def test_encoded_from_name_and_sender_fallback() -> None:
    raw = raw_mail("""From: undisclosed-recipients:;
Sender: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <Juergen@Example.DE>
Subject: x""", b"body\n")
    parsed = parse_mail(raw)
    assert (parsed.from_address, parsed.from_name) == ("juergen@example.de", "Jürgen Müller")


def test_unusable_from_gives_none() -> None:
    parsed = parse_mail(raw_mail("From: just a name\nSubject: x", b"body\n"))
    assert (parsed.from_address, parsed.from_name) == (None, "")


def test_encoded_word_with_crlf_collapses_to_one_line() -> None:
    raw = raw_mail("""From: a@example.com
Subject: =?utf-8?q?hi=0D=0ABcc=3A_evil=40x.com?=
X-Note: =?utf-8?q?line1=0D=0Aline2=00?=""", b"body\n")
    parsed = parse_mail(raw)
    assert parsed.subject == "hi Bcc: evil@x.com"
    assert parsed.header("x-note") == "line1 line2"
    assert all("\r" not in v and "\n" not in v and "\x00" not in v for _, v in parsed.headers)


def test_subject_folding_whitespace_and_split_multibyte_words() -> None:
    euro = "€".encode("utf-8")
    first = base64.b64encode(b"Price " + euro[:1]).decode()
    second = base64.b64encode(euro[1:] + b" 12").decode()
    raw = raw_mail(f"""From: a@example.com
Subject: =?utf-8?b?{first}?=
 =?utf-8?b?{second}?=  and\t\tmore
   words""", b"body\n")
    assert parse_mail(raw).subject == "Price € 12 and more words"


def test_raw_8bit_utf8_headers_are_decoded() -> None:
    raw = "From: Zoë <zoe@example.com>\r\nSubject: Rückerstattung für Bestellung\r\n\r\nbody\r\n".encode("utf-8")
    parsed = parse_mail(raw)
    assert parsed.subject == "Rückerstattung für Bestellung"
    assert parsed.from_name == "Zoë"


def test_invalid_encoded_word_stays_as_written() -> None:
    assert decode_header_value("=?utf-8?b?###?= ok") == "=?utf-8?b?###?= ok"
    assert decode_header_value("=?x-nope?q?caf=E9?=") == "café"


def test_headers_keep_order_and_names_and_are_looked_up_case_insensitively() -> None:
    raw = raw_mail("""Received: from a by b
Received: from c by d
From: a@example.com
X-Custom-Header: first
x-custom-header: second
Subject: ordered""", b"body\n")
    parsed = parse_mail(raw)
    assert [name for name, _ in parsed.headers] == [
        "Received", "Received", "From", "X-Custom-Header", "x-custom-header", "Subject"]
    assert parsed.header("X-CUSTOM-HEADER") == "first"
    assert parsed.header_all("x-custom-header") == ("first", "second")
    assert parsed.header("Missing") is None
    assert parsed.header_all("Missing") == ()


@pytest.mark.parametrize(("value", "expected"), [
    ("<a\r\n b@x>", "<ab@x>"),
    ("  <abc@example.com>  ", "<abc@example.com>"),
    ("<abc@example.com", "<abc@example.com>"),
    ("abc@example.com", "<abc@example.com>"),
    ("<first@x> <second@x>", "<first@x>"),
    ("(comment) <id@x>", "<id@x>"),
    ("", None),
    ("   ", None),
    ("hello world", None),
    ("<>", None),
    ("<no-at-sign>", None),
    ("<a@b\x00c>", None),
])
def test_message_id_normalisation(value: str, expected: str | None) -> None:
    assert normalise_message_id(value) == expected


def test_folded_missing_and_garbage_message_ids_in_a_message() -> None:
    folded = raw_mail("From: a@example.com\nMessage-ID: <long-id-part-one\n part-two@mail.example.com>", b"x\n")
    unclosed = raw_mail("From: a@example.com\nMessage-ID: <abc@example.com", b"x\n")
    missing = raw_mail("From: a@example.com\nSubject: no id", b"x\n")
    garbage = raw_mail("From: a@example.com\nMessage-ID: ???", b"x\n")
    assert parse_mail(folded).message_id == "<long-id-part-onepart-two@mail.example.com>"
    assert parse_mail(unclosed).message_id == "<abc@example.com>"
    assert parse_mail(missing).message_id is None
    assert parse_mail(garbage).message_id is None


def test_references_keep_the_first_four_and_last_sixteen() -> None:
    ids = [f"<r{i}@example.com>" for i in range(30)]
    raw = raw_mail("From: a@example.com\nReferences: " + "\n ".join(ids), b"x\n")
    assert parse_mail(raw).references == tuple(ids[:4] + ids[-16:])
    assert normalise_message_ids("<a@x>, <b@x> <a@x>") == ("<a@x>", "<b@x>")


def test_reply_text_has_quotes_removed() -> None:
    msg = message()
    msg.set_content("Yes, please cancel.\n\nOn Mon, 5 Jan 2026 at 10:00, Support <support@desk.example> wrote:\n"
                    "> Shall we cancel order 17?\n")
    parsed = parse_mail(msg.as_bytes())
    assert parsed.reply_text == "Yes, please cancel."
    assert "Shall we cancel" in parsed.text


# --- hostile input ------------------------------------------------------------------


def nested(levels: int) -> bytes:
    head = [b"From: deep@example.com\r\nSubject: deep\r\nMessage-ID: <deep@example.com>\r\nMIME-Version: 1.0\r\n"]
    for level in range(levels):
        head.append(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (level, level))
    tail = [b"--b%d--\r\n" % level for level in reversed(range(levels))]
    return b"".join(head) + b"Content-Type: text/plain\r\n\r\nhello from the bottom\r\n" + b"".join(tail)


def test_deep_nesting_raises_parse_error_and_salvage_reads_it() -> None:
    raw = nested(1000)
    with pytest.raises(ParseError):
        parse_mail(raw)
    saved = salvage(raw)
    assert saved.subject == "deep"
    assert saved.message_id == "<deep@example.com>"
    assert saved.from_address == "deep@example.com"
    assert "hello from the bottom" in saved.text
    assert saved.reply_text == saved.text
    assert saved.attachments == () and saved.html is None
    assert saved.content_type == "multipart/mixed"
    assert saved.defects == (SALVAGED,)


def test_moderate_nesting_still_parses() -> None:
    assert parse_mail(nested(50)).text == "hello from the bottom"


def test_salvage_caps_text_and_never_raises() -> None:
    saved = salvage(b"Subject: big\r\n\r\n" + b"\xff\x00a" * 600_000)
    assert len(saved.text.encode("utf-8")) < 4 * 1024 * 1024
    assert "\x00" not in saved.text and "\ufffd" in saved.text
    assert salvage(None).text == ""  # type: ignore[arg-type]
    assert salvage(b"").headers == ()


def test_empty_message_parses_to_empty_fields() -> None:
    parsed = parse_mail(b"")
    assert (parsed.text, parsed.subject, parsed.message_id, parsed.from_address) == ("", "", None, None)
    assert parsed.attachments == () and parsed.headers == ()


def test_non_bytes_input_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        parse_mail("From: a@example.com\r\n\r\nbody")  # type: ignore[arg-type]


def fuzz_inputs(count: int) -> list[bytes]:
    rng = random.Random(20260105)
    msg = message()
    msg.set_content("Body with ümlauts\n", cte="quoted-printable")
    msg.add_alternative("<p>html</p>", subtype="html")
    msg.add_attachment(b"\x00\x01", maintype="application", subtype="octet-stream", filename="a.bin")
    seed = msg.as_bytes()
    tokens = [b"\r\n", b"=?", b"?=", b"<", b">", b";", b'"', b"\\", b"=?utf-8?b?", b"charset=", b"boundary=",
              b"--", b"\x00", b"\xff", b"Content-Type: multipart/mixed; boundary=Y\r\n", b"=\r\n", b"\t"]
    inputs = [bytes(rng.randrange(256) for _ in range(rng.randrange(2000))) for _ in range(count // 2)]
    for _ in range(count - len(inputs)):
        data = bytearray(seed)
        for _ in range(rng.randint(1, 30)):
            position = rng.randrange(len(data) + 1)
            if rng.random() < 0.5:
                data[position:position] = rng.choice(tokens)
            else:
                del data[position:position + rng.randint(1, 8)]
        inputs.append(bytes(data))
    return inputs


def test_random_and_mutated_bytes_give_a_parsed_mail_or_parse_error_only() -> None:
    parsed = 0
    for data in fuzz_inputs(400):
        try:
            result = parse_mail(data)
        except ParseError:
            continue
        parsed += 1
        assert isinstance(result, ParsedMail)
        for value in (result.text, result.subject, result.from_name, *(v for _, v in result.headers)):
            value.encode("utf-8")  # no lone surrogates: storable in PostgreSQL and SQLite
            assert "\x00" not in value
        assert "\n" not in result.subject and "\r" not in result.subject
        assert all(a.filename and "/" not in a.filename and "\n" not in a.filename for a in result.attachments)
        assert isinstance(salvage(data), ParsedMail)
    assert parsed > 300  # garbage is mostly readable as a header-less message, not refused


def test_an_overlong_content_id_is_cut_to_what_a_header_line_may_hold() -> None:
    cid = "c" * 1200 + "@acme.test"
    raw = ("From: jane@acme.test\r\nSubject: image\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/related; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nsee\r\n"
           "--x\r\nContent-Type: image/png\r\nContent-Disposition: inline; filename=a.png\r\n"
           f"Content-ID: <{cid}>\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0=\r\n--x--\r\n").encode()
    (image,) = parse_mail(raw).attachments
    assert image.content_id == cid[:998] and image.is_inline
