"""What the raw-bytes fuzz (test_fuzz_inbound.py) found, one test per bug: each used to be a 500 or a 503.

A 500 is a bug a sender cannot fix; a 503 on input that can never be stored is worse, because Telegram
and the chat providers retry a 5xx for hours. Each case must now be a clear 4xx with nothing stored.
"""

from __future__ import annotations

import gzip
import json

import pytest

from bot.web.signing import signed_headers
from storage.models import Event, Lead, Message

from conftest import ACME, API_KEY, TELEGRAM_SECRET, rows, services_of
from test_fuzz_inbound import PAYLOADS, raw_post

TELEGRAM = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET, "Content-Type": "application/json"}
DEEP = ("[" * 100_000 + "]" * 100_000).encode()  # 200 KB, under the body limit


async def nothing_stored(db) -> bool:  # type: ignore[no-untyped-def]
    return not await rows(db, Lead) and not await rows(db, Event)


async def post_signed(client, clock, body: bytes):  # type: ignore[no-untyped-def]
    headers = signed_headers(ACME.secret, body, clock.now())
    return await client.post("/webhooks/inbound/acme", data=body, headers=headers)


def update(**message: object) -> bytes:
    data = json.loads(json.dumps(PAYLOADS["message_text"]))
    data["message"].update(message)
    return json.dumps(data).encode()


def delivery(**fields: object) -> bytes:
    body = {"id": "d-1", "conversation": "t-1", "user": {"id": "u-1"}, "text": "hello", **fields}
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (update(text=True), "message.text"),
        (update(text=["a list"]), "message.text"),
        (update(chat=None), "message.chat"),
        (update(chat={"id": "5550001", "type": "private"}), "message.chat.id"),
        (update(**{"from": {"id": 5550001, "is_bot": False, "first_name": 7}}), "message.from.first_name"),
    ],
    ids=["text-bool", "text-list", "chat-null", "chat-id-string", "first-name-number"],
)
async def test_a_telegram_update_with_a_field_of_the_wrong_type_is_a_400_naming_it(telegram_client, db, body, field):
    response = await telegram_client.post("/webhooks/telegram", data=body, headers=TELEGRAM)

    assert response.status == 400
    assert field in (await response.json())["error"]
    assert await nothing_stored(db)


@pytest.mark.parametrize(
    ("path", "status"),
    [("/webhooks/telegram", 400), ("/webhooks/inbound/acme", 400), ("/api/events", 400)],
)
async def test_json_nested_too_deep_for_the_parser_is_a_400(telegram_client, db, clock, path, status):
    headers = {**TELEGRAM, **signed_headers(ACME.secret, DEEP, clock.now()), "Authorization": f"Bearer {API_KEY}"}
    response = await telegram_client.post(path, data=DEEP, headers=headers)

    assert response.status == status
    assert "nested" in (await response.json())["error"]
    assert await nothing_stored(db)


async def test_json_nested_deeper_than_the_limit_in_event_properties_is_refused(telegram_client, db):
    properties = "[" * 40 + "]" * 40  # parses, but would be stored and written back out at any depth
    body = f'{{"type": "signup", "lead": {{"email": "a@example.com"}}, "properties": {{"deep": {properties}}}}}'
    response = await telegram_client.post("/api/events", data=body, headers={"Authorization": f"Bearer {API_KEY}"})

    assert response.status == 422 and "nested" in (await response.json())["error"]
    assert await nothing_stored(db)


async def test_a_widget_frame_nested_too_deep_is_answered_with_an_error_and_the_socket_stays_open(telegram_client, db):
    ws = await telegram_client.ws_connect("/chat/ws")
    await ws.send_json({"type": "hello", "visitor": None, "token": None})
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"

    await ws.send_str("[" * 5_000 + "]" * 5_000)
    assert (await ws.receive_json(timeout=5))["type"] == "error"
    await ws.send_json({"type": "message", "id": "7b0e5f7e-4a9e-4f43-9a5b-2a1d6a0c5e11", "text": "still there?"})
    while (await ws.receive_json(timeout=5))["type"] != "ack":
        pass
    await ws.close()
    assert [message.text for message in await rows(db, Message, Message.direction == "in")] == ["still there?"]


async def test_a_webhook_delivery_whose_type_is_not_a_string_is_a_422(telegram_client, db, clock):
    body = delivery(type=["message"])
    response = await post_signed(telegram_client, clock, body)

    assert response.status == 422 and "'type'" in (await response.json())["error"]
    assert await nothing_stored(db)


@pytest.mark.parametrize("text", ["\x00", "nul \x00 inside", "\ud800", "a lone \udfff surrogate"])
async def test_text_no_database_can_store_is_a_422_not_a_retry_forever_503(telegram_client, db, clock, text):
    """NUL: PostgreSQL refuses it in text (was 503, so the provider retried it for ever); lone surrogates:
    not encodable as UTF-8 (was 500 on SQLite and PostgreSQL)."""
    body = delivery(text=text)
    response = await post_signed(telegram_client, clock, body)

    assert response.status == 422 and "NUL" in (await response.json())["error"]
    assert await nothing_stored(db)


NUMBERS = ["1e400", "-1e400", "NaN", "Infinity", "-Infinity"]  # the first two were Infinity once parsed


@pytest.mark.parametrize("number", NUMBERS)
async def test_a_number_no_database_can_store_is_a_422_naming_the_field_on_the_events_api(telegram_client, db, number):
    """1e400 was stored as Infinity on SQLite (every later read of the lead was invalid JSON) and was a 503 for
    ever on PostgreSQL; NaN and Infinity literals were a 400 that did not say where."""
    body = (
        f'{{"type": "cart", "lead": {{"email": "a@example.com"}}, "properties": {{"items": [{{"price": {number}}}]}}}}'
    )
    response = await telegram_client.post("/api/events", data=body, headers={"Authorization": f"Bearer {API_KEY}"})

    assert response.status == 422
    assert "'properties.items[0].price' must be a finite number" in (await response.json())["error"]
    assert await nothing_stored(db)


@pytest.mark.parametrize("number", NUMBERS)
async def test_a_number_no_database_can_store_is_a_422_naming_the_field_on_the_webhooks(
    telegram_client, db, clock, number
):
    signed = delivery(user={"id": "u-1", "age": 12345}).replace(b"12345", number.encode())
    response = await post_signed(telegram_client, clock, signed)
    assert response.status == 422 and "'user.age' must be a finite number" in (await response.json())["error"]

    telegram = update(date=12345).replace(b"12345", number.encode())
    response = await telegram_client.post("/webhooks/telegram", data=telegram, headers=TELEGRAM)
    assert response.status == 422 and "'message.date' must be a finite number" in (await response.json())["error"]
    assert await nothing_stored(db)


async def test_a_body_that_is_not_the_compression_it_claims_is_a_400(telegram_client, db):
    headers = {**TELEGRAM, "Content-Encoding": "gzip"}
    broken = await telegram_client.post("/webhooks/telegram", data=b"\x1f\x8b not gzip at all", headers=headers)
    assert broken.status == 400 and "encoding" in (await broken.json())["error"]

    body = gzip.compress(json.dumps(PAYLOADS["message_text"]).encode())  # real gzip still works
    assert (await telegram_client.post("/webhooks/telegram", data=body, headers=headers)).status == 200
    await services_of(telegram_client).drain()
    assert len(await rows(db, Event, Event.type == "message")) == 1


@pytest.mark.parametrize(
    ("path", "header", "status"),
    [
        ("/webhooks/telegram", b"X-Telegram-Bot-Api-Secret-Token", 403),
        ("/webhooks/inbound/acme", b"X-Kindling-Signature", 403),
        ("/api/events", b"Authorization", 401),
        ("/api/events", b"X-Api-Key", 401),
    ],
)
async def test_header_bytes_that_are_not_utf8_are_refused_not_a_500(telegram_client, db, clock, path, header, status):
    body = json.dumps(PAYLOADS["message_text"]).encode()
    signed = signed_headers(ACME.secret, body, clock.now())
    headers = {name.encode(): value.encode() for name, value in signed.items()}
    headers[header] = (b"Bearer " if header == b"Authorization" else b"") + b"s\xe9cret\xff"

    answer_status, _, answer = await raw_post(telegram_client, path, headers, body)

    assert answer_status == status and json.loads(answer)["error"]
    assert await nothing_stored(db)


@pytest.mark.parametrize("timestamp", ["²", "9" * 5000])
async def test_a_timestamp_that_is_not_plain_digits_is_refused(telegram_client, db, timestamp):
    body = delivery()
    headers = {"X-Kindling-Timestamp": timestamp, "X-Kindling-Signature": "sha256=00"}
    response = await telegram_client.post("/webhooks/inbound/acme", data=body, headers=headers)

    assert response.status == 403 and "X-Kindling-Timestamp" in (await response.json())["error"]
    assert await nothing_stored(db)


async def test_a_widget_hello_with_a_non_ascii_token_is_welcomed_as_a_new_visitor(telegram_client):
    ws = await telegram_client.ws_connect("/chat/ws")
    await ws.send_json({"type": "hello", "visitor": "0123456789abcdef", "token": "tökén"})

    welcome = await ws.receive_json(timeout=5)
    assert welcome["type"] == "welcome" and welcome["visitor"] != "0123456789abcdef"
    await ws.close()


async def test_a_widget_hello_with_a_last_seen_id_past_32_bits_gets_its_welcome(telegram_client):
    """`since` beyond PostgreSQL's integer range used to end the socket there (asyncpg refused the query)."""
    ws = await telegram_client.ws_connect("/chat/ws")
    await ws.send_json({"type": "hello", "visitor": None, "token": None, "since": 2**31})
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    await ws.send_json({"type": "message", "id": "7b0e5f7e-4a9e-4f43-9a5b-2a1d6a0c5e11", "text": "hello"})
    while (await ws.receive_json(timeout=5))["type"] != "ack":
        pass
    await ws.close()


async def test_a_webhook_user_name_that_is_not_a_string_is_not_stored_as_its_repr(telegram_client, db, clock):
    body = delivery(user={"id": "u-1", "name": {"first": "Ann"}})
    response = await post_signed(telegram_client, clock, body)

    assert response.status == 200
    [lead] = await rows(db, Lead)
    assert lead.first_name is None


@pytest.mark.parametrize("url", ["http://[::1/pricing", "https://[oops]/"])
async def test_a_page_view_of_a_url_python_cannot_split_is_stored_and_the_socket_stays_open(telegram_client, db, url):
    """Found by test_parser_properties.py: urlsplit raises ValueError for these, which ended the widget's socket."""
    ws = await telegram_client.ws_connect("/chat/ws")
    await ws.send_json({"type": "hello", "visitor": None, "token": None, "view": {"url": url, "referrer": url}})
    assert (await ws.receive_json(timeout=5))["type"] == "welcome"
    await ws.send_json({"type": "page_view", "view": {"url": url}})
    await ws.send_json({"type": "message", "id": "7b0e5f7e-4a9e-4f43-9a5b-2a1d6a0c5e11", "text": "hello"})
    while (await ws.receive_json(timeout=5))["type"] != "ack":
        pass
    await ws.close()
    assert [event.type for event in await rows(db, Event)][:3] == ["page_view", "page_view", "message"]


async def test_a_webhook_delivery_id_with_a_trailing_newline_is_refused(telegram_client, db, clock):
    """Found by test_parser_properties.py: `^...$` with match() let "d-1\\n" in, a second key for delivery d-1."""
    response = await post_signed(telegram_client, clock, delivery(id="d-1\n"))

    assert response.status == 422 and "'id'" in (await response.json())["error"]
    assert await nothing_stored(db)
