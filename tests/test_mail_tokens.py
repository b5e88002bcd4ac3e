"""Signed reply addresses and unsubscribe links: only ours are read, and reply tokens expire."""

from __future__ import annotations

from datetime import date, timedelta

from bot.mail.tokens import (
    REPLY_DAYS,
    read_reply_token,
    read_unsubscribe_token,
    reply_address,
    token_in_address,
    unsubscribe_token,
)

SECRET = b"a secret key"
TODAY = date(2026, 12, 7)


def test_a_reply_address_leads_back_to_its_conversation_until_it_expires():
    address = reply_address(SECRET, 42, "in.acme.example", TODAY)
    local = address.partition("@")[0]
    assert len(local) <= 64  # RFC 5321's limit on a local part
    token = token_in_address(f"Acme <{address.upper()}>")  # a mail server may change the case
    assert token is not None
    assert read_reply_token(SECRET, token, TODAY) == 42
    assert read_reply_token(SECRET, token, TODAY + timedelta(days=REPLY_DAYS)) == 42
    assert read_reply_token(SECRET, token, TODAY + timedelta(days=REPLY_DAYS + 1)) is None


def test_a_forged_or_altered_reply_token_names_nobody():
    token = token_in_address(reply_address(SECRET, 42, "in.acme.example", TODAY))
    assert token is not None
    conversation, day, signature = token.split("-")
    assert read_reply_token(SECRET, f"43-{day}-{signature}", TODAY) is None  # someone else's conversation
    assert read_reply_token(b"another key", token, TODAY) is None
    assert read_reply_token(SECRET, f"{conversation}-{day}-{signature[:-1]}", TODAY) is None
    assert read_reply_token(SECRET, "", TODAY) is None
    assert token_in_address("hello@acme.example") is None


def test_an_unsubscribe_token_names_its_lead_and_no_other():
    token = unsubscribe_token(SECRET, 7)
    assert read_unsubscribe_token(SECRET, token) == 7
    assert read_unsubscribe_token(SECRET, token.replace("7-", "8-", 1)) is None
    assert read_unsubscribe_token(b"another key", token) is None
