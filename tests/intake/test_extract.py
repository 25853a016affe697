"""Invoice numbers, amounts, request keys and sender authentication read from mail, and what must not be read."""

from __future__ import annotations

import time

import pytest

from core.errors import InvalidInput
from core.money import Money
from intake.extract import (
    DEFAULT_INVOICE_PATTERN, MAX_SCAN_CHARS, AuthVerdict, authenticate, compile_invoice_pattern, find_amounts,
    find_invoice_numbers, find_subject_keys,
)
from intake.parsing import ParsedMail, parse_mail

# --- invoice numbers ----------------------------------------------------------------


def test_default_pattern_normalises_and_deduplicates_in_order() -> None:
    text = "About inv100 and INV-2041 (again: Inv-100, INV100), also INV-55."
    assert find_invoice_numbers(text) == ("INV-100", "INV-2041", "INV-55")


@pytest.mark.parametrize("text", [
    "INVOICE 100", "INV 100", "INV-1", "xINV-300", "INV-300x", "INV_300", "INV-1234567890123", "IN-100", "INV-",
])
def test_default_pattern_does_not_match(text: str) -> None:
    assert find_invoice_numbers(text) == ()


def test_default_pattern_is_the_documented_one() -> None:
    assert DEFAULT_INVOICE_PATTERN == r"\bINV-?\d{2,12}\b"


def test_custom_pattern_returns_matches_as_written() -> None:
    text = "Rechnung re-2026/0042 und RE-2026/0042 sowie RE-2025/0001"
    assert find_invoice_numbers(text, r"\bRE-\d{4}/\d{4}\b") == ("re-2026/0042", "RE-2026/0042", "RE-2025/0001")


def test_custom_pattern_matches_are_stripped() -> None:
    assert find_invoice_numbers("see  A 123 ", r"\sA \d+\s") == ("A 123",)


@pytest.mark.parametrize(("pattern", "wording"), [
    ("INV-(\\d+", "not a valid regular expression"),
    ("[unclosed", "not a valid regular expression"),
    ("", "empty"),
    (r"\d*", "matches the empty string"),
])
def test_bad_patterns_are_refused_clearly(pattern: str, wording: str) -> None:
    with pytest.raises(InvalidInput, match=wording):
        compile_invoice_pattern(pattern)
    with pytest.raises(InvalidInput, match=wording):
        find_invoice_numbers("INV-100", pattern)


def test_compiled_patterns_ignore_case() -> None:
    assert compile_invoice_pattern(r"ab-\d+").search("AB-12") is not None


# --- amounts --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "amount"), [
    ("EUR 1,234.56", Money(123456, "EUR")),
    ("1.234,56 EUR", Money(123456, "EUR")),
    ("€12", Money(1200, "EUR")),
    ("€ 12,50", Money(1250, "EUR")),
    ("12,50€", Money(1250, "EUR")),
    ("$1,000", Money(100000, "USD")),
    ("US$ 9.99", Money(999, "USD")),
    ("USD 40", Money(4000, "USD")),
    ("40 usd", Money(4000, "USD")),
    ("£5.50", Money(550, "GBP")),
    ("CHF 1'200.00", Money(120000, "CHF")),
    ("¥500", Money(500, "JPY")),
    ("1,234 EUR", Money(123400, "EUR")),
    ("1 234,56 €", Money(123456, "EUR")),
    ("EUR 1,234,567.89", Money(123456789, "EUR")),
    ("paid 40EUR", Money(4000, "EUR")),
    ("SEK 99", Money(9900, "SEK")),
])
def test_amounts_with_a_currency(text: str, amount: Money) -> None:
    assert find_amounts(f"You charged me {text} yesterday.") == (amount,)


@pytest.mark.parametrize("text", [
    "order 1234", "INV-2041", "40 euros", "EURO 5", "version 1.2.3 EUR",
    "2026-01-05 EUR", "10:30 EUR", "EUR 10:30", "5/30 EUR",
    "1,2345 EUR",        # a separator followed by four digits is no number format
    "EUR 1,234,56",      # the decimal point is also the grouping character
    "¥500.50",           # yen have no decimals
    "EUR 1.234,567",     # three decimals for a currency with two
    "-12 EUR", "C$10", "AU$10", "ZEUR 5", "$", "EUR",
    "€" + "1" * 30,
])
def test_things_that_are_not_amounts(text: str) -> None:
    assert find_amounts(text) == ()


def test_a_lone_separator_before_three_digits_groups_thousands() -> None:
    assert find_amounts("EUR 12.345 or 12,345 EUR") == (Money(1234500, "EUR"),)


def test_amounts_in_order_without_repeats() -> None:
    text = "Charged €12,50 twice (€ 12,50 and 12.50 EUR), then USD 40 and $5."
    assert find_amounts(text) == (Money(1250, "EUR"), Money(4000, "USD"), Money(500, "USD"))


def test_amounts_beyond_the_scan_limit_are_not_read() -> None:
    assert find_amounts("x" * MAX_SCAN_CHARS + " EUR 12") == ()
    assert find_amounts("x" * (MAX_SCAN_CHARS - 10) + " EUR 12") == (Money(1200, "EUR"),)


def test_amount_scan_stays_fast_on_digit_runs() -> None:
    started = time.perf_counter()
    find_amounts(("1" * 5000 + " ") * 40 + "1,1,1,1," * 20_000)
    assert time.perf_counter() - started < 5  # a backtracking pattern would take minutes


# --- subject keys -----------------------------------------------------------------------


def test_subject_keys() -> None:
    assert find_subject_keys("Re: [SR-12] Refund [ sr-7 ] [SR-12][SR-007]") == (12, 7)


@pytest.mark.parametrize("subject", [
    "SR-12 without brackets", "[SR 12]", "[SR-]", "[SR-12a]", "[SR- 12]", "[XSR-12]", "(SR-12)",
    "[SR-1234567890123456789]",
])
def test_not_subject_keys(subject: str) -> None:
    assert find_subject_keys(subject) == ()


# --- authentication ----------------------------------------------------------------------

TRUSTED = ("mx.desk.example",)


def mail_with(*results: str, sender: str = "carla@example.com") -> ParsedMail:
    headers = "".join(f"Authentication-Results: {value}\r\n" for value in results)
    return parse_mail(f"{headers}From: Carla <{sender}>\r\nSubject: hi\r\n\r\nbody\r\n".encode())


def test_dmarc_pass_from_our_mta() -> None:
    verdict = authenticate(mail_with(
        "mx.desk.example;\r\n dkim=pass header.d=example.com header.s=s1;\r\n"
        " spf=pass smtp.mailfrom=example.com;\r\n dmarc=pass (p=reject) header.from=example.com"), TRUSTED)
    assert verdict == AuthVerdict("pass", "pass", "pass", "pass", "dmarc=pass spf=pass dkim=pass (mx.desk.example)")


def test_forged_header_from_an_untrusted_authserv_id_is_ignored() -> None:
    mail = mail_with("mx.desk.example; spf=fail smtp.mailfrom=example.com; dkim=fail; dmarc=fail",
                     "mx.desk.example.evil.test; spf=pass; dkim=pass header.d=example.com; dmarc=pass")
    assert authenticate(mail, TRUSTED).verdict == "fail"
    only_forged = mail_with("evil.test; dmarc=pass; dkim=pass header.d=example.com")
    assert authenticate(only_forged, TRUSTED) == AuthVerdict("none", None, None, None,
                                                             "no trusted Authentication-Results")


def test_forged_header_below_ours_does_not_count_either() -> None:
    mail = mail_with("mx.desk.example; spf=none; dkim=none", "mx.desk.example; dmarc=pass")
    assert authenticate(mail, TRUSTED).verdict == "none"  # only the topmost trusted header is read


def test_no_trusted_ids_configured_means_none() -> None:
    verdict = authenticate(mail_with("mx.desk.example; dmarc=pass"), ())
    assert verdict == AuthVerdict("none", None, None, None, "no trusted authserv-id configured")
    assert authenticate(mail_with("mx.desk.example; dmarc=pass"), ("", " ")).verdict == "none"


def test_authserv_id_is_case_insensitive_and_may_carry_a_version() -> None:
    assert authenticate(mail_with("MX.Desk.Example 1; dmarc=pass"), TRUSTED).verdict == "pass"


@pytest.mark.parametrize(("results", "sender", "verdict"), [
    ("dkim=pass header.d=example.com", "carla@example.com", "pass"),
    ("dkim=pass header.d=example.com", "carla@mail.example.com", "pass"),      # parent domain
    ("dkim=pass header.i=@example.com", "carla@example.com", "pass"),
    ("dkim=pass header.d=mail.example.com", "carla@example.com", "none"),     # child, not parent
    ("dkim=pass header.d=esp.example.net", "carla@example.com", "none"),      # someone else's signature
    ("dkim=pass header.d=com", "carla@example.com", "none"),                  # a bare TLD never aligns
    ("dkim=pass header.d=ample.com", "carla@example.com", "none"),            # suffix, not parent
    ("spf=pass smtp.mailfrom=bounces@example.com", "carla@example.com", "pass"),
    ("spf=pass smtp.mailfrom=example.org", "carla@example.com", "none"),
    ("dmarc=none; dkim=pass header.d=example.com", "carla@example.com", "pass"),
    ("dmarc=fail; dkim=pass header.d=example.com", "carla@example.com", "fail"),
    ("dkim=fail header.d=example.com; spf=softfail smtp.mailfrom=example.com", "carla@example.com", "fail"),
    ("dkim=fail header.d=example.com; spf=pass smtp.mailfrom=other.net", "carla@example.com", "none"),
    ("dkim=fail; spf=fail; dmarc=temperror", "carla@example.com", "none"),
    ("none", "carla@example.com", "none"),
])
def test_verdicts_without_and_with_dmarc(results: str, sender: str, verdict: str) -> None:
    assert authenticate(mail_with(f"mx.desk.example; {results}", sender=sender), TRUSTED).verdict == verdict


def test_comments_may_contain_semicolons() -> None:
    verdict = authenticate(mail_with(
        "mx.desk.example (version 1; build 2); dkim=pass (2048-bit key; secure) header.d=example.com;"
        " spf=softfail (domain of transitioning x; whatever) smtp.mailfrom=example.com"), TRUSTED)
    assert (verdict.verdict, verdict.dkim, verdict.spf, verdict.dmarc) == ("pass", "pass", "softfail", None)
    assert verdict.summary == "spf=softfail dkim=pass (mx.desk.example)"


def test_several_dkim_signatures_one_passing() -> None:
    verdict = authenticate(mail_with(
        "mx.desk.example; dkim=fail header.d=esp.example.net; dkim=pass header.d=example.com"), TRUSTED)
    assert (verdict.verdict, verdict.dkim) == ("pass", "pass")


def test_trusted_header_without_results() -> None:
    verdict = authenticate(mail_with("mx.desk.example; none"), TRUSTED)
    assert verdict == AuthVerdict("none", None, None, None, "no results (mx.desk.example)")
