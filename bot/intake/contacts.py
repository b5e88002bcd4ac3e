"""Find emails and phone numbers in what visitors write, and normalize them."""

from __future__ import annotations

import re

import phonenumbers
from email_validator import EmailNotValidError, validate_email

_EMAIL_CANDIDATE = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")


def normalize_email(text: str) -> str | None:
    """`Ann@Example.COM` -> `ann@example.com`; None if it is not an address."""
    try:
        checked = validate_email(text.strip(), check_deliverability=False)
    except EmailNotValidError:
        return None
    return checked.normalized.lower()


def normalize_phone(text: str, region: str | None = None) -> str | None:
    """A phone number in E.164 (`+4915112345678`); None if it is not a valid number."""
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def find_email(text: str) -> str | None:
    """The first valid email address in a message."""
    for candidate in _EMAIL_CANDIDATE.findall(text):
        email = normalize_email(candidate.rstrip("."))
        if email:
            return email
    return None


def find_phone(text: str, locale: str | None = None) -> str | None:
    """The first valid phone number in a message; numbers without +country use the locale's region."""
    region = locale_region(locale)
    for match in phonenumbers.PhoneNumberMatcher(text, region or "ZZ"):
        return phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
    return None


def locale_region(locale: str | None) -> str | None:
    """`en-US` -> `US`; None when the locale names no region."""
    if not locale:
        return None
    parts = locale.replace("_", "-").split("-")
    region = parts[-1]
    return region.upper() if len(parts) > 1 and len(region) == 2 and region.isascii() and region.isalpha() else None
