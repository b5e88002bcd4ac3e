"""/metrics: what an operator's Prometheus sees of the backlogs, waiting leads and inbound traffic."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import services_of, templates_with
from test_webchat import hello, say

DRIP = """+++
name = "Pricing"
trigger = "page_view"
+++
{% step "hello", after="10m" %}Questions about our plans?{% endstep %}
"""


@pytest.fixture
async def app(make_client, settings, tmp_path):
    return await make_client(settings.with_(templates=templates_with(tmp_path / "templates", {"pricing": DRIP})))


async def scrape(client) -> dict[tuple[str, tuple], float]:  # type: ignore[no-untyped-def]
    """Every sample of /metrics by (name, labels)."""
    response = await client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    families = text_string_to_metric_families(await response.text())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


async def test_metrics_show_inbound_messages_backlogs_and_waiting_leads(app, clock):
    before = await scrape(app)
    assert before[("kindling_inbound_messages_total", ())] == 0
    assert before[("kindling_handoffs_waiting", ())] == 0 and before[("kindling_tick_lag_seconds", ())] == 0

    ws = await app.ws_connect("/chat/ws")
    await hello(ws)  # a page view on /pricing: the drip's step is due in 10 minutes
    await say(app, ws, "hi")
    clock.advance(timedelta(minutes=40))  # nobody ticks: the step is 30 minutes late
    late = await scrape(app)
    assert late[("kindling_inbound_messages_total", ())] == 1
    assert late[("kindling_steps_due", ())] == 1 and late[("kindling_tick_lag_seconds", ())] == 30 * 60
    assert late[("kindling_deliveries", (("status", "sent"),))] >= 1  # the greeting

    services = services_of(app)
    await services.runner.run_due()
    await services.dispatcher.dispatch_due()
    await say(app, ws, "can I talk to a human?")
    after = await scrape(app)
    assert after[("kindling_steps_due", ())] == 0 and after[("kindling_outbox_due", ())] == 0
    assert after[("kindling_tick_lag_seconds", ())] == 0
    assert after[("kindling_inbound_messages_total", ())] == 2
    assert after[("kindling_handoffs_waiting", ())] == 1
    assert after[("kindling_handoffs_sla_breached", ())] == 0


async def test_metrics_without_the_database_answer_503(make_client, settings):
    down = settings.with_(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/x", secret_key="k")
    client = await make_client(down)
    response = await client.get("/metrics")
    assert response.status == 503
