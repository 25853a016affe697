"""Pull the facts an agent looks for out of a mail: invoice numbers, amounts, request keys, sender authenticity.

Everything here reads customer-controlled text, so every regular expression
is linear (bounded quantifiers, no nesting) and inputs are capped. Values are
only reported when they parse cleanly; an ambiguous amount is skipped, never
guessed, because a wrong amount in front of an agent is worse than none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from core.errors import InvalidInput
from core.money import Money, parse_amount
from intake.parsing import ParsedMail

DEFAULT_INVOICE_PATTERN = r"\bINV-?\d{2,12}\b"
MAX_SCAN_CHARS = 200 * 1024

# --- invoice numbers ----------------------------------------------------------


def compile_invoice_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a configured invoice pattern (case-insensitive), refusing one that cannot work."""
    if not pattern:
        raise InvalidInput("invoice pattern is empty; leave it unset to use the default INV-123 pattern")
    try:
        compiled = re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise InvalidInput(f"invoice pattern {pattern!r} is not a valid regular expression: {exc}") from exc
    if compiled.fullmatch(""):
        raise InvalidInput(f"invoice pattern {pattern!r} matches the empty string, so it would match everywhere")
    return compiled


def find_invoice_numbers(text: str, pattern: str = DEFAULT_INVOICE_PATTERN) -> tuple[str, ...]:
    """Invoice numbers in order of appearance, each once.

    With the default pattern "inv100", "Inv-100" and "INV-100" all read as
    "INV-100"; a configured pattern's matches are returned as written, stripped.
    """
    compiled = compile_invoice_pattern(pattern)
    default = pattern == DEFAULT_INVOICE_PATTERN
    found: list[str] = []
    for match in compiled.finditer(text[:MAX_SCAN_CHARS]):
        value = _normalise_invoice(match.group(0)) if default else match.group(0).strip()
        if value:
            found.append(value)
    return tuple(dict.fromkeys(found))


def _normalise_invoice(value: str) -> str:
    digits = value[3:].lstrip("-")
    return f"INV-{digits}"


# --- amounts ------------------------------------------------------------------

_SYMBOLS = {"€": "EUR", "$": "USD", "US$": "USD", "£": "GBP", "¥": "JPY"}
_CODES = ("EUR", "USD", "GBP", "CHF", "JPY", "CAD", "AUD", "NZD", "SEK", "NOK", "DKK", "PLN", "CZK", "HUF",
          "CNY", "INR", "BRL", "MXN", "ZAR", "SGD", "HKD")
_CURRENCY = r"(?:(?<![A-Za-z])US\$|(?<![A-Za-z])(?:" + "|".join(_CODES) + r")(?![A-Za-z])|(?<![A-Za-z])\$|[€£¥])"
# One to three digits then up to four groups of three behind one kind of separator, or up
# to twelve plain digits; then an optional decimal part. Bounded, so matching stays linear.
_NUMBER = r"(?:\d{1,3}(?:[,.'’\u00a0\u202f ]\d{3}){1,4}|\d{1,12})(?:[.,]\d{1,3})?"
_GAP = r"[ \t\u00a0\u202f]?"
_NOT_AFTER_NUMBER = r"(?!\d|[.,'’:/]\d)"  # never the start of a longer number, a time or a date
_NOT_BEFORE_NUMBER = r"(?<![\d.,'’:/\-])(?<!\d[ \u00a0\u202f])"
_AMOUNT = re.compile(
    rf"(?P<prefix>{_CURRENCY}){_GAP}(?P<n1>{_NUMBER}){_NOT_AFTER_NUMBER}"
    rf"|{_NOT_BEFORE_NUMBER}(?P<n2>{_NUMBER}){_NOT_AFTER_NUMBER}{_GAP}(?P<suffix>{_CURRENCY})",
    re.IGNORECASE,
)


def find_amounts(text: str) -> tuple[Money, ...]:
    """Amounts written with an explicit currency, in order of appearance, each once.

    "EUR 1,234.56", "1.234,56 EUR", "€ 12,50", "$1,000", "40 usd", "CHF 1'200.00",
    "¥500". A number whose separators do not say clearly which is the decimal
    point, or that has more decimals than the currency, is skipped.
    """
    found: list[Money] = []
    for match in _AMOUNT.finditer(text[:MAX_SCAN_CHARS]):
        symbol = match.group("prefix") or match.group("suffix")
        number = match.group("n1") or match.group("n2")
        decimal = _plain_decimal(number)
        if decimal is None:
            continue
        try:
            found.append(parse_amount(decimal, _currency(symbol)))
        except InvalidInput:
            continue
    return tuple(dict.fromkeys(found))


def _currency(symbol: str) -> str:
    return _SYMBOLS.get(symbol.upper(), symbol.upper())


def _plain_decimal(number: str) -> str | None:
    """ "1.234,56" -> "1234.56"; None when the separators do not say clearly what they are.

    A lone "." or "," followed by exactly three digits groups thousands
    ("1,234" is 1234), as does one that repeats ("1,234,567"); otherwise the
    last "." or "," is the decimal point ("12,50", "1.234,56"). A decimal point
    that is also the grouping character ("1,234,56") is refused.
    """
    last = max(number.rfind("."), number.rfind(","))
    integer, fraction = number, ""
    if last >= 0:
        before, tail = number[:last], number[last + 1:]
        grouping = {ch for ch in before if not ch.isdigit()}
        thousands = len(tail) == 3 and (not grouping or number[last] in grouping)
        if not thousands:
            if number[last] in grouping:
                return None
            integer, fraction = before, tail
    if not _well_grouped(integer):
        return None
    digits = "".join(ch for ch in integer if ch.isdigit())
    return f"{digits}.{fraction}" if fraction else digits


def _well_grouped(integer: str) -> bool:
    """Plain digits, or groups of three behind a single kind of separator."""
    groups = re.split(r"[,.'’\u00a0\u202f ]", integer)
    if len(groups) == 1:
        return groups[0].isdigit()
    kinds = {ch for ch in integer if not ch.isdigit()}
    return (len(kinds) == 1 and 1 <= len(groups[0]) <= 3
            and all(len(group) == 3 and group.isdigit() for group in groups[1:]) and groups[0].isdigit())


# --- request keys in subjects -----------------------------------------------------

_SUBJECT_KEY = re.compile(r"\[[ \t]{0,8}SR-(\d{1,18})[ \t]{0,8}\]", re.IGNORECASE)


def find_subject_keys(subject: str) -> tuple[int, ...]:
    """Request numbers from "[SR-123]" tags, in order, each once; nothing else counts as a key."""
    keys = (int(match.group(1)) for match in _SUBJECT_KEY.finditer(subject[:MAX_SCAN_CHARS]))
    return tuple(dict.fromkeys(keys))


# --- sender authentication ----------------------------------------------------

_RESULT = re.compile(r"\s*([A-Za-z0-9_-]{1,32})(?:/\d{1,3})?\s*=\s*([A-Za-z]{1,16})")
_PROPERTY = re.compile(r"([A-Za-z0-9_-]{1,32})\.([A-Za-z0-9_-]{1,32})\s*=\s*(\"[^\"]{0,512}\"|[^\s;\"]{1,512})")
MAX_AUTH_HEADER_CHARS = 8 * 1024


@dataclass(frozen=True)
class AuthVerdict:
    verdict: str
    dmarc: str | None
    spf: str | None
    dkim: str | None
    summary: str


@dataclass(frozen=True)
class _Method:
    name: str
    result: str
    properties: dict[str, str]


def authenticate(mail: ParsedMail, trusted_authserv_ids: tuple[str, ...]) -> AuthVerdict:
    """The verdict of the topmost Authentication-Results header our own MTA wrote (RFC 8601).

    Headers from any other authserv-id are ignored: a sender can write
    whatever Authentication-Results it likes. "pass" needs DMARC pass or,
    without a DMARC pass or fail, a DKIM signature or SPF domain aligned with
    the From domain; "fail" needs DMARC fail or, without DMARC, both DKIM and
    SPF failing.
    """
    trusted = {value.strip().lower() for value in trusted_authserv_ids if value.strip()}
    if not trusted:
        return AuthVerdict("none", None, None, None, "no trusted authserv-id configured")
    for value in mail.header_all("Authentication-Results"):
        authserv_id, methods = _parse_results(value[:MAX_AUTH_HEADER_CHARS])
        if authserv_id in trusted:
            return _verdict(authserv_id, methods, _domain(mail.from_address))
    return AuthVerdict("none", None, None, None, "no trusted Authentication-Results")


def _verdict(authserv_id: str, methods: list[_Method], from_domain: str | None) -> AuthVerdict:
    dmarc = _result_of(methods, "dmarc")
    spf = _result_of(methods, "spf")
    dkim = _result_of(methods, "dkim")
    if dmarc == "pass":
        verdict = "pass"
    elif dmarc == "fail":
        verdict = "fail"
    elif from_domain and any(_aligned_pass(method, from_domain) for method in methods):
        verdict = "pass"
    elif dmarc in (None, "none") and dkim in ("fail", "softfail") and spf in ("fail", "softfail"):
        verdict = "fail"
    else:
        verdict = "none"
    found = " ".join(f"{name}={result}" for name, result in (("dmarc", dmarc), ("spf", spf), ("dkim", dkim)) if result)
    return AuthVerdict(verdict, dmarc, spf, dkim, f"{found or 'no results'} ({authserv_id})")


def _parse_results(value: str) -> tuple[str, list[_Method]]:
    """authserv-id and the method results of one Authentication-Results value."""
    text = _without_comments(value)
    head, *resinfos = text.split(";")
    words = head.split()
    authserv_id = words[0].lower() if words else ""
    methods = []
    for resinfo in resinfos:
        match = _RESULT.match(resinfo)
        if match:
            properties = {f"{m.group(1)}.{m.group(2)}".lower(): m.group(3).strip('"').lower()
                          for m in _PROPERTY.finditer(resinfo[match.end():])}
            methods.append(_Method(match.group(1).lower(), match.group(2).lower(), properties))
    return authserv_id, methods


def _without_comments(value: str) -> str:
    """Drop (comments), which may nest and may contain ";" (RFC 5322 CFWS), in one pass."""
    out: list[str] = []
    depth = 0
    quoted = False
    for ch in value:
        if ch == '"' and depth == 0:
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
            continue
        elif not quoted and ch == ")" and depth:
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    return "".join(out)


def _result_of(methods: list[_Method], name: str) -> str | None:
    """A method's result; with several (one per DKIM signature), a pass wins."""
    results = [method.result for method in methods if method.name == name]
    if not results:
        return None
    return "pass" if "pass" in results else results[0]


def _aligned_pass(method: _Method, from_domain: str) -> bool:
    if method.result != "pass":
        return False
    if method.name == "dkim":
        domain = method.properties.get("header.d") or _domain(method.properties.get("header.i"))
    elif method.name == "spf":
        domain = _domain(method.properties.get("smtp.mailfrom"))
    else:
        return False
    return _aligns(domain, from_domain)


def _aligns(domain: str | None, from_domain: str) -> bool:
    """Equal to the From domain or a parent of it; a bare top-level domain never counts."""
    if not domain or "." not in domain.strip("."):
        return False
    domain = domain.strip(".").lower()
    return from_domain == domain or from_domain.endswith("." + domain)


def _domain(address: str | None) -> str | None:
    if not address:
        return None
    return address.rpartition("@")[2].strip().strip(".").lower() or None
