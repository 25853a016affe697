"""Cut the quoted history off a reply, so an agent reads only what the customer added.

Quote strippers are a known denial-of-service: email-reply-parser needs over
20 s for 56 KB of repeated "On ... wrote:" lines. This one reads each line a
bounded number of times, applies regular expressions only to single lines of
at most MAX_LINE_CHARS, and returns inputs over MAX_INPUT_CHARS unchanged, so
its time is linear in the input. The full text is always stored as well: a
wrong cut hides text from the summary view, it never loses it.
"""

from __future__ import annotations

import re

MAX_INPUT_CHARS = 1_000_000
MAX_LINE_CHARS = 1_000
ATTRIBUTION_LINES = 3  # "On ... wrote:" is wrapped over up to three lines by some clients

# (opening word, phrase the attribution ends with or contains before its final colon)
_ATTRIBUTIONS = (
    ("on ", "wrote:"),            # Gmail, Apple Mail, Thunderbird, iOS, Android
    ("am ", " schrieb "),         # German
    ("le ", "a écrit :"),         # French (the space before ":" is often a no-break space)
    ("le ", "a écrit:"),
    ("el ", "escribió:"),         # Spanish
    ("op ", " schreef "),         # Dutch
    ("il ", "ha scritto:"),       # Italian
    ("em ", "escreveu:"),         # Portuguese
)
# An attribution names a time, a numeric date or an address; a sentence that
# happens to start with "On" and end with "wrote:" usually does not.
_OPENERS = frozenset(opener for opener, _ in _ATTRIBUTIONS)
_ATTRIBUTION_DETAIL = re.compile(r"@|\d:\d\d|\d[./-]\d{1,2}[./-]\d")
_ORIGINAL_MESSAGE = re.compile(
    r"-{2,}\s*(original message|ursprüngliche nachricht|message d'origine|mensaje original"
    r"|oorspronkelijk bericht|messaggio originale)\s*-{2,}", re.IGNORECASE)
# A forwarded message is content the customer chose to send, not history to hide.
_FORWARDED = re.compile(
    r"-{2,}\s*(forwarded message|weitergeleitete nachricht|message transféré|mensaje reenviado"
    r"|doorgestuurd bericht|messaggio inoltrato)\s*-{2,}", re.IGNORECASE)
_FORWARDED_APPLE = ("begin forwarded message:", "anfang der weitergeleiteten nachricht:",
                    "début du message réexpédié", "inicio del mensaje reenviado:")
_FROM_LABELS = ("from:", "von:", "de:", "de :", "van:", "da:", "från:", "fra:")
_DATE_LABELS = ("sent:", "date:", "gesendet:", "datum:", "envoyé :", "envoyé:", "date :", "enviado:",
                "fecha:", "verzonden:", "inviato:", "data:", "skickat:", "sendt:")
_OUTLOOK_RULE = "_" * 10
_HEADER_BLOCK_LINES = 4  # Outlook puts Sent:/Date: within the next few lines after From:


def strip_quoted(text: str) -> str:
    """The reply without quoted history; the input itself when there is nothing to strip.

    Cuts at the first reply header (an attribution such as "On ... wrote:",
    "-----Original Message-----", an Outlook From:/Sent: block or its
    underscore rule), then drops trailing blank and ">" lines. An attribution
    followed by a quote that is answered further down (an interleaved reply)
    is kept, up to the last answer. Never returns an empty string for input
    with new text: when stripping would leave nothing, the input comes back.
    """
    if not text or len(text) > MAX_INPUT_CHARS:
        return text
    lines = text.split("\n")
    end = len(lines)
    header = _first_reply_header(lines)
    if header is not None:
        index, introduces_quote = header
        if not (introduces_quote and _interleaved(lines, index + 1)):
            end = index
    last, dropped_quote = _last_new_line(lines, end)
    if last is None or (end == len(lines) and not dropped_quote):
        return text
    return "\n".join(lines[:last + 1]).rstrip()


def _first_reply_header(lines: list[str]) -> tuple[int, bool] | None:
    """Index of the first reply header and whether it introduces ">" quoting; none below a forward marker."""
    for index, raw in enumerate(lines):
        line = _clean(raw)
        if not line or len(line) > MAX_LINE_CHARS or line[0] == ">":
            continue
        if line.lower().startswith(_FORWARDED_APPLE):
            return None
        if line[:3].lower() in _OPENERS:
            if _attribution_at(lines, index):
                return index, True
        elif line[0] == "-":
            if _FORWARDED.fullmatch(line):
                return None
            if _ORIGINAL_MESSAGE.fullmatch(line):
                return index, False
        elif line[0] == "_":
            if _is_outlook_rule(line) and _next_is_from(lines, index):
                return index, False
        elif _has_label(line, _FROM_LABELS) and _date_follows(lines, index):
            return index, False
    return None


def _attribution_at(lines: list[str], index: int) -> bool:
    """Whether an attribution starts at lines[index], possibly wrapped over the next lines."""
    first = _clean(lines[index]).lower()
    openers = [(opener, phrase) for opener, phrase in _ATTRIBUTIONS if first.startswith(opener)]
    if not openers:
        return False
    joined = ""
    for position in range(index, min(index + ATTRIBUTION_LINES, len(lines))):
        piece = _clean(lines[position]).lower()
        if not piece or len(piece) > MAX_LINE_CHARS or (position > index and _is_quoted(piece)):
            return False
        joined = f"{joined} {piece}" if joined else piece
        if any(_is_attribution(joined, phrase) for _, phrase in openers):
            return True
    return False


def _is_attribution(line: str, phrase: str) -> bool:
    if phrase.endswith(":"):
        ends = line.endswith(phrase)
    else:
        ends = line.endswith(":") and phrase in line
    return ends and _ATTRIBUTION_DETAIL.search(line) is not None


def _interleaved(lines: list[str], start: int) -> bool:
    """A quote right below the attribution that new, unquoted text answers further down."""
    seen_quote = False
    for raw in lines[start:]:
        line = raw.strip()
        if not line:
            continue
        if _is_quoted(line):
            seen_quote = True
        else:
            return seen_quote  # unquoted text first means the history itself is not prefixed
    return False


def _last_new_line(lines: list[str], end: int) -> tuple[int | None, bool]:
    """The last line before `end` that is neither blank nor quoted, and whether quoted lines came after it."""
    dropped_quote = False
    for index in range(end - 1, -1, -1):
        line = lines[index].strip()
        if not line:
            continue
        if not _is_quoted(line):
            return index, dropped_quote
        dropped_quote = True
    return None, dropped_quote


def _is_outlook_rule(line: str) -> bool:
    return line.startswith(_OUTLOOK_RULE) and not line.strip("_")


def _next_is_from(lines: list[str], index: int) -> bool:
    for raw in lines[index + 1:index + 3]:
        line = _clean(raw)
        if line:
            return len(line) <= MAX_LINE_CHARS and _has_label(line, _FROM_LABELS)
    return False


def _date_follows(lines: list[str], index: int) -> bool:
    for raw in lines[index + 1:index + 1 + _HEADER_BLOCK_LINES]:
        line = _clean(raw)
        if line and len(line) <= MAX_LINE_CHARS and _has_label(line, _DATE_LABELS):
            return True
    return False


def _has_label(line: str, labels: tuple[str, ...]) -> bool:
    """Header-like "Label: value", also as "*From:*" the way HTML bold turns into text."""
    return line.lstrip("*")[:12].lower().startswith(labels)


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _clean(line: str) -> str:
    return line.replace("\u00a0", " ").replace("\u202f", " ").strip()
