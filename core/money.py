"""Money as integer minor units plus an ISO 4217 currency code.

Amounts arrive as decimal strings ("12.50") from files, commands and mail and
leave as integers; a float never touches them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from core.errors import InvalidInput

# ISO 4217 minor-unit exponents that differ from the usual two decimals.
_EXPONENTS: dict[str, int] = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0,
    "KRW": 0, "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0,
    "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "CLF": 4, "UYW": 4,
}
MAX_MINOR = 2**63 - 1  # what a BIGINT column holds
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_DECIMAL = re.compile(r"^[0-9]+(\.[0-9]+)?$")


def normalize_currency(code: str) -> str:
    """Upper-case and check a three-letter ISO 4217 code."""
    value = (code or "").strip().upper()
    if not _CURRENCY.match(value):
        raise InvalidInput(f"currency {code!r} is not a three-letter ISO 4217 code")
    return value


def exponent(currency: str) -> int:
    """How many decimal places the currency's minor unit has."""
    return _EXPONENTS.get(normalize_currency(currency), 2)


@dataclass(frozen=True, order=True)
class Money:
    minor: int
    currency: str

    def __str__(self) -> str:
        return f"{format_minor(self.minor, self.currency)} {self.currency}"


def parse_amount(text: str, currency: str) -> Money:
    """Parse a non-negative decimal string into minor units, refusing excess precision.

    "12.5" EUR is 1250; "12.345" EUR is refused rather than rounded, because a
    silently rounded adjustment is exactly what finance must never find later.
    """
    cur = normalize_currency(currency)
    raw = (text or "").strip()
    if not _DECIMAL.match(raw):
        raise InvalidInput(f"amount {text!r} is not a positive decimal number like 120.50")
    try:
        value = Decimal(raw)
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise InvalidInput(f"amount {text!r} is not a decimal number") from exc
    places = exponent(cur)
    scaled = value.scaleb(places)
    if scaled != scaled.to_integral_value():
        raise InvalidInput(f"amount {text!r} has more than {places} decimal places for {cur}")
    if scaled > MAX_MINOR:
        raise InvalidInput(f"amount {text!r} {cur} is too large")
    return Money(int(scaled), cur)


def format_minor(minor: int, currency: str) -> str:
    """Render minor units as a decimal string: 1250 EUR -> "12.50"."""
    places = exponent(currency)
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor)).rjust(places + 1, "0")
    if places == 0:
        return f"{sign}{digits}"
    return f"{sign}{digits[:-places]}.{digits[-places:]}"
