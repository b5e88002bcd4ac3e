"""Raw-bytes fuzz of the inbound endpoints: whatever arrives, no 5xx, a clear 4xx, and nothing half-stored.

Hypothesis draws request bodies for `POST /webhooks/telegram`, `POST /webhooks/inbound/{source}` and the
widget's `/chat/ws` frames: arbitrary bytes, valid payloads truncated, with bytes flipped, with fields
replaced by any JSON value (lone surrogates, NUL, numbers past 64 bits, NaN) or removed, deeply nested
JSON, invalid UTF-8, bodies over the size limit, gzip bombs, under any content type. The webhook
channel's bodies are signed with the right secret, so garbage gets past the signature check.

Each answer must be below 500. A 4xx must be JSON naming the problem, and then no row was written
(leads, identities, conversations, events, inbound messages, deliveries, handoffs counted before and
after). A 200 either says the update was ignored (and nothing was written) or stored it exactly once.

The examples are derandomized (the same ones every run), so a failure reproduces; hypothesis runs in a
thread and hands each request to the app's event loop.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import WSCloseCode, WSMsgType
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import func
from sqlmodel import select

from bot.channels.webchat import MAX_FRAME
from bot.web.signing import signed_headers
from storage.models import Conversation, Delivery, Event, Handoff, Identity, Lead, Message, Operator

from conftest import ACME, TELEGRAM_SECRET, services_of
from fuzzing import CONTENT_TYPES, bodies, dumps, gzip_bomb, mutated, nasty_text, nested, paths

PAYLOADS = {
    path.stem: json.loads(path.read_text(encoding="utf-8"))
    for path in (Path(__file__).parent / "payloads" / "telegram").glob("*.json")
}
HEADERS = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
PERSON = 5550001  # the sender's id in the captured payloads
EXAMPLES = 300


def fuzz_settings(examples: int = EXAMPLES) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


async def run_in_thread(
    check: Callable[[Any], Awaitable[str | None]], strategy: st.SearchStrategy, examples: int
) -> None:
    """Run a hypothesis test in a thread, each example's `check` on this event loop (where the app runs)."""
    loop = asyncio.get_running_loop()

    @fuzz_settings(examples)
    @given(strategy)
    def each(case: Any) -> None:
        outcome = asyncio.run_coroutine_threadsafe(check(case), loop).result(timeout=120)
        if outcome:
            event(outcome)  # for --hypothesis-show-statistics: which kinds of input got which answers

    await asyncio.to_thread(each)


async def counts(db) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """How many rows intake may write, per table (one query)."""
    tables = {
        "lead": select(func.count()).select_from(Lead),
        "identity": select(func.count()).select_from(Identity),
        "conversation": select(func.count()).select_from(Conversation),
        "event": select(func.count()).select_from(Event),
        "message in": select(func.count()).select_from(Message).where(Message.direction == "in"),
        "delivery": select(func.count()).select_from(Delivery),
        "handoff": select(func.count()).select_from(Handoff),
    }
    query = select(*(count.scalar_subquery().label(name) for name, count in tables.items()))
    async with db() as session:
        return dict((await session.exec(query)).one()._mapping)


async def stored(db, dedup_key: str) -> int:  # type: ignore[no-untyped-def]
    """Events with this dedup key (`%` matches any text, as in LIKE)."""
    async with db() as session:
        where = Event.dedup_key.like(dedup_key) if "%" in dedup_key else Event.dedup_key == dedup_key
        return (await session.exec(select(func.count()).select_from(Event).where(where))).one()


def _update_id(body: bytes) -> int | None:
    """The update_id of a body that is a JSON object with one, else None."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data.get("update_id") if isinstance(data, dict) and type(data.get("update_id")) is int else None


async def answer_of(response) -> tuple[int, dict]:  # type: ignore[no-untyped-def]
    """The status and JSON body of an answer; fails on a 5xx, a non-JSON 4xx or one without an error."""
    raw = await response.read()
    assert response.status < 500, (response.status, raw[:500])
    assert response.content_type == "application/json", (response.status, response.content_type, raw[:200])
    body = json.loads(raw)
    if response.status >= 400:
        assert isinstance(body.get("error"), str) and body["error"].strip(), body
        assert "Traceback" not in body["error"]
    else:
        assert response.status == 200, response.status
    return response.status, body


# --- Telegram ------------------------------------------------------------------------------------


@st.composite
def telegram_updates(draw: st.DrawFn) -> dict:
    """A well-formed update of any captured kind, from a drawn person, with a drawn update_id and text."""
    name = draw(st.sampled_from(sorted(PAYLOADS)))
    person = draw(st.integers(1, 2**40))
    update = json.loads(json.dumps(PAYLOADS[name]).replace(str(PERSON), str(person)))
    update["update_id"] = draw(st.integers(0, 2**31))
    if name == "message_text":
        update["message"]["text"] = draw(st.text(min_size=1, max_size=200))
    return update


telegram_cases = st.tuples(
    bodies(telegram_updates(), limit=256 * 1024),
    st.sampled_from(CONTENT_TYPES),
    st.sampled_from([TELEGRAM_SECRET] * 4 + ["wrong", None]),
)


async def post_update(client, db, kind: str, body: bytes, content_type: str | None, secret: str | None) -> str:  # type: ignore[no-untyped-def]
    """Post a body to the Telegram webhook and check the answer and the rows; what happened, for statistics."""
    await services_of(client).drain()  # replies and handoff announcements write rows too
    before = await counts(db)
    update_id = _update_id(body)
    keyed = await stored(db, f"telegram:update:{update_id}:%") if update_id is not None else 0
    headers = {"Content-Type": content_type} if content_type else {}
    if secret is not None:
        headers["X-Telegram-Bot-Api-Secret-Token"] = secret
    response = await client.post("/webhooks/telegram", data=body, headers=headers, skip_auto_headers=["Content-Type"])
    status, answer = await answer_of(response)
    await services_of(client).drain()
    after = await counts(db)
    if secret != TELEGRAM_SECRET:
        assert status in (403, 413), (kind, status)  # an oversized body is refused before it is read
    if status >= 400 or "ignored" in answer or "kept" in answer:  # kept: in the inbox, not taken in
        assert after == before, (kind, status, answer)
        return f"{kind}: {status}{''.join(f' {word}' for word in ('ignored', 'kept') if word in answer)}"
    assert answer == {"ok": True}
    # Keyed by id, chat and message: a drawn update_id may come back on another chat (stored again, as
    # Telegram's reused ids must be), or as the same update (a resend: stored already, nothing new).
    now_keyed = await stored(db, f"telegram:update:{update_id}:%")
    assert now_keyed - keyed in (0, 1) and now_keyed >= 1, (kind, keyed, now_keyed)
    assert after["message in"] - before["message in"] in (0, 1)
    return f"{kind}: stored"


async def test_the_telegram_webhook_answers_any_body_without_5xx_or_half_written_rows(telegram_client, db):
    async def check(case: tuple) -> str:
        (kind, body), content_type, secret = case
        return await post_update(telegram_client, db, kind, body, content_type, secret)

    await run_in_thread(check, telegram_cases, EXAMPLES)


async def test_a_gzip_bomb_or_broken_compression_is_refused_with_4xx(telegram_client, db):
    limit = 256 * 1024
    headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET, "Content-Type": "application/json"}
    bomb = await telegram_client.post(
        "/webhooks/telegram", data=gzip_bomb(limit), headers={**headers, "Content-Encoding": "gzip"}
    )
    assert (await answer_of(bomb))[0] == 413
    broken = await telegram_client.post(
        "/webhooks/telegram", data=b"\x1f\x8b not gzip", headers={**headers, "Content-Encoding": "gzip"}
    )
    assert (await answer_of(broken))[0] == 400
    assert set((await counts(db)).values()) == {0}


# --- the signed webhook channel --------------------------------------------------------------------


@st.composite
def webhook_payloads(draw: st.DrawFn) -> dict:
    """A well-formed provider delivery."""
    user = {"id": draw(st.from_regex(r"[A-Za-z0-9_.:@-]{1,20}", fullmatch=True))}
    for field in ("name", "email", "phone", "locale"):
        if draw(st.booleans()):
            user[field] = draw(st.sampled_from(["Ann Lee", "ann@example.com", "+14155552671", "en-US", "", "x" * 300]))
    return {
        "id": draw(st.from_regex(r"[A-Za-z0-9_.:@-]{1,40}", fullmatch=True)),
        "type": draw(st.sampled_from(["message", "button"])),
        "conversation": draw(st.from_regex(r"[A-Za-z0-9_.:@-]{1,40}", fullmatch=True)),
        "user": user,
        "text": draw(st.text(min_size=1, max_size=300).filter(str.strip)),
    }


webhook_cases = st.tuples(
    bodies(webhook_payloads(), limit=256 * 1024),
    st.sampled_from(CONTENT_TYPES),
    st.sampled_from(["signed"] * 5 + ["bad signature", "stale", "unsigned"]),
)


async def post_delivery(client, db, clock, kind: str, body: bytes, content_type: str | None, signing: str) -> str:  # type: ignore[no-untyped-def]
    """Post a body to the webhook channel and check the answer and the rows; what happened, for statistics."""
    await services_of(client).drain()
    before = await counts(db)
    headers = {"Content-Type": content_type} if content_type else {}
    if signing != "unsigned":
        secret = "not-the-secret" if signing == "bad signature" else ACME.secret
        at = clock.now() - timedelta(minutes=10 if signing == "stale" else 0)
        headers.update(signed_headers(secret, body, at))
    response = await client.post(
        "/webhooks/inbound/acme", data=body, headers=headers, skip_auto_headers=["Content-Type"]
    )
    status, answer = await answer_of(response)
    await services_of(client).drain()
    after = await counts(db)
    if signing != "signed":
        assert status in (403, 413), (kind, status)
    if status >= 400:
        assert after == before, (kind, status, answer)
        return f"{kind}: {status}"
    assert set(answer) == {"ok", "lead_id", "duplicate"}
    assert await stored(db, f"webhook:acme:{json.loads(body)['id']}") == 1
    assert after["message in"] - before["message in"] in (0, 1)
    return f"{kind}: stored"


async def test_the_webhook_channel_answers_any_signed_body_without_5xx_or_half_written_rows(telegram_client, db, clock):
    async def check(case: tuple) -> str:
        (kind, body), content_type, signing = case
        return await post_delivery(telegram_client, db, clock, kind, body, content_type, signing)

    await run_in_thread(check, webhook_cases, EXAMPLES)


# --- every field of a valid payload, retyped ---------------------------------------------------------

RETYPED = [None, True, -1, 2**70, 1.5, "", "x", [], {"a": 1}]
DELIVERY = {
    "id": "d-1",
    "type": "message",
    "conversation": "t-1",
    "user": {"id": "u-1", "name": "Ann Lee", "email": "ann@example.com", "phone": "+14155552671", "locale": "en"},
    "text": "Hi",
}


def retyped(payload: dict) -> list[tuple[str, bytes]]:
    """The payload with each field in turn replaced by each JSON type (or removed): (what, body)."""
    variants = []
    for path in paths(payload):
        for value in [*RETYPED, "<removed>"]:
            data = copy.deepcopy(payload)
            parent = data
            for step in path[:-1]:
                parent = parent[step]
            if value == "<removed>" and isinstance(parent, dict):
                del parent[path[-1]]
            elif value != "<removed>":
                parent[path[-1]] = value
            variants.append((f"{'.'.join(map(str, path))}={value!r}", dumps(data)))
    return variants


async def test_every_field_of_a_valid_payload_retyped_is_answered_without_5xx_or_half_written_rows(
    telegram_client, db, clock, add_operator
):
    """An exhaustive sweep, not a random draw: each field of the captured Telegram updates and of a
    provider delivery, in turn, is null, a bool, a number (also past 64 bits), a string, a list or an
    object, or is missing. Type confusion is the commonest way a parser fails.

    The captured updates' sender is first handed to an operator, so the bot does not answer the ones
    that are stored: a reply per update, paced at one a second per chat, would make the sweep minutes long.
    """
    assert (
        await telegram_client.post("/webhooks/telegram", json=PAYLOADS["message_text"], headers=HEADERS)
    ).status == 200
    await services_of(telegram_client).drain()
    await add_operator("ann", "operator")
    async with db() as session:
        operator = (await session.exec(select(Operator.id))).one()
        lead = (await session.exec(select(Lead.id))).one()
    assert (await services_of(telegram_client).handoffs.open_for_lead(lead, operator)).ok
    for name in ("message_text", "message_start", "message_contact", "callback_query"):
        for index, (what, body) in enumerate(retyped(PAYLOADS[name])):
            body = body.replace(b'"update_id": 7301180', f'"update_id": 9{index:04d}'.encode(), 1)  # fresh ids
            await post_update(telegram_client, db, f"{name} {what}", body, "application/json", TELEGRAM_SECRET)
    for what, body in retyped(DELIVERY):
        await post_delivery(telegram_client, db, clock, what, body, "application/json", "signed")


# --- header bytes ------------------------------------------------------------------------------------


async def raw_post(client, path: str, headers: dict[bytes, bytes], body: bytes) -> tuple[int, bytes, bytes]:  # type: ignore[no-untyped-def]
    """POST with header values as raw bytes (aiohttp's client sends only UTF-8); (status, content type, body)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    lines = [b"POST " + path.encode() + b" HTTP/1.1", b"Host: kindling", b"Connection: close"]
    lines += [name + b": " + value for name, value in headers.items()]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    answer = await reader.read()
    writer.close()
    head, _, content = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    content_type = next(
        (line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"content-type:")),
        b"",
    )
    return status, content_type, content


# What HTTP allows in a header value (visible ASCII, space, and any byte from 0x80: "obs-text"); aiohttp
# itself refuses control characters with a plain-text 400 before Kindling sees the request.
FIELD_BYTES = [*range(0x21, 0x7F), *range(0x80, 0x100)]
header_bytes = st.lists(st.sampled_from(FIELD_BYTES), min_size=1, max_size=40).map(bytes)


async def test_secrets_and_signatures_with_any_bytes_are_refused_with_4xx(telegram_client, db, clock):
    """Secret, signature, timestamp and API key headers holding any bytes (not UTF-8, "²"): 401/403, not 500."""
    body = dumps(PAYLOADS["message_text"])

    async def check(case: tuple[bytes, str]) -> str:
        value, where = case
        if where == "telegram secret":
            status, kind, answer = await raw_post(
                telegram_client, "/webhooks/telegram", {b"X-Telegram-Bot-Api-Secret-Token": value}, body
            )
        elif where == "api key":
            status, kind, answer = await raw_post(
                telegram_client, "/api/events", {b"Authorization": b"Bearer " + value}, b"{}"
            )
        else:
            signed = {k.encode(): v.encode() for k, v in signed_headers(ACME.secret, body, clock.now()).items()}
            signed[b"X-Kindling-Signature" if where == "signature" else b"X-Kindling-Timestamp"] = value
            status, kind, answer = await raw_post(telegram_client, "/webhooks/inbound/acme", signed, body)
        assert status in (400, 401, 403), (where, value, status, answer)
        assert kind.startswith(b"application/json") and json.loads(answer)["error"], answer
        return f"{where}: {status}"

    where = st.sampled_from(["telegram secret", "signature", "timestamp", "api key"])
    await run_in_thread(
        check, st.tuples(st.one_of(header_bytes, st.sampled_from(["²", "١٢٣", "9" * 5000]).map(str.encode)), where), 60
    )
    assert set((await counts(db)).values()) == {0}


# --- the widget's WebSocket --------------------------------------------------------------------------

SENTINEL = str(uuid.uuid4())  # a frame answered by an error carrying this id marks the end of an answer


VALID_FRAMES = [
    {"type": "message", "id": "4a0f1fd6-63c5-4f44-a7c2-8d8f7b1c2e10", "text": "Do you ship to Canada?"},
    {"type": "button", "id": "0b8e7d7e-2f7a-4d0e-9d3f-6c1a5e2b9f44", "value": "Talk to a human"},
    {"type": "page_view", "view": {"url": "https://shop.example/pricing?utm_source=x", "referrer": ""}},
]


@st.composite
def widget_frames(draw: st.DrawFn, valid: list[dict]) -> str:
    """A text frame: anything, a valid frame gone wrong, too deep, or over the size limit."""
    good = draw(st.sampled_from(valid))
    kind = draw(st.sampled_from(["text", "mutated", "nested", "oversize", "valid"]))
    if kind == "text":
        return draw(nasty_text)
    if kind == "mutated":
        return dumps(draw(mutated(good)), ascii_only=True).decode()
    if kind == "nested":
        return nested(draw(st.sampled_from([64, 1_000, 2_500])), draw(st.sampled_from(["list", "object"])))
    if kind == "oversize":
        return json.dumps({**good, "text": "x" * MAX_FRAME})
    return json.dumps(good)


def is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


async def test_the_widget_answers_any_frame_without_half_written_rows(telegram_client, db):
    """Each frame on a fresh socket of one visitor: an error or an ack; a close (1009, 1007) if too big or not UTF-8."""
    ws = await telegram_client.ws_connect("/chat/ws")
    await ws.send_json({"type": "hello", "visitor": None, "token": None})
    welcome = await ws.receive_json(timeout=10)
    await ws.close()
    hello = {"type": "hello", "visitor": welcome["visitor"], "token": welcome["token"], "since": 2**31}

    async def check(frame: str) -> str:
        ws = await telegram_client.ws_connect("/chat/ws")
        await ws.send_json(hello)
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        await services_of(telegram_client).drain()  # replies and handoff announcements write rows too
        before = await counts(db)
        raw = frame.encode("utf-8", "surrogatepass")  # a lone surrogate makes it invalid UTF-8
        await ws.send_frame(raw, WSMsgType.TEXT)
        await ws.send_json({"type": "button", "id": SENTINEL, "value": ""})
        answers = []
        while (frame_in := await ws.receive(timeout=30)).type == WSMsgType.TEXT:
            answer = json.loads(frame_in.data)
            if answer.get("id") == SENTINEL and answer["type"] == "error":
                break
            if answer["type"] in ("ack", "error"):
                answers.append(answer)
        await ws.close()
        await services_of(telegram_client).drain()
        after = await counts(db)
        if len(raw) > MAX_FRAME:
            assert ws.close_code == WSCloseCode.MESSAGE_TOO_BIG and after == before
            return "closed: too big"
        if not is_utf8(raw):
            assert ws.close_code == WSCloseCode.INVALID_TEXT and after == before
            return "closed: not UTF-8"
        assert frame_in.type == WSMsgType.TEXT, f"the server closed the socket: {frame_in}, {ws.close_code}"
        if any(answer["type"] == "error" for answer in answers):
            assert all(isinstance(a.get("error"), str) and a["error"] for a in answers if a["type"] == "error")
            assert after == before, (frame[:200], answers)
        for ack in (answer for answer in answers if answer["type"] == "ack"):
            async with db() as session:
                query = select(func.count()).select_from(Message).where(Message.client_id == ack["id"])
                assert (await session.exec(query)).one() == 1
        return ", ".join(sorted({answer["type"] for answer in answers})) or "no answer"

    await run_in_thread(check, widget_frames(VALID_FRAMES), EXAMPLES)


async def test_the_widget_answers_any_hello_with_a_welcome_or_an_error(telegram_client, db):
    """The first frame fuzzed: the server welcomes (a hello it can read) or says what is wrong, never dies."""
    token = {"type": "hello", "visitor": "0123456789abcdef", "token": "0" * 32}
    hellos = [{"type": "hello", "visitor": None, "token": None, "since": 0, "view": VALID_FRAMES[2]["view"]}, token]

    async def check(frame: str) -> str:
        ws = await telegram_client.ws_connect("/chat/ws")
        raw = frame.encode("utf-8", "surrogatepass")
        await ws.send_frame(raw, WSMsgType.TEXT)
        answer = await ws.receive(timeout=30)
        await ws.close()
        if len(raw) > MAX_FRAME or not is_utf8(raw):
            assert ws.close_code in (WSCloseCode.MESSAGE_TOO_BIG, WSCloseCode.INVALID_TEXT)
            return f"closed: {ws.close_code}"
        assert answer.type == WSMsgType.TEXT, f"the server closed the socket: {answer}, {ws.close_code}"
        kind = json.loads(answer.data)["type"]
        assert kind in ("welcome", "error"), answer.data
        return kind

    await run_in_thread(check, widget_frames(hellos), EXAMPLES)
