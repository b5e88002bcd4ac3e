"""Outgoing webhooks to a CRM: lead.warm, lead.stage_changed, handoff.closed; signed, retried, visible when failing.

A real CRM receiver runs on localhost: it checks every signature with the shared secret, as a CRM would,
and answers what each test scripts. Webhooks go right after the commit that made them (`sent` waits for
that); the sender's tick, for retries, is run by hand with the clock moved; no sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import socket
import uuid
from datetime import timedelta

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bot.config import ConfigError, load_settings, settings_from
from storage.models import WebhookDelivery

from conftest import API_KEY, ROOT, rows, services_of, templates_with
from test_console_queue import handoff_ids, operator, post, warm

SECRET = "crm-shared-secret"
EVERY_EVENT = ["lead.warm", "lead.stage_changed", "handoff.closed"]
API = {"Authorization": f"Bearer {API_KEY}"}


class Crm:
    """A CRM's webhook receiver: verifies each signature itself and records what it accepted."""

    def __init__(self) -> None:
        self.attempts: list[dict] = []  # every request's headers, in arrival order
        self.accepted: list[dict] = []  # the bodies it answered 2xx
        self.bad_signatures = 0
        self.answers: list[tuple[int, dict, str]] = []  # scripted (status, headers, text); then 200
        self.arrived = asyncio.Event()
        self.gate: asyncio.Event | None = None  # when set, requests wait for it before answering

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.attempts.append(dict(request.headers))
        self.arrived.set()
        if self.gate is not None:
            await self.gate.wait()
        timestamp = request.headers["X-Kindling-Timestamp"]
        digest = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(f"sha256={digest}", request.headers.get("X-Kindling-Signature", "")):
            self.bad_signatures += 1
            return web.json_response({"error": "bad signature"}, status=401)
        status, headers, text = self.answers.pop(0) if self.answers else (200, {}, "")
        if status < 300:
            self.accepted.append(json.loads(body))
        return web.Response(status=status, headers=headers, text=text)

    def types(self) -> list[str]:
        return [body["type"] for body in self.accepted]


@pytest.fixture
async def crm(aiohttp_server) -> Crm:  # type: ignore[no-untyped-def]
    receiver = Crm()
    app = web.Application()
    app.router.add_post("/hooks/kindling", receiver.handle)
    receiver.server = await aiohttp_server(app)
    return receiver


@pytest.fixture
def configured(settings, tmp_path):  # type: ignore[no-untyped-def]
    """Settings from the shipped config.toml plus a [webhooks.outgoing.crm] table, with its secret in the env."""

    def make(url: str, events: list[str] | None = None):  # type: ignore[no-untyped-def]
        table = f'\n[webhooks.outgoing.crm]\nurl = "{url}"\n' + (f"events = {json.dumps(events)}\n" if events else "")
        path = tmp_path / "config.toml"
        path.write_text((ROOT / "config.toml").read_text() + table)
        loaded = load_settings(path, env={"KINDLING_OUTGOING_SECRET_CRM": SECRET})
        templates = templates_with(tmp_path / "templates", {})
        return loaded.with_(database_url=settings.database_url, templates=templates, api_key=API_KEY)

    return make


@pytest.fixture
async def app(make_client, configured, crm):  # type: ignore[no-untyped-def]
    """The app with the CRM subscribed to every event."""
    return await make_client(configured(str(crm.server.make_url("/hooks/kindling"))))


async def sent(app) -> None:  # type: ignore[no-untyped-def]
    """Wait for what the app does after its commits, the webhooks they queued included (no tick runs)."""
    await services_of(app).drain()


async def tick(app) -> int:  # type: ignore[no-untyped-def]
    return await services_of(app).webhooks.send_due()


async def test_a_warm_lead_is_posted_at_once_signed_with_what_a_crm_needs(app, crm, db, clock):
    await warm(app)  # the clock stands still and no tick runs: it goes right after the commit
    await sent(app)
    assert await tick(app) == 0  # once

    [body] = crm.accepted
    [headers] = crm.attempts
    assert crm.bad_signatures == 0
    assert headers["X-Kindling-Event"] == "lead.warm" and headers["Content-Type"] == "application/json"
    assert headers["X-Kindling-Delivery"] == body["id"] == str(uuid.UUID(body["id"]))
    assert int(headers["X-Kindling-Timestamp"]) == int(clock.now().timestamp())
    assert body["type"] == "lead.warm" and body["occurred_at"] == clock.now().isoformat()
    lead = body["lead"]
    assert (lead["id"], lead["stage"], lead["score"]) == (1, "visitor", 12)
    assert lead["first_touch"]["source"] == "google" and lead["first_touch"]["campaign"] == "spring"
    assert lead["locale"] == "en-US" and lead["timezone"] == "America/New_York"
    handoff = body["handoff"]
    assert (handoff["trigger"], handoff["reason"], handoff["channel"]) == (
        "intent",
        'wrote "talk to a human"',
        "webchat",
    )
    assert handoff["sla_due_at"] and handoff["outcome"] is None
    [row] = await rows(db, WebhookDelivery)
    assert (row.status, row.attempts, row.last_status, row.delivered_at) == ("delivered", 1, 200, clock.now())


async def test_stage_changes_are_posted_in_the_order_they_happened(make_client, configured, crm, db):
    app = await make_client(configured(str(crm.server.make_url("/hooks/kindling")), ["lead.stage_changed"]))
    crm.gate = asyncio.Event()  # the signup's change is still being posted when the purchase's is committed
    signup = {"type": "signup", "lead": {"email": "ann@example.com", "first_name": "Ann"}}
    purchase = {"type": "purchase", "lead": {"email": "ann@example.com"}, "properties": {"total": 99}}
    assert (await app.post("/api/events", json=signup, headers=API)).status == 201
    await asyncio.wait_for(crm.arrived.wait(), timeout=10)
    assert (await app.post("/api/events", json=purchase, headers=API)).status == 201
    crm.gate.set()
    await sent(app)  # the purchase's change went once the signup's was delivered, without a tick

    assert await tick(app) == 0
    assert crm.types() == ["lead.stage_changed", "lead.stage_changed"]
    changes = [(body["stage"]["from"], body["stage"]["to"], body["lead"]["stage"]) for body in crm.accepted]
    assert changes == [("visitor", "lead", "lead"), ("lead", "customer", "customer")]
    assert crm.accepted[0]["stage"]["reason"] == "lead: lead.email or lead.phone"
    assert crm.accepted[0]["lead"]["email"] == "ann@example.com" and crm.accepted[0]["lead"]["name"] == "Ann"


async def test_a_handoff_closed_by_an_operator_is_posted_with_its_outcome(app, crm, db, add_operator):
    csrf = await operator(app, add_operator, "ann")
    await warm(app)
    [handoff_id] = await handoff_ids(db)
    assert (await post(app, f"/console/handoffs/{handoff_id}/take", csrf)).status == 303
    answer = await post(app, f"/console/handoffs/{handoff_id}/hand-back", csrf, outcome="won", flow="", reason="")
    assert answer.status == 303

    await sent(app)
    assert crm.types() == ["lead.warm", "lead.stage_changed", "handoff.closed"]
    closed = crm.accepted[-1]
    assert closed["handoff"]["id"] == handoff_id
    assert (closed["handoff"]["outcome"], closed["handoff"]["operator"]) == ("won", "ann")
    assert closed["handoff"]["claimed_at"] and closed["handoff"]["closed_at"]
    assert closed["lead"]["stage"] == "customer"
    assert crm.accepted[1]["stage"] == {"from": "visitor", "to": "customer", "reason": "handoff won by ann"}
    page = await (await app.get("/console/leads/1")).text()
    assert "Webhooks to CRMs" in page and "<td>handoff.closed</td><td>delivered</td>" in page


async def test_a_server_error_is_retried_after_a_backoff_and_delivered_once(app, crm, db, clock):
    crm.answers = [(500, {}, "database is down")]
    await warm(app)
    await sent(app)
    [row] = await rows(db, WebhookDelivery)
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, 500)
    assert row.last_error == "answered 500 Internal Server Error: database is down"
    assert timedelta(seconds=48) <= row.next_attempt_at - clock.now() <= timedelta(seconds=72)  # 1 min +- 20%

    clock.advance(timedelta(seconds=47))
    assert await tick(app) == 0 and len(crm.attempts) == 1
    clock.advance(timedelta(seconds=26))
    assert await tick(app) == 1
    assert crm.types() == ["lead.warm"] and len(crm.attempts) == 2
    assert crm.attempts[0]["X-Kindling-Delivery"] == crm.attempts[1]["X-Kindling-Delivery"]
    [row] = await rows(db, WebhookDelivery)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 2, None)


async def test_too_many_requests_waits_for_retry_after(app, crm, db, clock):
    crm.answers = [(429, {"Retry-After": "120"}, "slow down")]
    await warm(app)
    await tick(app)

    clock.advance(timedelta(seconds=100))  # past any planned backoff for a first failure, not past Retry-After
    assert await tick(app) == 0
    clock.advance(timedelta(seconds=21))
    assert await tick(app) == 1
    assert crm.types() == ["lead.warm"]


async def test_a_refused_webhook_is_dead_at_once_shows_everywhere_and_can_be_sent_again(
    app, crm, db, clock, run_kindling, caplog
):
    caplog.set_level(logging.WARNING, logger="bot.delivery.outgoing")
    crm.answers = [(400, {}, "unknown field 'lead'")]
    await warm(app)
    await tick(app)
    clock.advance(timedelta(days=2))
    assert await tick(app) == 0  # no retries

    [row] = await rows(db, WebhookDelivery)
    assert (row.status, row.attempts, row.last_status) == ("dead", 1, 400)
    [logged] = [r.getMessage() for r in caplog.records if r.name == "bot.delivery.outgoing"]
    assert "lead.warm to crm failed for good" in logged and "answered 400 Bad Request" in logged

    status, out, _ = await run_kindling("webhooks", "list", "--failed")
    assert status == 0
    assert (
        out.strip()
        == f"#{row.id} crm lead.warm lead 1 dead after 1 attempt: answered 400 Bad Request: unknown field 'lead'"
    )
    answer = await app.get("/api/webhooks/deliveries", params={"status": "dead", "endpoint": "crm"}, headers=API)
    [listed] = (await answer.json())["items"]
    assert (listed["id"], listed["last_status"], listed["event_type"]) == (row.id, 400, "lead.warm")
    assert (await scrape(app))[("kindling_webhooks", (("endpoint", "crm"), ("status", "dead")))] == 1
    status, out, _ = await run_kindling("lead", "show", "1")
    assert "Webhooks:" in out and "dead after 1 attempt: answered 400" in out

    status, out, _ = await run_kindling("webhooks", "retry", str(row.id))
    assert status == 0 and "queued again" in out
    assert await tick(app) == 1
    assert crm.types() == ["lead.warm"]
    assert (await scrape(app))[("kindling_webhooks", (("endpoint", "crm"), ("status", "delivered")))] == 1
    status, _, err = await run_kindling("webhooks", "retry", str(row.id))
    assert status == 1 and "is delivered, not dead" in err
    assert (await run_kindling("webhooks", "list", "--failed"))[1].strip() == "no webhook deliveries match"


async def test_an_unreachable_receiver_is_retried_with_growing_waits(make_client, configured, db, clock):
    app = await make_client(configured(f"http://127.0.0.1:{closed_port()}/hooks"))
    await warm(app)
    await tick(app)
    [row] = await rows(db, WebhookDelivery)
    assert (row.status, row.attempts, row.last_status) == ("pending", 1, None)
    assert row.last_error.startswith("unreachable: ClientConnectorError")

    clock.advance(timedelta(seconds=73))
    assert await tick(app) == 1
    [row] = await rows(db, WebhookDelivery)
    assert (row.status, row.attempts) == ("pending", 2)
    assert timedelta(minutes=4) <= row.next_attempt_at - clock.now() <= timedelta(minutes=6)  # 5 min +- 20%


async def test_a_receiver_that_is_down_for_a_day_gets_the_webhook_marked_dead(make_client, configured, db, clock):
    app = await make_client(configured(f"http://127.0.0.1:{closed_port()}/hooks"))
    await warm(app)
    await sent(app)  # the first attempt
    for _ in range(9):
        clock.advance(timedelta(hours=10))
        assert await tick(app) == 1
    [row] = await rows(db, WebhookDelivery)
    assert (row.status, row.attempts) == ("dead", 10)
    assert await tick(app) == 0


async def test_two_instances_never_post_the_same_row_at_once(make_client, configured, crm, db):
    settings = configured(str(crm.server.make_url("/hooks/kindling")))
    first, second = await make_client(settings), await make_client(settings)
    crm.gate = asyncio.Event()

    warming = asyncio.create_task(warm(first))
    await asyncio.wait_for(crm.arrived.wait(), timeout=10)  # the first instance is mid-POST, after its commit
    assert await tick(second) == 0
    crm.gate.set()
    await warming
    await sent(first)
    assert len(crm.attempts) == 1 and crm.types() == ["lead.warm"]
    [row] = await rows(db, WebhookDelivery)
    assert row.status == "delivered"


async def test_a_sender_that_outlives_its_lease_does_not_overwrite_the_next_one(
    make_client, configured, crm, db, clock
):
    settings = configured(str(crm.server.make_url("/hooks/kindling")))
    first, second = await make_client(settings), await make_client(settings)
    crm.gate, crm.answers = asyncio.Event(), [(503, {}, "")]
    stuck = asyncio.create_task(warm(first))  # its POST, right after the commit, hangs
    await asyncio.wait_for(crm.arrived.wait(), timeout=10)

    clock.advance(timedelta(seconds=61))  # the first sender's lease ran out: the row is claimable again
    crm.arrived.clear()
    taking_over = asyncio.create_task(tick(second))
    await asyncio.wait_for(crm.arrived.wait(), timeout=10)
    crm.gate.set()
    await asyncio.gather(stuck, taking_over)
    await sent(first)

    [row] = await rows(db, WebhookDelivery)
    assert len(crm.attempts) == 2 and row.attempts == 2  # at least once: receivers dedupe on the delivery id
    assert crm.types() == ["lead.warm"] and row.status == "delivered"


async def test_unsubscribed_events_are_not_sent(make_client, configured, crm, db):
    app = await make_client(configured(str(crm.server.make_url("/hooks/kindling")), ["handoff.closed"]))
    await warm(app)
    assert await tick(app) == 0
    assert await rows(db, WebhookDelivery) == [] and crm.attempts == []


async def test_without_endpoints_nothing_is_queued(client, db):
    await warm(client)
    assert await rows(db, WebhookDelivery) == []


@pytest.mark.parametrize(
    ("table", "env", "message"),
    [
        ({"url": "https://crm.example.com/h"}, {}, "webhooks.outgoing.crm: its signing secret is not set: export "
         "KINDLING_OUTGOING_SECRET_CRM"),
        ({"url": "crm.example.com/h"}, None, "webhooks.outgoing.crm.url: an http(s) URL"),
        ({"url": "ftp://crm.example.com/h"}, None, "webhooks.outgoing.crm.url: an http(s) URL"),
        ({}, None, "webhooks.outgoing.crm.url: an http(s) URL"),
        ({"url": "https://crm.example.com/h", "events": ["lead.cold"]}, None,
         "webhooks.outgoing.crm.events: 'lead.cold' is not an event; choose from lead.warm, lead.stage_changed"),
        ({"url": "https://crm.example.com/h", "events": []}, None, "webhooks.outgoing.crm.events: no events"),
        ({"url": "https://crm.example.com/h", "secret": "x"}, None, "webhooks.outgoing.crm.secret: unknown setting"),
    ],
)  # fmt: skip
def test_a_bad_endpoint_stops_start_up_with_a_clear_error(table, env, message):
    env = {"KINDLING_OUTGOING_SECRET_CRM": SECRET} if env is None else env
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        settings_from({"webhooks": {"outgoing": {"crm": table}}}, env)


def test_an_endpoint_name_with_dashes_reads_its_secret_with_underscores():
    table = {"url": "https://crm.example.com/h", "events": ["lead.warm"]}
    endpoints = settings_from(
        {"webhooks": {"outgoing": {"sales-crm": table}}}, {"KINDLING_OUTGOING_SECRET_SALES_CRM": "s"}
    )
    endpoint = endpoints.webhook_endpoints["sales-crm"]
    assert (endpoint.secret, endpoint.events) == ("s", frozenset({"lead.warm"}))
    with pytest.raises(ConfigError, match="^webhooks.outgoing.Sales: use lower-case"):
        settings_from({"webhooks": {"outgoing": {"Sales": table}}}, {})


@pytest.mark.parametrize(
    "query",
    [{"status": "failed"}, {"limit": "0"}, {"limit": "201"}, {"cursor": "x"}, {"failed": "yes"}, {"endpoint": "CRM!"}],
)
async def test_the_deliveries_api_refuses_bad_filters(app, query):
    answer = await app.get("/api/webhooks/deliveries", params=query, headers=API)
    assert answer.status == 400 and (await answer.json())["error"].startswith(f"'{next(iter(query))}'")


async def test_the_deliveries_api_needs_a_key_and_pages_back(app, crm, db):
    assert (await app.get("/api/webhooks/deliveries")).status == 401
    signup = {"type": "signup", "lead": {"email": "ann@example.com"}}
    assert (await app.post("/api/events", json=signup, headers=API)).status == 201
    await warm(app)
    page = await (await app.get("/api/webhooks/deliveries", params={"limit": "1"}, headers=API)).json()
    [newest] = page["items"]
    assert newest["event_type"] == "lead.warm" and newest["status"] == "delivered"
    rest = await (await app.get("/api/webhooks/deliveries", params={"cursor": page["next_cursor"]}, headers=API)).json()
    assert [d["event_type"] for d in rest["items"]] == ["lead.stage_changed"] and rest["next_cursor"] is None


async def scrape(client) -> dict[tuple[str, tuple], float]:  # type: ignore[no-untyped-def]
    text = await (await client.get("/metrics")).text()
    families = text_string_to_metric_families(text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
