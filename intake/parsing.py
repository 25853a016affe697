"""Turn the raw bytes of one mail into a ParsedMail the rest of intake can trust.

mail-parser reads the message once: it gives the addresses, the date and the
defects, and it guards against nesting deep enough to exhaust the stack. The
stdlib message tree it builds on the way is then walked once more, here, for
bodies and attachments, because mail-parser 4.8 leaves 7bit bodies in
ISO-2022-JP or UTF-7 undecoded, puts the text of a forwarded message into the
body instead of listing the message as an attachment, keeps base64 as text
and names unnamed parts with random strings (so two parses of the same bytes
would disagree). Parsing twice with the stdlib would double the cost.

Every string that leaves this module is valid Unicode without NUL, so it can be
stored in PostgreSQL or SQLite as it is, and every single-line field (subject,
names, header values) is free of CR and LF, so it cannot smuggle a header into
mail we send later. The raw bytes stay the source of truth; they are stored
elsewhere, before parsing.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import mimetypes
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any, Iterator

import mailparser
from inscriptis import get_text
from mailparser.exceptions import MailParserRecursionError

from intake.quotes import strip_quoted

MAX_TEXT_CHARS = 2 * 1024 * 1024      # `text` is cut here; the raw message keeps everything
MAX_HTML_TO_TEXT = 1024 * 1024        # inscriptis needs about 1 s per MB; more HTML is not read for `text`
SALVAGE_TEXT_BYTES = 1024 * 1024
REFERENCES_HEAD = 4                   # the thread root and its first replies ...
REFERENCES_TAIL = 16                  # ... and the most recent ones: what threading needs
MAX_MESSAGE_ID = 998                  # longest header line RFC 5322 allows
SALVAGED = "SalvagedMessage"          # the defect that marks a message read by salvage()

_EML_POLICY = policy.compat32.clone(linesep="\r\n", max_line_length=0)  # re-emit, never re-fold
_MIME_TYPES = mimetypes.MimeTypes()   # built-in table only: the same names on every machine
_EXTENSIONS = {"text/plain": ".txt", "text/calendar": ".ics", "image/jpeg": ".jpg", "application/octet-stream": ".bin",
               "application/pgp-signature": ".asc", "application/pkcs7-signature": ".p7s"}

# Codecs Python offers that no mail charset names; a sender must not pick one.
_REFUSED_CODECS = frozenset({"unicode_escape", "raw_unicode_escape", "unicode_internal", "idna", "punycode",
                             "undefined", "charmap", "mbcs", "oem"})
# Labels Python does not know, or whose Python codec is stricter than what mailers send under that name.
_CHARSET_ALIASES = {"iso-8859-8-i": "iso8859_8", "iso-8859-6-i": "iso8859_6", "gb2312": "gb18030",
                    "gbk": "gb18030", "x-gbk": "gb18030", "shift_jis": "cp932", "shift-jis": "cp932",
                    "sjis": "cp932", "x-sjis": "cp932", "ks_c_5601-1987": "cp949", "euc-kr": "cp949"}
_WESTERN_CODECS = frozenset({"ascii", "latin_1", "iso8859_1", "cp1252"})

_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,75})\?([bBqQ])\?([^?\s]*)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_LINE_BREAKS = re.compile(r"[\r\n\x00]+")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
_ID_TEXT = re.compile(r"[!-;=?-~]+")  # visible ASCII without "<" and ">"


class ParseError(Exception):
    """Nothing usable could be read from the bytes; salvage() still can."""


@dataclass(frozen=True)
class ParsedAttachment:
    filename: str            # never empty, no path, no control characters
    content_type: str        # lower-case "type/subtype"
    content: bytes           # decoded: base64 and quoted-printable undone
    content_id: str | None   # without angle brackets
    is_inline: bool          # an image shown inside the HTML (Content-ID or inline): kept, but not a "file"


@dataclass(frozen=True)
class ParsedMail:
    message_id: str | None                 # "<left@right>", or None when missing or garbage
    from_address: str | None               # lower-cased addr-spec from From, else Sender
    from_name: str
    reply_to: tuple[str, ...]              # lower-cased addr-specs, like to and cc
    to: tuple[str, ...]
    cc: tuple[str, ...]
    subject: str                           # decoded, on one line
    in_reply_to: tuple[str, ...]           # normalised Message-IDs
    references: tuple[str, ...]            # normalised, the first REFERENCES_HEAD and last REFERENCES_TAIL
    date: datetime | None                  # aware, UTC
    text: str                              # the whole body as text, at most MAX_TEXT_CHARS
    reply_text: str                        # text without quoted history
    html: str | None                       # the HTML body as sent: never render it
    attachments: tuple[ParsedAttachment, ...]
    headers: tuple[tuple[str, str], ...]   # (name as sent, decoded one-line value), top first
    content_type: str                      # top-level, e.g. "multipart/report"
    defects: tuple[str, ...]               # defect class names: a record, never a reason to reject

    def header(self, name: str) -> str | None:
        """The first value of a header, matched case-insensitively, or None."""
        values = self.header_all(name)
        return values[0] if values else None

    def header_all(self, name: str) -> tuple[str, ...]:
        """Every value of a header, top first: the order mail servers added them."""
        wanted = name.lower()
        return tuple(value for key, value in self.headers if key.lower() == wanted)


# --- entry points -------------------------------------------------------------


def parse_mail(raw: bytes) -> ParsedMail:
    """Parse one message; only ParseError can come out, whatever the bytes.

    Any failure inside the libraries is reported as ParseError too: the message
    is then quarantined with its raw bytes instead of crashing the worker.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise ParseError(f"a message is bytes, not {type(raw).__name__}")
    try:
        return _from_parser(mailparser.parse_from_bytes(bytes(raw)))
    except (MailParserRecursionError, RecursionError) as exc:
        raise ParseError("the message is nested too deeply to parse") from exc
    except Exception as exc:  # noqa: BLE001 - the contract: nothing but ParseError leaves
        raise ParseError(f"the message could not be parsed ({exc.__class__.__name__}: {str(exc)[:200]})") from exc


def salvage(raw: bytes) -> ParsedMail:
    """Best effort for a message parse_mail refused; never raises.

    Headers come from the stdlib header parser, which never looks at the body
    and so cannot recurse; the text is the raw message itself, so an agent who
    releases it from quarantine sees everything the customer sent.
    """
    data = bytes(raw) if isinstance(raw, (bytes, bytearray, memoryview)) else b""
    try:
        message = BytesHeaderParser(policy=policy.compat32).parsebytes(data[:SALVAGE_TEXT_BYTES])
        headers = _decoded_headers(message)
        mailboxes = {name: _stdlib_mailboxes(_raw_values(message, name))
                     for name in ("from", "sender", "to", "cc", "reply-to")}
    except Exception:  # noqa: BLE001 - headers too broken even for the header parser
        headers, mailboxes = (), {}
    text = _clean_text(data[:SALVAGE_TEXT_BYTES].decode("utf-8", "replace"))
    return _assemble(
        headers=headers, mailboxes=mailboxes, date=_header_date(_first(headers, "date")),
        text=text, reply_text=text, html=None, attachments=(),
        content_type=_declared_type(_first(headers, "content-type")), defects=(SALVAGED,),
    )


# --- assembling ---------------------------------------------------------------


def _from_parser(parser: Any) -> ParsedMail:
    message: Message = parser.message
    headers = _decoded_headers(message)
    text, html, attachments = _read_body(message)
    mailboxes = {
        "from": _parser_mailboxes(parser.from_),
        "sender": _stdlib_mailboxes(_raw_values(message, "sender")),
        "to": _parser_mailboxes(parser.to),
        "cc": _parser_mailboxes(parser.cc),
        "reply-to": _parser_mailboxes(parser.reply_to),
    }
    return _assemble(
        headers=headers, mailboxes=mailboxes, date=_utc(parser.date),
        text=text, reply_text=strip_quoted(text), html=html, attachments=attachments,
        content_type=message.get_content_type(), defects=tuple(sorted(parser.defects_categories)),
    )


def _assemble(*, headers: tuple[tuple[str, str], ...], mailboxes: dict[str, list[tuple[str, str]]],
              date: datetime | None, text: str, reply_text: str, html: str | None,
              attachments: tuple[ParsedAttachment, ...], content_type: str,
              defects: tuple[str, ...]) -> ParsedMail:
    """Build the header-derived fields the same way for parse_mail and salvage."""
    sender = _first_usable(mailboxes.get("from", [])) or _first_usable(mailboxes.get("sender", []))
    from_name, from_address = sender or ("", None)
    references = normalise_message_ids(" ".join(_all(headers, "references")))
    if len(references) > REFERENCES_HEAD + REFERENCES_TAIL:
        references = references[:REFERENCES_HEAD] + references[-REFERENCES_TAIL:]
    return ParsedMail(
        message_id=normalise_message_id(_first(headers, "message-id") or ""),
        from_address=from_address,
        from_name=from_name,
        reply_to=_addresses(mailboxes.get("reply-to", [])),
        to=_addresses(mailboxes.get("to", [])),
        cc=_addresses(mailboxes.get("cc", [])),
        subject=one_line(_first(headers, "subject") or ""),
        in_reply_to=normalise_message_ids(" ".join(_all(headers, "in-reply-to"))),
        references=references,
        date=date,
        text=text,
        reply_text=reply_text,
        html=html,
        attachments=attachments,
        headers=headers,
        content_type=content_type,
        defects=defects,
    )


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    values = _all(headers, name)
    return values[0] if values else None


def _all(headers: tuple[tuple[str, str], ...], name: str) -> tuple[str, ...]:
    return tuple(value for key, value in headers if key.lower() == name)


# --- headers ------------------------------------------------------------------


def decode_header_value(value: str) -> str:
    """Unfold, decode RFC 2047 words and raw 8-bit bytes; CR, LF and NUL become spaces.

    Written here rather than taken from email.header.decode_header, which
    re-encodes unencoded text with raw-unicode-escape and so mangles the raw
    UTF-8 many mailers put in headers.
    """
    return _LINE_BREAKS.sub(" ", _decoded(value)).strip()


def _decoded(value: str) -> str:
    text = _FOLD.sub("", str(value))
    if _has_surrogates(text):
        text = decode_text(text.encode("utf-8", "surrogateescape"), None)
    return _decode_encoded_words(text) if "=?" in text else text


def one_line(value: str) -> str:
    """Collapse every run of whitespace (CR, LF and NUL included) into one space."""
    return " ".join(value.replace("\x00", " ").split())


def _decoded_headers(message: Message) -> tuple[tuple[str, str], ...]:
    return tuple((_CONTROLS.sub("", str(name)), decode_header_value(value)) for name, value in message.raw_items())


def _raw_values(message: Message, name: str) -> list[str]:
    return [str(value) for key, value in message.raw_items() if str(key).lower() == name]


@dataclass
class _Run:
    """Bytes of consecutive encoded words in one charset, decoded together."""

    charset: str
    data: bytearray


def _decode_encoded_words(text: str) -> str:
    """Decode =?charset?b|q?...?= words; whitespace between two adjacent words is dropped (RFC 2047 §6.2).

    Consecutive words in one charset are joined before decoding, because
    mailers do split a multi-byte character across two words. A word that
    does not decode stays as it was written.
    """
    out: list[str | _Run] = []
    last_run: _Run | None = None
    position = 0
    for match in _ENCODED_WORD.finditer(text):
        between = text[position:match.start()]
        position = match.end()
        data = _encoded_word_bytes(match.group(2), match.group(3))
        if data is None:
            out += [between, match.group(0)]
            last_run = None
            continue
        charset = match.group(1).split("*", 1)[0].lower()  # RFC 2231 may add "*language"
        if last_run is None or between.strip():
            out.append(between)
        elif last_run.charset == charset:
            last_run.data.extend(data)
            continue
        last_run = _Run(charset, bytearray(data))
        out.append(last_run)
    out.append(text[position:])
    return "".join(piece if isinstance(piece, str) else decode_text(bytes(piece.data), piece.charset) for piece in out)


def _encoded_word_bytes(encoding: str, payload: str) -> bytes | None:
    try:
        if encoding in "qQ":
            return binascii.a2b_qp(payload.encode("utf-8", "surrogateescape"), header=True)
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def normalise_message_id(value: str) -> str | None:
    """The first Message-ID in a header value as "<left@right>", or None when there is none.

    Tolerates what real mailers send: ids folded inside the brackets, a
    missing ">", ids without brackets. Anything else is garbage and gives None.
    """
    ids = normalise_message_ids(value)
    return ids[0] if ids else None


def normalise_message_ids(value: str) -> tuple[str, ...]:
    """Every Message-ID in a header value (In-Reply-To, References), in order, each once."""
    text = value.replace("\r", "").replace("\n", "")
    chunks = text.split("<")
    if len(chunks) == 1:
        candidates = text.replace(",", " ").split()
    else:
        candidates = [_bracketed_id(chunk) for chunk in chunks[1:]]
    ids = (_valid_id(candidate) for candidate in candidates)
    return tuple(dict.fromkeys(i for i in ids if i))


def _bracketed_id(chunk: str) -> str:
    if ">" in chunk:
        return "".join(chunk.split(">", 1)[0].split())  # an id folded inside its brackets
    words = chunk.split()
    return words[0] if words else ""


def _valid_id(candidate: str) -> str | None:
    left, at, right = candidate.rpartition("@")
    if not at or not left or not right or len(candidate) + 2 > MAX_MESSAGE_ID:
        return None
    if not _ID_TEXT.fullmatch(candidate):
        return None
    return f"<{candidate}>"


# --- addresses and dates -----------------------------------------------------


def _parser_mailboxes(value: Any) -> list[tuple[str, str]]:
    """mail-parser answers an absent header with "" and a present one with (name, address) pairs."""
    if not isinstance(value, list):
        return []
    return [(str(name), str(address)) for name, address in value]


def _stdlib_mailboxes(raw_values: list[str]) -> list[tuple[str, str]]:
    unfolded = [value.replace("\r", "").replace("\n", "") for value in raw_values]
    return [(decode_header_value(name), decode_header_value(address)) for name, address in getaddresses(unfolded)]


def _first_usable(mailboxes: list[tuple[str, str]]) -> tuple[str, str] | None:
    for name, address in mailboxes:
        spec = addr_spec(address)
        if spec:
            return one_line(_CONTROLS.sub(" ", name)), spec
    return None


def _addresses(mailboxes: list[tuple[str, str]]) -> tuple[str, ...]:
    specs = (addr_spec(address) for _, address in mailboxes)
    return tuple(dict.fromkeys(spec for spec in specs if spec))


def addr_spec(address: str) -> str | None:
    """A lower-cased local@domain, or None for anything that cannot be mailed back."""
    spec = address.strip().strip("<>").strip().lower()
    local, at, domain = spec.rpartition("@")
    if not at or not local or not domain or len(spec) > 254:
        return None
    if any(ch.isspace() or ch in '<>(),;:"\\' or ord(ch) < 32 or ord(ch) == 127 for ch in spec):
        return None
    return spec


def _utc(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _header_date(value: str | None) -> datetime | None:
    try:
        return _utc(parsedate_to_datetime(value)) if value else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _declared_type(value: str | None) -> str:
    declared = (value or "").split(";", 1)[0].strip().lower()
    maintype, slash, subtype = declared.partition("/")
    return declared if slash and maintype and subtype and " " not in declared else "text/plain"


# --- bodies -------------------------------------------------------------------


def _read_body(root: Message) -> tuple[str, str | None, tuple[ParsedAttachment, ...]]:
    """One pass over the parts: text/plain and text/html bodies, everything else an attachment."""
    plain: list[str] = []
    html: list[str] = []
    attachments: list[ParsedAttachment] = []
    for part in leaf_parts(root):
        disposition = _disposition(part)
        filename = _declared_filename(part)
        role = _body_role(part, disposition, filename)
        if role == "plain":
            plain.append(_part_text(part))
        elif role == "html":
            html.append(_part_text(part))
        else:
            attachments.append(_attachment(part, len(attachments) + 1, disposition, filename))
    html_body = "\n".join(html) if html else None
    text = "\n".join(plain)
    if not text.strip() and html_body:
        text = html_to_text(html_body)
    return _clean_text(text)[:MAX_TEXT_CHARS], html_body, tuple(attachments)


def leaf_parts(root: Message) -> Iterator[Message]:
    """Depth-first, in order, without recursion; message/* parts are leaves (they become attachments)."""
    stack = [root]
    while stack:
        part = stack.pop()
        payload = part.get_payload()
        if part.get_content_maintype() == "multipart" and isinstance(payload, list):
            stack.extend(reversed(payload))
        else:
            yield part


def _body_role(part: Message, disposition: str | None, filename: str) -> str:
    content_type = part.get_content_type()
    if part.get_content_maintype() == "multipart":
        return "plain"  # a multipart without a usable boundary: its raw body is all there is to read
    if content_type in ("text/plain", "text/html") and disposition != "attachment" and not filename:
        return "plain" if content_type == "text/plain" else "html"
    return "attachment"


def _part_text(part: Message) -> str:
    return decode_text(_payload_bytes(part), _charset(part))


def _payload_bytes(part: Message) -> bytes:
    """The part's bytes with base64 / quoted-printable undone, as the stdlib decodes them."""
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001 - a transfer encoding the stdlib chokes on: take the bytes as sent
        data = None
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    return payload.encode("utf-8", "surrogateescape") if isinstance(payload, str) else b""


def _charset(part: Message) -> str | None:
    try:
        return part.get_content_charset()
    except Exception:  # noqa: BLE001 - a Content-Type too broken to read a parameter from
        return None


def _disposition(part: Message) -> str | None:
    try:
        return part.get_content_disposition()
    except Exception:  # noqa: BLE001
        return None


def _declared_filename(part: Message) -> str:
    try:
        name = part.get_filename() or ""
    except Exception:  # noqa: BLE001 - RFC 2231 parameters in a charset Python lacks
        return ""
    return _decoded(name) if isinstance(name, str) else ""  # clean_filename removes CR, LF and NUL


def decode_text(data: bytes, charset: str | None) -> str:
    """Decode body or header bytes in the declared charset, never failing.

    No charset: UTF-8, else Latin-1. A Western charset: UTF-8 first (mailers
    often declare Latin-1 for UTF-8 bytes; valid UTF-8 multi-byte sequences do
    not happen by accident in Latin-1 text), then Windows-1252. Unknown or
    refused names: UTF-8, then Windows-1252 with replacement characters.
    Anything else: the charset, then UTF-8, then the charset with replacements.
    """
    if not data:
        return ""
    for codec, errors in dict.fromkeys(_decoding_order(charset)):
        try:
            text = data.decode(codec, errors)
            text.encode("utf-8")  # some codecs (UTF-7) can produce lone surrogates
            return text
        except (UnicodeError, LookupError):
            continue
    return data.decode("utf-8", "replace")


def _decoding_order(charset: str | None) -> list[tuple[str, str]]:
    label = (charset or "").strip().strip("\"'").lower()
    if not label:
        return [("utf_8", "strict"), ("latin_1", "strict")]
    codec = _codec(label)
    if codec is None:
        return [("utf_8", "strict"), ("cp1252", "replace")]
    if codec in _WESTERN_CODECS:
        return [("utf_8", "strict"), ("cp1252", "strict"), ("latin_1", "strict")]
    return [(codec, "strict"), ("utf_8", "strict"), (codec, "replace")]


def _codec(label: str) -> str | None:
    try:
        name = codecs.lookup(_CHARSET_ALIASES.get(label, label)).name.replace("-", "_")
    except (LookupError, ValueError):
        return None
    return None if name in _REFUSED_CODECS else name


def html_to_text(html: str) -> str:
    """Readable text from an HTML body; script and style content never shows.

    inscriptis keeps the layout (lists, tables, paragraphs) and drops script
    and style. Only the first MAX_HTML_TO_TEXT characters are read: it needs
    about a second per megabyte.
    """
    head = html[:MAX_HTML_TO_TEXT].replace("\x00", "")
    try:
        return get_text(head)
    except Exception:  # noqa: BLE001 - lxml refused the document: strip tags by hand
        return _crude_text(head)


def _crude_text(html: str) -> str:
    """Tag-free text in linear time, without the contents of <script> and <style>."""
    lowered = html.lower()
    out: list[str] = []
    position = 0
    while (start := lowered.find("<", position)) >= 0:
        out.append(html[position:start])
        end = lowered.find(">", start)
        element = next((e for e in ("script", "style") if lowered.startswith(e, start + 1)), None)
        if element and end >= 0:
            closing = lowered.find(f"</{element}", end)
            end = lowered.find(">", closing) if closing >= 0 else -1
        if end < 0:
            return "".join(out)
        out.append(" ")
        position = end + 1
    out.append(html[position:])
    return "".join(out)


def _clean_text(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


# --- attachments --------------------------------------------------------------


def _attachment(part: Message, index: int, disposition: str | None, filename: str) -> ParsedAttachment:
    content_type = part.get_content_type()
    content_id = _content_id(part)
    if content_type in ("message/rfc822", "message/global"):
        content, inner = _forwarded(part)
        name = _subject_filename(inner) or clean_filename(filename) or f"attachment-{index}.eml"
        return ParsedAttachment(name, content_type, content, content_id, False)
    if part.get_content_maintype() == "message":  # delivery-status, disposition-notification, ...
        name = clean_filename(filename) or f"attachment-{index}.txt"
        return ParsedAttachment(name, content_type, _message_body(part), content_id, False)
    name = (clean_filename(filename) or clean_filename(content_id or "")
            or f"attachment-{index}{_extension(content_type)}")
    is_inline = part.get_content_maintype() == "image" and (
        disposition == "inline" or (disposition is None and content_id is not None))
    return ParsedAttachment(name, content_type, _payload_bytes(part), content_id, is_inline)


def clean_filename(name: str) -> str:
    """The last path component, without control characters, at most 255 characters; "" if nothing is left."""
    base = _CONTROLS.sub("", name).replace("\\", "/").rsplit("/", 1)[-1].strip()
    if base in ("", ".", ".."):
        return ""
    if len(base) <= 255:
        return base
    stem, dot, extension = base.rpartition(".")
    if dot and stem and len(extension) <= 16:
        return stem[:254 - len(extension)] + "." + extension
    return base[:255]


def _subject_filename(message: Message | None) -> str:
    """A forwarded message is named after its subject; slashes there are not paths."""
    if message is None:
        return ""
    subjects = _raw_values(message, "subject")
    subject = one_line(_CONTROLS.sub(" ", decode_header_value(subjects[0]))) if subjects else ""
    subject = subject.replace("/", "_").replace("\\", "_")[:100].strip()
    return f"{subject}.eml" if subject.strip(".") else ""


# RFC 5322 caps a header line at 998 octets, and the store keeps a Content-ID in as many characters;
# a longer one (broken or hostile mail) is cut rather than making the whole message unfileable.
MAX_CONTENT_ID = 998


def _content_id(part: Message) -> str | None:
    values = _raw_values(part, "content-id")
    if not values:
        return None
    content_id = _CONTROLS.sub("", decode_header_value(values[0])).strip().strip("<>").strip()
    return content_id[:MAX_CONTENT_ID] or None


def _extension(content_type: str) -> str:
    known = _EXTENSIONS.get(content_type) or _MIME_TYPES.guess_extension(content_type, strict=False)
    return known or (".txt" if content_type.startswith("text/") else ".bin")


def _forwarded(part: Message) -> tuple[bytes, Message | None]:
    """The .eml bytes of a forwarded message and its headers.

    The stdlib parses a message/rfc822 body even when a mailer wrongly
    base64- or qp-encoded it; the bytes written back are then still encoded.
    """
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload and isinstance(payload[0], Message) else None
    content = _serialised(inner)
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding not in ("base64", "quoted-printable"):
        return content, inner
    try:
        decoded = base64.b64decode(content) if encoding == "base64" else binascii.a2b_qp(content)
        return decoded, BytesHeaderParser(policy=policy.compat32).parsebytes(decoded)
    except (binascii.Error, ValueError):
        return content, inner


def _serialised(message: Message | None) -> bytes:
    """The forwarded message as .eml bytes; the stdlib writes 8-bit bytes back as they came."""
    if message is None:
        return b""
    try:
        return message.as_bytes(policy=_EML_POLICY)
    except Exception:  # noqa: BLE001 - a header the generator cannot write back
        try:
            return message.as_string(policy=_EML_POLICY).encode("utf-8", "surrogateescape")
        except Exception:  # noqa: BLE001
            return b""


def _message_body(part: Message) -> bytes:
    """The body of a message/* part other than a forwarded message: its blocks of fields, as text."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return b"".join(_serialised(block) for block in payload if isinstance(block, Message))
    return _payload_bytes(part)
