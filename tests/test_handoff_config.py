"""The [handoff] settings: defaults, business hours, and errors that name the key."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest

from bot.config import ConfigError, load_settings, settings_from
from bot.intake.warm import intent_pattern
from flows.hours import BusinessHours

from conftest import ROOT


def test_the_shipped_settings():
    policy = load_settings(ROOT / "config.toml", env={}).handoff
    assert policy.warm_score == 75 and policy.sla == timedelta(minutes=5)
    assert "talk to a human" in policy.intent_words and "客服" in policy.intent_words
    assert policy.hours == BusinessHours.parse("Mon-Fri 09:00-18:00", "UTC")
    assert policy.escalation == timedelta(minutes=15)


def test_extra_intent_words_add_to_the_built_in_ones_and_off_turns_the_score_off():
    policy = settings_from({"handoff": {"intent_words": ["demo"], "warm_score": "off"}}, {}).handoff
    assert policy.intent_words[-1] == "demo" and "price" in policy.intent_words
    assert policy.warm_score is None


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"business_hours": "9 to 5"}, "handoff.business_hours"),
        ({"business_hours": "Mon-Fri 18:00-09:00"}, "handoff.business_hours"),
        ({"sla": "soon"}, "handoff.sla"),
        ({"warm_score": "high"}, "handoff.warm_score"),
        ({"timezone": "Mars/Olympus"}, "handoff.timezone"),
        ({"escalation": "often"}, "handoff.escalation"),
        ({"intent_words": [""]}, "handoff.intent_words"),
        ({"colour": "red"}, "handoff.colour"),
    ],
)
def test_a_bad_setting_names_its_key(table, key):
    with pytest.raises(ConfigError, match=f"^{re.escape(key)}"):
        settings_from({"handoff": table}, {})


def test_the_operators_chat_is_a_chat_id():
    assert settings_from({}, {"KINDLING_OPERATORS_CHAT": "-1001234567890"}).operators_chat == -1001234567890
    with pytest.raises(ConfigError, match="^KINDLING_OPERATORS_CHAT"):
        settings_from({}, {"KINDLING_OPERATORS_CHAT": "@operators"})


def test_business_hours_open_and_next_opening():
    hours = BusinessHours.parse("Mon-Fri 09:00-18:00", "Europe/Berlin")
    friday_evening = datetime(2026, 1, 9, 17, 30, tzinfo=UTC)  # 18:30 in Berlin
    assert not hours.is_open(friday_evening)
    assert hours.next_open(friday_evening) == datetime(2026, 1, 12, 8, 0, tzinfo=UTC)
    assert hours.next_open(datetime(2026, 1, 12, 8, 30, tzinfo=UTC)) == datetime(2026, 1, 12, 8, 30, tzinfo=UTC)
    assert BusinessHours.parse("Fri-Mon 10:00-14:00").days == {4, 5, 6, 0}
    assert BusinessHours.parse("always") is None


@pytest.mark.parametrize(
    ("word", "text", "found"),
    [
        ("call me", "Please CALL  me tomorrow", True),
        ("call me", "recall me later", False),
        ("price", "prices?", False),
        ("оператор", "Нужен ОПЕРАТОР.", True),
        ("人工", "我需要人工服务", True),
    ],
)
def test_intent_words_are_whole_words_except_in_cjk(word, text, found):
    assert bool(intent_pattern(word).search(text)) is found
