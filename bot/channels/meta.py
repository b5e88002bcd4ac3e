"""What Meta's messengers share (WhatsApp Cloud API; Messenger and Instagram): webhooks, Graph API, the window.

- Webhook verification: Meta GETs the webhook with `hub.mode=subscribe`, `hub.verify_token` and
  `hub.challenge`; the challenge is echoed as text when the token is ours, else 403.
- Signatures: every POST carries `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 of the raw body with the
  app secret; a wrong or missing one is 403 and nothing is stored. Meta batches notifications, up to 3 MB.
- The Graph API: a JSON POST with the bearer token; Meta's error JSON
  `{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}` becomes a `SendResult`:
  throughput errors, 5xx and network errors are retried with backoff; a recipient who cannot be reached is
  opted out of marketing on that channel; a closed window holds the message back; any other 4xx is final.
- The customer-service window: 24 hours from the person's last message (intake sets the conversation's
  `last_message_at` to it), within which anything may be sent; on Messenger and Instagram a human agent's
  reply may go for 7 days (`HUMAN_AGENT`). `window_note` says so for people (the console).
- Watermarks: Messenger reports delivered and read up to a moment ("every message before it"), not per
  message; `apply_watermarks` dates every delivery to that person sent by then.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from aiohttp import web
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.delivery.channel import SendResult
from bot.delivery.dispatcher import MAX_ATTEMPTS
from bot.intake.inbound import Inbound
from bot.services import Services
from bot.web.jsonbody import parse_json
from bot.web.middlewares import json_error
from bot.web.signing import same
from flows.channel_consent import marketing_opt_out
from flows.reach import WINDOW
from storage.db import transaction
from storage.leads import find_conversation, get_lead
from storage.models import Delivery
from storage.pace import SharedPace
from storage.receipts import known_provider_ids, mark_by_provider_id, mark_until

log = logging.getLogger(__name__)
SIGNATURE_HEADER = "X-Hub-Signature-256"
MAX_BODY_BYTES = 3 * 1024 * 1024  # Meta's batched webhook payloads go up to 3 MB
HUMAN_AGENT_WINDOW = timedelta(days=7)  # Messenger and Instagram: a human agent's reply, tagged HUMAN_AGENT
WATERMARK_SLACK = timedelta(seconds=1)  # Meta's clock against ours, for "every message sent before this"
TIMEOUT = aiohttp.ClientTimeout(total=20)
# Throughput: WhatsApp's 130429 (the number's rate), 131056 (too many to one recipient), 80007 (WhatsApp
# Business Account rate); Messenger's 4 (the app's calls), 613 and 32 (rate limits).
THROUGHPUT = frozenset({130429, 131056, 80007, 4, 32, 613})
# WhatsApp's 131026: not on WhatsApp, an old app, or the terms not accepted; 131050: they asked to stop this
# business's marketing; Messenger's 551: "This person isn't available right now" (they blocked the Page or
# deleted their account).
UNREACHABLE = frozenset({131026, 131050, 551})
REENGAGEMENT = frozenset({131047})  # more than 24 hours since the person's last message
WINDOW_SUBCODES = frozenset({2018278})  # Messenger's (#10) "This message is sent outside of allowed window"
OUTSIDE_WINDOW = "outside WhatsApp's 24-hour window; the step has no template"
THROUGHPUT_BACKOFF = 30.0  # seconds before a throughput-limited send is tried again (Messenger's hourly limits)
# WhatsApp's per-second limits free up within seconds: 130429 (80 a second per number) after 2 s, 131056
# (one message every 6 s to one person, beyond a burst) after 6 s; 80007 (the account's) keeps the long wait.
WHATSAPP_BACKOFF = {130429: 2.0, 131056: 6.0}
EARLY = timedelta(seconds=60)  # a status this recent about a message no delivery knows yet: asked again (503)
# A second, as Pace counts it: Meta counts messages when they arrive, a little after they leave here.
PACE_SECOND = 1.03


@dataclass(frozen=True)
class GraphError(Exception):
    """Meta's answer to a call it refused (or `status` 0: the Graph API could not be reached)."""

    status: int
    code: int | None = None
    subcode: int | None = None
    message: str = ""
    kind: str | None = None  # Meta's `type`, like OAuthException
    trace: str | None = None  # `fbtrace_id`, for Meta's support

    def __str__(self) -> str:
        if self.status == 0:
            return f"the Graph API cannot be reached: {self.message}"[:500]
        code = f" {self.code}" + (f"/{self.subcode}" if self.subcode else "") if self.code else ""
        return f"Graph API error{code} (HTTP {self.status}): {self.message}"[:500]


def graph_error(status: int, body: Any) -> GraphError:
    """The error in a Graph API answer (any body: Meta's error JSON, or none)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return GraphError(status, message=f"HTTP {status}")
    return GraphError(
        status,
        code=_int(error.get("code")),
        subcode=_int(error.get("error_subcode")),
        message=str(error.get("error_user_msg") or error.get("message") or "")[:300],
        kind=error.get("type") if isinstance(error.get("type"), str) else None,
        trace=error.get("fbtrace_id") if isinstance(error.get("fbtrace_id"), str) else None,
    )


def classify(error: GraphError, channel: str) -> SendResult:
    """How a refused send goes on: retried later, held back, or failed for good (opting out of marketing)."""
    text = str(error)
    if error.status == 0 or error.status >= 500:
        return SendResult.retry(text, after=10)
    if error.code in THROUGHPUT or error.subcode in THROUGHPUT or error.status == 429:
        quick = WHATSAPP_BACKOFF.get(error.code or 0) if channel == "whatsapp" else None
        return SendResult.retry(text, after=quick or THROUGHPUT_BACKOFF)
    if error.code in REENGAGEMENT or error.subcode in WINDOW_SUBCODES:
        return SendResult.held(f"outside {_name(channel)}'s 24-hour window ({text})")
    if error.code in UNREACHABLE:
        return SendResult.failed(f"cannot be reached on {_name(channel)}: {text}", marketing_off=True)
    return SendResult.failed(text)


def _name(channel: str) -> str:
    return {"whatsapp": "WhatsApp", "messenger": "Messenger", "instagram": "Instagram"}.get(channel, channel)


def _int(value: Any) -> int | None:
    return value if type(value) is int else None


class GraphClient:
    """A small Graph API client: JSON in and out, the bearer token, Meta's errors raised as GraphError."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url, self.token = base_url.rstrip("/"), token
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=TIMEOUT)
        return self._session

    async def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST JSON to `/{path}`; the answer's JSON, or GraphError."""
        return await self._call("POST", path, json=payload)

    async def get(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """GET `/{path}`; the answer's JSON, or GraphError."""
        return await self._call("GET", path, params=params or {})

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        url = f"{self.base_url}/{path.lstrip('/')}"
        try:
            async with self._client().request(method, url, headers=headers, **kwargs) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise GraphError(0, message=f"{type(exc).__name__}: {exc}".replace(self.token, "<token>")) from None
        try:
            body = parse_json(raw) if raw else {}
        except ValueError:
            body = None
        if status >= 400 or not isinstance(body, dict):
            raise graph_error(status or 502, body)
        return body

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def disabled(missing: list[str]) -> str | None:
    """A channel's `enabled` answer: None when nothing is missing, else which settings are not set."""
    return f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set" if missing else None


async def paced_post(
    graph: GraphClient, pace: Pace, channel: str, path: str, to: str, payload: dict[str, Any]
) -> dict[str, Any] | SendResult:
    """POST one message after the recipient's and the sender's pacing; Meta's answer, or how the send went on.

    A throughput error slows every send down a moment, not only this message's retry.
    """
    await pace.wait(to)
    try:
        return await graph.post(path, payload)
    except GraphError as exc:
        result = classify(exc, channel)
        if result.status == "retry" and exc.status and exc.status < 500:
            pace.slow_down(1.0)
        return result


def verification(verify_token: str | None) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The GET handler answering Meta's webhook verification: the challenge as text, or 403."""

    async def verify(request: web.Request) -> web.Response:
        query = request.query
        given = query.get("hub.verify_token", "")
        if query.get("hub.mode") != "subscribe" or not verify_token or not same(given, verify_token):
            return json_error(403, "wrong hub.mode or hub.verify_token")
        return web.Response(text=query.get("hub.challenge", ""), content_type="text/plain")

    return verify


def signature(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value Meta sends with a body (tests sign their payloads with it)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def signed_json(request: web.Request, secret: str | None) -> dict[str, Any] | web.Response:
    """The body of a Meta webhook POST as JSON, or the answer refusing it (403 unsigned, 413, 400)."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return json_error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        body = await request.clone(client_max_size=MAX_BODY_BYTES).read()
    except web.HTTPRequestEntityTooLarge:
        return json_error(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    given = request.headers.get(SIGNATURE_HEADER, "")
    if not secret or not same(given, signature(secret, body)):
        return json_error(403, f"wrong or missing {SIGNATURE_HEADER}")
    data = parse_json(body)  # BadJson: 400 or 422 from the middleware
    if not isinstance(data, dict) or not isinstance(data.get("entry"), list):
        raise web.HTTPBadRequest(text="not a Meta webhook notification: no entry list")
    return data


def window_open(last_message_at: datetime | None, now: datetime) -> bool:
    """Whether the 24-hour customer-service window is open: the person wrote within the last 24 hours."""
    return last_message_at is not None and now < window_closes(last_message_at)


def window_closes(last_message_at: datetime) -> datetime:
    """When the window the person's last message opened closes."""
    return last_message_at + WINDOW


def window_note(channel: str, last_message_at: datetime | None, now: datetime) -> str:
    """For people (the console): whether the channel's 24-hour window is open, and until when."""
    name = _name(channel)
    if last_message_at is None:
        return f"{name}'s 24-hour window is closed: the person has not written yet"
    closes = window_closes(last_message_at)
    if now < closes:
        return f"{name}'s 24-hour window is open until {closes:%Y-%m-%d %H:%M} UTC"
    return f"{name}'s 24-hour window closed at {closes:%Y-%m-%d %H:%M} UTC"


def from_timestamp(value: Any, now: datetime) -> datetime:
    """A Meta timestamp (Unix seconds as a string, or milliseconds as a number for Messenger); `now` if none."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return now
    if number > 1e11:  # milliseconds
        number /= 1000
    try:
        moment = datetime.fromtimestamp(number, UTC)
    except (OverflowError, OSError, ValueError):
        return now
    return min(moment, now)  # a clock ahead of ours must not date a status in the future


class Pace:
    """Sends paced: at most `rate` a second overall, and `gap` between two to one recipient.

    A recipient's wait comes first and takes no overall slot, so one person's gap never holds up the others.
    With `shared` (PostgreSQL: any number of instances) the budgets are rows of the database (storage.pace),
    named `<name>` overall and `<name>:<recipient>`; otherwise (SQLite: one instance) they are kept here.
    Slots are evenly spaced, and on top of them this process sends at most `rate` messages in any
    PACE_SECOND, counted when they go: after a late wake-up (the event loop was busy) the slots that came
    due meanwhile would otherwise all go at once, and Meta answers the ones past its window with 130429.
    """

    def __init__(self, rate: float, gap: timedelta, name: str = "meta", shared: SharedPace | None = None) -> None:
        self.interval, self.gap = PACE_SECOND / rate, gap.total_seconds()
        self.name, self.shared = name, shared
        self.next_at = 0.0  # the loop time of the next overall slot
        self.recipients: dict[str, float] = {}  # the loop time each recipient's next message may go
        self.sent: deque[float] = deque(maxlen=max(1, int(rate)))  # when the last `rate` messages went

    async def wait(self, recipient: str) -> None:
        """Wait for this recipient's turn, then for the next overall slot, then for room in the last second."""
        if self.shared is not None:
            await self.shared.wait(f"{self.name}:{recipient}", self.gap)
            await self.shared.wait(self.name, self.interval)
        else:
            await self._slot(recipient)
        loop = asyncio.get_running_loop()
        while len(self.sent) == self.sent.maxlen and (delay := self.sent[0] + PACE_SECOND - loop.time()) > 0:
            await asyncio.sleep(delay)
        self.sent.append(loop.time())

    async def _slot(self, recipient: str) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if len(self.recipients) > 10_000:  # forget idle recipients so the table does not grow forever
            self.recipients = {key: at for key, at in self.recipients.items() if at > now}
        turn = max(now, self.recipients.get(recipient, 0.0))
        self.recipients[recipient] = turn + self.gap
        if turn > now:
            await asyncio.sleep(turn - now)
        now = loop.time()
        slot = max(now, self.next_at)
        self.next_at = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)

    def slow_down(self, seconds: float) -> None:
        """Meta said we are too fast: no new slot for this long."""
        self.next_at = max(self.next_at, asyncio.get_running_loop().time() + seconds)


@dataclass(frozen=True)
class Status:
    """A channel's report on one message it was given: `delivered`, `read` or `failed` (with why)."""

    provider_id: str
    state: str
    at: datetime
    error: str | None = None
    code: int | None = None


async def take_in(services: Services, inbounds: list[Inbound]) -> None:
    """Store a notification's inbounds in the inbox (one group commit); raises DatabaseUnavailable."""
    if inbounds:
        await asyncio.gather(*(services.inbox.accept(inbound) for inbound in inbounds))


@dataclass(frozen=True)
class Watermark:
    """Messenger's report on every message to one person sent up to `until`: `delivered`, or `read`."""

    address: str  # the person's id on the channel (PSID, IGSID): the conversation's external id
    state: str
    until: datetime


async def apply_watermarks(services: Services, channel: str, marks: list[Watermark]) -> None:
    """Date delivered (and seen, for `read`) every delivery to each person sent by its watermark; one transaction.

    A watermark is Meta's clock and `sent_at` ours, taken just after Meta answered: a message read at once can
    carry a watermark a moment before our `sent_at`, so `WATERMARK_SLACK` is allowed.
    """
    if not marks:
        return

    async def work(session: AsyncSession) -> None:
        for mark in marks:
            conversation = await find_conversation(session, channel, mark.address)
            if conversation is not None and conversation.id is not None:
                until, seen = mark.until + WATERMARK_SLACK, mark.state == "read"
                await mark_until(session, conversation.lead_id, conversation.id, until, seen, mark.until)

    await transaction(services.sessions, work)


async def apply_statuses(services: Services, channel: str, statuses: list[Status]) -> int:
    """Move the deliveries the statuses are about forward, in one transaction, before the webhook's answer.

    A repeat changes nothing (states only move forward). A message that failed because the person cannot be
    reached opts them out of marketing on the channel; one refused for the closed window is held back.
    Returns how many statuses came too early: about a message of the last EARLY that no delivery was
    recorded as yet (the send's answer and its record may trail Meta's webhook by a moment). The webhook
    then answers 503, so that Meta sends them again; a status about a message older than that which no
    delivery knows (sent by another tool on the same number) is ignored.
    """
    if not statuses:
        return 0
    now = services.clock.now()

    async def work(session: AsyncSession) -> int:
        known = await known_provider_ids(session, channel, [status.provider_id for status in statuses])
        early = [s for s in statuses if s.provider_id not in known and now - s.at < EARLY]
        for status in statuses:
            if status.provider_id not in known:
                continue
            failed = await mark_by_provider_id(
                session, channel, status.provider_id, status.state, status.at, status.error
            )
            if failed is not None:
                await _failed(session, channel, failed, status, now)
        return len(early)

    return await transaction(services.sessions, work)


async def _failed(session: AsyncSession, channel: str, row: Delivery, status: Status, now: datetime) -> None:
    result = classify(GraphError(400, code=status.code, message=status.error or "failed"), channel)
    if result.status == "skipped":  # held back after all: the window had closed
        row.status, row.last_error = "skipped", result.error
        session.add(row)
    elif result.status == "retry" and row.attempts < MAX_ATTEMPTS:  # Meta took it, then could not send it yet
        row.status, row.last_error = "pending", result.error
        row.not_before, row.provider_message_id = now + timedelta(seconds=result.retry_after or 30), None
        session.add(row)
    elif result.marketing_off:
        await marketing_opt_out(session, await get_lead(session, row.lead_id), channel, result.error or "", now)


# --- reading Meta's payloads: what is not of the documented type counts as absent ----------------------


def dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a JSON list (a missing or ill-formed one: none)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def obj(value: Any) -> dict[str, Any]:
    """A JSON object, or an empty one."""
    return value if isinstance(value, dict) else {}


def text_of(value: Any) -> str:
    """A JSON string, stripped, or an empty one."""
    return value.strip() if isinstance(value, str) else ""
