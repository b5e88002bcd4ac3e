"""Property-based tests (hypothesis) of the inbound parsers: what turns outside input into an Inbound.

- They raise nothing but their documented error: `inbound_from` only Ignored, the
  webhook's `delivery_inbound` and the events API's `event_inbound` only ValueError, `parse_json` only
  BadJson, and the contact, deep-link and UTM parsers nothing at all.
- What is valid comes through exactly: a message's text (through the real app into the stored row, on
  SQLite and PostgreSQL), a deep link's visitor link and UTM values, a page's UTM parameters, JSON.
- Normalizing twice changes nothing: emails, phone numbers, parsed JSON, callback data.
"""

from __future__ import annotations

import itertools
import json
import re
import string
from datetime import UTC, datetime
from urllib.parse import urlencode

import phonenumbers
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from sqlmodel import select
from telegram import Update

from bot.api.events import event_inbound
from bot.channels.telegram import Ignored, callback_data, inbound_from, parse_deep_link
from bot.channels.telegram_check import wrong_field
from bot.channels.telegram_plain import dedup_key, plain_message
from bot.channels.webchat import touch_from
from bot.channels.webhook import delivery_inbound
from bot.intake.contacts import find_email, find_phone, locale_region, normalize_email, normalize_phone
from bot.intake.inbound import Inbound
from bot.web.jsonbody import MAX_DEPTH, BadJson, parse_json, unstorable
from flows.optout import is_opt_out
from storage.models import Event, Message

from conftest import services_of
from fuzzing import json_value, mutated, nasty_text
from test_fuzz_inbound import PAYLOADS, run_in_thread

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
FAST = settings(max_examples=200, deadline=None, derandomize=True, database=None)
E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
REGIONS = sorted(phonenumbers.SUPPORTED_REGIONS)
# Text a person can send: any Unicode but NUL and lone surrogates (which Telegram never delivers either).
chat_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=300)
telegram_ids = st.integers(1, 2**52)


def no_visitor(link: str) -> str | None:
    return None


# --- Telegram ----------------------------------------------------------------------------------


@st.composite
def text_updates(draw: st.DrawFn) -> dict:
    """A private text message from a drawn person, with drawn names, language and text."""
    person = draw(telegram_ids)
    user = {"id": person, "is_bot": False, "first_name": draw(chat_text)}
    if draw(st.booleans()):
        user["last_name"] = draw(chat_text)
    if draw(st.booleans()):
        user["language_code"] = draw(st.sampled_from(["en", "de", "pt-br", "ru", "zh-hans", "x"]))
    message = {
        "message_id": draw(st.integers(1, 2**31)),
        "from": user,
        "chat": {"id": person, "type": "private", "first_name": user["first_name"]},
        "date": 1767614400,
        "text": draw(chat_text),
    }
    return {"update_id": draw(st.integers(0, 2**40)), "message": message}


@FAST
@given(text_updates())
def test_a_text_update_becomes_an_inbound_with_its_text_chat_and_sender_exactly(data):
    update = Update.de_json(data, None)
    assert wrong_field(update) is None
    message = data["message"]
    inbound = inbound_from(update, NOW, no_visitor)

    assert inbound.text == message["text"]
    assert inbound.kind == ("start" if message["text"].partition(" ")[0].split("@")[0] == "/start" else "message")
    assert inbound.external_id == str(message["chat"]["id"])
    assert inbound.identities[0] == ("telegram", str(message["from"]["id"]))
    assert inbound.dedup_key == f"telegram:update:{data['update_id']}:{message['chat']['id']}:{message['message_id']}"
    assert inbound.profile.first_name == message["from"]["first_name"]


def through_ptb(data: object) -> Inbound | str:
    """What the webhook makes of an update through python-telegram-bot: an Inbound, or why it refuses it."""
    try:
        update = Update.de_json(data, None) if isinstance(data, dict) else None
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError, OSError):
        return "400"
    if update is None or wrong_field(update) is not None:
        return "400"
    try:
        return inbound_from(update, NOW, no_visitor)
    except Ignored as exc:
        return type(exc).__name__


@settings(max_examples=600, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(
    st.one_of(
        text_updates(),
        text_updates().flatmap(mutated),
        st.sampled_from(sorted(PAYLOADS)).flatmap(lambda name: mutated(PAYLOADS[name])),
        st.sampled_from(sorted(PAYLOADS)).map(lambda name: PAYLOADS[name]),
    )
)
@example({"update_id": 1, "message": {"message_id": 1, "from": {"id": 2, "is_bot": True, "first_name": ""},
          "chat": {"id": 2, "type": "private"}, "date": 0, "text": "x"}})  # fmt: skip
def test_the_plain_message_fast_path_makes_the_inbound_python_telegram_bot_makes_or_declines(data):
    """Whatever the fast path accepts, python-telegram-bot's path turns into the very same Inbound."""
    fast = plain_message(data, NOW) if isinstance(data, dict) else None
    if fast is not None:
        assert through_ptb(data) == fast


def test_the_fast_path_takes_the_common_update_and_leaves_the_rest():
    """It must take the plain text message (else it is no use) and leave commands, contacts and buttons."""
    assert plain_message(PAYLOADS["message_text"], NOW) == through_ptb(PAYLOADS["message_text"])
    for name in ("message_start", "message_contact", "callback_query", "group_message", "message_sticker"):
        assert plain_message(PAYLOADS[name], NOW) is None, name


@settings(max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(st.sampled_from(sorted(PAYLOADS)).flatmap(lambda name: mutated(PAYLOADS[name])))
def test_inbound_from_raises_only_ignored_for_any_update_that_passes_the_type_check(data):
    """Any update the webhook lets through (`de_json` took it, `wrong_field` found nothing) is normalized
    or refused with the documented exception: never an AttributeError or TypeError."""
    try:
        update = Update.de_json(data, None) if isinstance(data, dict) else None
    except (AttributeError, KeyError, TypeError, ValueError, OverflowError, OSError):  # the webhook answers 400
        update = None
    assume(update is not None and wrong_field(update) is None)
    try:
        inbound = inbound_from(update, NOW, no_visitor)
    except Ignored:
        return
    assert isinstance(inbound, Inbound)
    assert (isinstance(inbound.text, str) and inbound.text) or inbound.kind in ("blocked", "unblocked")


link_values = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12)


@FAST
@given(
    visitor=st.none()
    | st.tuples(
        st.text("0123456789abcdef", min_size=16, max_size=16), st.text("0123456789abcdef", min_size=12, max_size=12)
    ),
    touch=st.dictionaries(st.sampled_from("smc"), link_values),
)
def test_a_deep_link_gives_back_its_visitor_link_and_utm_values_exactly(visitor, touch):
    pairs = [f"v-{visitor[0]}-{visitor[1]}"] if visitor else []
    pairs += [f"{key}-{value}" for key, value in touch.items()]
    payload = "_".join(pairs)
    assume(0 < len(payload) <= 64)

    link, parsed = parse_deep_link(payload)

    assert link == (f"{visitor[0]}-{visitor[1]}" if visitor else None)
    names = {"s": "source", "m": "medium", "c": "campaign"}
    assert (parsed.as_dict() if parsed else {}) == {names[key]: value for key, value in touch.items()}


@FAST
@given(st.one_of(nasty_text, st.text(string.ascii_letters + string.digits + "_-", max_size=80)))
@example("v-0123456789abcdef-0a1b2c3d4e5f\n")
def test_any_deep_link_payload_parses_without_raising_into_allowed_characters_only(payload):
    link, touch = parse_deep_link(payload)

    assert link is None or re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]{12}", link)
    for value in (touch.as_dict() if touch else {}).values():
        assert re.fullmatch(r"[A-Za-z0-9-]{1,64}", value), value


@FAST
@given(nasty_text.filter(lambda text: not unstorable(text)) | chat_text)
def test_callback_data_fits_telegrams_64_bytes_and_is_a_prefix_of_the_label_and_idempotent(label):
    data = callback_data(label)

    assert len(data.encode()) <= 64 and label.startswith(data)
    assert callback_data(data) == data


# --- the webhook channel and the events API -------------------------------------------------------

ids = st.from_regex(r"\A[A-Za-z0-9_.:@-]{1,128}\Z")


@FAST
@given(delivery_id=ids, conversation=ids, user_id=ids, kind=st.sampled_from(["message", "button"]), text=chat_text)
def test_a_valid_webhook_delivery_becomes_an_inbound_with_its_text_exactly(
    delivery_id, conversation, user_id, kind, text
):
    assume(text.strip())
    data = {"id": delivery_id, "type": kind, "conversation": conversation, "user": {"id": user_id}, "text": text}

    inbound = delivery_inbound("acme", data, NOW)

    assert (inbound.text, inbound.kind) == (text, kind)
    assert inbound.dedup_key == f"webhook:acme:{delivery_id}"
    assert inbound.external_id == f"acme:{conversation}"
    assert inbound.identities == (("webhook:acme", user_id),)


valid_delivery = {
    "id": "d-1",
    "type": "message",
    "conversation": "t-1",
    "user": {"id": "u-1", "name": "Ann Lee"},
    "text": "hi",
}


@FAST
@given(st.one_of(json_value, mutated(valid_delivery)))
@example({**valid_delivery, "id": "d-1\n"})
def test_any_webhook_body_is_an_inbound_or_a_value_error_with_ids_of_the_documented_characters(data):
    try:
        inbound = delivery_inbound("acme", data, NOW)
    except ValueError as exc:
        assert str(exc)
        return
    delivery_id = inbound.dedup_key.removeprefix("webhook:acme:")
    for value in (delivery_id, inbound.external_id.removeprefix("acme:"), inbound.identities[0][1]):
        assert re.fullmatch(r"[A-Za-z0-9_.:@-]{1,128}", value, re.ASCII), value


valid_event = {"id": "o-1", "type": "purchase", "lead": {"email": "ann@example.com"}, "properties": {"total": 99}}


@FAST
@given(st.one_of(json_value, mutated(valid_event)))
def test_any_events_api_body_is_an_inbound_or_a_value_error(data):
    try:
        inbound = event_inbound(data, NOW)
    except ValueError as exc:
        assert str(exc)
        return
    assert inbound.kind == "custom" and inbound.name == data["type"]


# --- JSON --------------------------------------------------------------------------------------

storable_json = json_value.filter(
    lambda value: unstorable(value) is None and "NaN" not in json.dumps(value) and "Infinity" not in json.dumps(value)
)


@FAST
@given(storable_json)
def test_storable_json_round_trips_and_parsing_is_idempotent(value):
    parsed = parse_json(json.dumps(value))

    assert parsed == value
    assert parse_json(json.dumps(parsed)) == parsed


@FAST
@given(
    st.one_of(
        st.binary(max_size=200),
        nasty_text,
        st.integers(1, 3 * MAX_DEPTH).map(lambda levels: "[" * levels + "]" * levels),
        json_value.map(json.dumps),
    )
)
def test_parse_json_raises_only_bad_json_and_returns_only_storable_json(raw):
    try:
        value = parse_json(raw)
    except BadJson as exc:
        assert str(exc)
        return
    assert depth(value) <= MAX_DEPTH
    for text in strings(value):
        assert not any(char == "\x00" or 0xD800 <= ord(char) <= 0xDFFF for char in text), repr(text)
    assert "NaN" not in json.dumps(value) and "Infinity" not in json.dumps(value)


def strings(value: object) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, dict):
        return [*value, *(text for child in value.values() for text in strings(child))]
    if isinstance(value, list):
        return [text for child in value for text in strings(child)]
    return [value] if isinstance(value, str) else []


def depth(value: object) -> int:
    """How many objects and arrays are nested in a JSON value (counted here apart from the app's own)."""
    if isinstance(value, dict):
        return 1 + max((depth(child) for child in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(child) for child in value), default=0)
    return 0


# --- the widget's page views: UTM and referrer ----------------------------------------------------

utm_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=250)


@FAST
@given(
    utm=st.dictionaries(st.sampled_from(["source", "medium", "campaign", "term", "content"]), utm_values),
    path=st.sampled_from(["/", "/pricing", "/a/b/c", "/ünïcode"]),
    referrer=st.sampled_from(["", "https://www.google.com/search?q=x", "https://shop.example/other"]),
)
def test_a_page_views_utm_parameters_come_back_exactly(utm, path, referrer):
    url = f"https://shop.example{path}?{urlencode({f'utm_{key}': value for key, value in utm.items()})}"

    touch = touch_from(url, referrer).as_dict()

    for key, value in utm.items():
        assert touch[key] == value[:200], (key, value, touch)
    if "source" not in utm and referrer.startswith("https://www.google.com"):
        assert (touch["source"], touch["medium"]) == ("www.google.com", utm.get("medium", "referral")[:200])
    assert touch["landing"] == path
    assert touch.get("referrer") == (referrer or None)


@FAST
@given(url=nasty_text | st.text(string.printable), referrer=nasty_text | st.text(string.printable))
@example(url="http://[::1/pricing", referrer="")
@example(url="https://shop.example/", referrer="http://[oops")
def test_any_url_and_referrer_give_a_touch_without_raising(url, referrer):
    touch = touch_from(url, referrer)

    assert all(isinstance(value, str) for value in touch.as_dict().values())


# --- contacts -----------------------------------------------------------------------------------

local_parts = st.from_regex(r"\A[a-z0-9][a-z0-9._+-]{0,20}[a-z0-9]\Z").filter(lambda local: ".." not in local)
domains = st.sampled_from(["example.com", "Mail.Example.ORG", "shop.co.uk", "a-b.example.net"])


@FAST
@given(
    local=local_parts,
    domain=domains,
    before=st.sampled_from(["", "mail me at ", "Email: ", "(", "hi\n"]),
    after=st.sampled_from(["", ".", " thanks", ")", "!\n"]),
    upper=st.booleans(),
)
def test_an_email_in_a_message_is_found_and_normalized_to_lower_case(local, domain, before, after, upper):
    address = f"{local}@{domain}"
    written = address.upper() if upper else address

    assert find_email(f"{before}{written}{after}") == address.lower()
    assert normalize_email(written) == address.lower()


@FAST
@given(nasty_text | st.text(string.printable))
def test_email_normalizing_never_raises_and_is_idempotent(text):
    email = normalize_email(text)
    found = find_email(text)

    assert email is None or normalize_email(email) == email
    assert found is None or normalize_email(found) == found


@FAST
@given(
    region=st.sampled_from(REGIONS),
    style=st.sampled_from(list(phonenumbers.PhoneNumberFormat.__dict__)).filter(str.isupper),
)
def test_a_phone_number_written_any_way_normalizes_to_its_e164(region, style):
    number = phonenumbers.example_number(region)
    assume(number is not None)
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    written = phonenumbers.format_number(number, getattr(phonenumbers.PhoneNumberFormat, style))

    assert normalize_phone(written, region) == e164
    assert normalize_phone(e164) == e164
    assert find_phone(f"call me on {written} please", f"xx-{region}") == e164


@FAST
@given(
    text=nasty_text | st.text("0123456789 +-()."),
    locale=st.none() | nasty_text | st.sampled_from(["en-US", "de_DE", "pt-br", "en-é1", "x-ß"]),
)
def test_phone_parsing_never_raises_and_gives_e164_or_nothing(text, locale):
    region = locale_region(locale)
    found = find_phone(text, locale)
    normalized = normalize_phone(text, region)

    assert region is None or re.fullmatch(r"[A-Z]{2}", region), region
    for phone in (found, normalized):
        assert phone is None or (E164.match(phone) and normalize_phone(phone) == phone), phone


@FAST
@given(nasty_text | chat_text, st.lists(st.text(max_size=12), max_size=3))
def test_opt_out_detection_never_raises(text, words):
    assert is_opt_out(text, words) in (True, False)


# --- through the app: the text stored is the text sent -------------------------------------------

SECRET = "property-secret"
HEADERS = {"X-Telegram-Bot-Api-Secret-Token": SECRET}


@pytest.fixture
async def telegram_client(make_client, settings, fake_telegram):  # type: ignore[no-untyped-def]
    from fake_telegram import TOKEN

    return await make_client(
        settings.with_(telegram_token=TOKEN, telegram_secret=SECRET, telegram_api_url=fake_telegram.url)
    )


async def test_a_text_update_is_stored_with_its_text_exactly_and_once(telegram_client, db):
    """On SQLite and PostgreSQL: emoji, right-to-left marks, combining characters, line breaks, spaces."""
    client = telegram_client

    update_ids = itertools.count(1)

    async def check(data: dict) -> str:
        text = data["message"]["text"]
        if text.partition(" ")[0].split("@")[0] == "/start":
            return "start"
        data["update_id"] = next(update_ids)  # hypothesis repeats values; a repeated update_id is a retry
        for _ in range(2):  # Telegram's retry changes nothing
            answer = await client.post("/webhooks/telegram", json=data, headers=HEADERS)
            assert answer.status == 200, await answer.text()
        await services_of(client).drain()  # answered once in the inbox; taken in right after
        async with db() as session:
            query = select(Message.text).join(Event, Event.id == Message.event_id)
            key = dedup_key(data["update_id"], data["message"]["chat"]["id"], data["message"]["message_id"])
            stored = (await session.exec(query.where(Event.dedup_key == key))).all()
        assert stored == [text]
        await services_of(client).drain()
        return "stored"

    await run_in_thread(check, text_updates(), 40)
