"""The console's read-only pages as operators and marketers use them: lead search, a lead, the flows."""

from __future__ import annotations

import html
import re

from bot.config import ConsoleSettings
from storage.models import Lead

from conftest import API_KEY, SHIPPED_FLOWS, rows, shipped_templates
from test_console_auth import log_in
from test_webchat import hello, say

AUTH = {"Authorization": f"Bearer {API_KEY}"}
XSS = "<script>alert(1)</script>"


async def new_lead(client, **lead) -> int:  # type: ignore[no-untyped-def]
    """A lead made through the events API, as the site's backend would."""
    answer = await client.post("/api/events", json={"type": "signup", "lead": lead}, headers=AUTH)
    assert answer.status == 201, await answer.text()
    return (await answer.json())["lead_id"]


async def page(client, path: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    answer = await client.get(path)
    return answer.status, await answer.text()


def lead_links(text: str) -> list[str]:
    """The lead names a search page lists, as a person reads them."""
    return [
        html.unescape(name)
        for name in re.findall(r'<td class="name"><a href="/console/leads/\d+">([^<]*)</a></td>', text)
    ]


async def test_leads_are_found_by_name_email_phone_and_id(client, add_operator):
    ann = await new_lead(client, first_name="Ann", last_name="Lee", email="ann@example.com")
    await new_lead(client, first_name="Bo", email="bo@shop.example", phone="+14155552671")
    await add_operator("ola", "operator")
    await log_in(client, "ola")

    assert lead_links((await page(client, "/console/leads"))[1]) == ["Bo", "Ann Lee"]  # newest first
    assert lead_links((await page(client, "/console/leads?q=ann+lee"))[1]) == ["Ann Lee"]
    assert lead_links((await page(client, "/console/leads?q=SHOP.example"))[1]) == ["Bo"]
    assert lead_links((await page(client, "/console/leads?q=4155552671"))[1]) == ["Bo"]
    assert lead_links((await page(client, f"/console/leads?q=%23{ann}"))[1]) == ["Ann Lee"]  # "#1": by id only
    status, text = await page(client, "/console/leads?q=100%25")
    assert status == 200 and "No lead matches “100%”." in text


async def test_page_only_visitors_are_hidden_from_the_lead_list_unless_asked(client, add_operator):
    await new_lead(client, first_name="Ann", email="ann@example.com")
    looker = await client.ws_connect("/chat/ws")
    await hello(looker, url="https://shop.example/pricing?utm_source=bing")  # views a page, says nothing
    talker = await client.ws_connect("/chat/ws")
    await hello(talker, url="https://shop.example/?utm_source=google")
    await say(client, talker, "hello?")
    await add_operator("ola", "operator")
    await log_in(client, "ola")

    status, text = await page(client, "/console/leads")
    assert status == 200 and lead_links(text) == ["Visitor from google", "Ann"]
    text = (await page(client, "/console/leads?visitors=1"))[1]
    assert lead_links(text) == ["Visitor from google", "Visitor from bing", "Ann"]
    assert 'name="visitors" value="1" checked' in text


async def test_a_long_list_of_leads_comes_a_page_at_a_time(client, add_operator):
    for number in range(27):
        await new_lead(client, first_name=f"Lead{number:02d}", email=f"l{number}@example.com")
    await add_operator("ola", "operator")
    await log_in(client, "ola")
    first = (await page(client, "/console/leads"))[1]
    assert len(lead_links(first)) == 25 and lead_links(first)[0] == "Lead26"
    assert 'href="/console/leads?q=&amp;page=2">Older' in first
    second = (await page(client, "/console/leads?page=2"))[1]
    assert lead_links(second) == ["Lead01", "Lead00"] and "Older" not in second and "Newer" in second


async def test_a_visitor_named_like_a_script_shows_as_text(client, add_operator):
    lead_id = await new_lead(client, first_name=XSS, email="x@example.com")
    await add_operator("ola", "operator")
    await log_in(client, "ola")
    for path in ("/console/leads", f"/console/leads?q={XSS}", f"/console/leads/{lead_id}"):
        status, text = await page(client, path)
        assert status == 200 and XSS not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text, path
    status, text = await page(client, "/console/leads/<img src=x onerror=alert(1)>")
    assert status == 404 and "<img" not in text and "no lead &lt;img src=x onerror=alert(1)&gt;" in text
    assert lead_links((await page(client, "/console/leads"))[1]) == [XSS]


async def test_the_lead_page_explains_score_stages_flows_and_deliveries(client, add_operator):
    lead_id = await new_lead(client, first_name="Fay", email="fay@example.com")
    await add_operator("ola", "operator")
    await log_in(client, "ola")
    status, text = await page(client, f"/console/leads/{lead_id}")
    assert status == 200
    assert f"<h1>Fay <small>lead #{lead_id}</small></h1>" in text
    assert "20 = signup (+20)" in text  # the score with its explanation
    assert "<td>visitor</td><td>lead</td><td>lead: lead.email or lead.phone</td>" in text
    assert "<td>new-lead-7-in-7</td>" in text  # entering the lead stage enrolled her in the shipped flow


async def test_an_unknown_lead_is_a_404_page(client, add_operator):
    await add_operator("ola", "operator")
    await log_in(client, "ola")
    for path, message in (("/console/leads/424242", "There is no lead 424242."), ("/console/leads/x1", "no lead x1")):
        status, text = await page(client, path)
        assert status == 404 and message in text and "<h1>Not found</h1>" in text


async def test_transcripts_are_for_operators_not_marketers(client, add_operator, db):
    async with client.ws_connect("/chat/ws") as ws:
        await hello(ws)
        await say(client, ws, "Do you have <b>bulk</b> pricing?")
    [lead] = await rows(db, Lead)
    await add_operator("ola", "operator")
    await add_operator("max", "marketer")

    await log_in(client, "ola")
    status, text = await page(client, f"/console/leads/{lead.id}")
    assert status == 200 and "Do you have &lt;b&gt;bulk&lt;/b&gt; pricing?" in text

    await log_in(client, "max")
    status, text = await page(client, f"/console/leads/{lead.id}")
    assert status == 200 and "bulk" not in text and "Your role does not show conversations." in text


async def test_marketers_read_transcripts_when_the_config_allows(make_client, settings, add_operator, db):
    client = await make_client(settings.with_(console=ConsoleSettings(marketers_read_conversations=True)))
    async with client.ws_connect("/chat/ws") as ws:
        await hello(ws)
        await say(client, ws, "Is there a discount for teams?")
    [lead] = await rows(db, Lead)
    await add_operator("max", "marketer")
    await log_in(client, "max")
    assert "Is there a discount for teams?" in (await page(client, f"/console/leads/{lead.id}"))[1]


async def test_the_flows_page_shows_each_flow_with_its_lint_status(make_client, settings, add_operator, tmp_path):
    templates = shipped_templates(tmp_path / "templates")
    (templates / "flows" / "broken.j2").write_text('+++\nname = "Broken"\ntrigger = "no-such-event"\n+++\n')
    client = await make_client(settings.with_(templates=templates))
    await add_operator("max", "marketer")
    await log_in(client, "max")
    status, text = await page(client, "/console/flows")
    assert status == 200
    rows_ = re.findall(r'<tr class="(ok|failing)">\s*<td>([\w-]+)</td>', text)
    assert ("failing", "broken") in rows_
    assert {slug for state, slug in rows_ if state == "ok"} == set(SHIPPED_FLOWS)
    assert "not loaded" in text and "line " in text


async def test_the_console_front_door_leads_a_marketer_to_the_leads(client, add_operator):
    await add_operator("mo", "marketer")
    await log_in(client, "mo")
    answer = await client.get("/console", allow_redirects=False)
    assert answer.status == 302 and answer.headers["Location"] == "/console/leads"
    style = await client.get("/console/console.css")
    assert style.status == 200 and "header.top" in await style.text()
