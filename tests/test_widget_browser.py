"""The widget customised and translated, its pre-chat form, and the demo's pricing page, in a real browser.

As in test_browser.py: headless Chromium (Debian's package), the real app on a loopback port, waits that poll
the DOM (expect), never sleeps.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from playwright.async_api import expect

from bot.config import WidgetSettings
from storage.models import Enrollment, Event, Lead, PointsEntry

from conftest import ROOT, rows, templates_with
from test_browser import browser, new_page, say  # noqa: F401  (fixtures)

ONLINE = re.compile(r"We reply right here")


@pytest.fixture
def customer_site(aiohttp_server) -> Callable[[str], Awaitable[str]]:  # type: ignore[no-untyped-def]
    """The customer's own site, on another origin than Kindling's: one page holding a given script tag."""

    async def serve(script_tag: str) -> str:
        html = f"<!doctype html><html><head><title>Acme</title></head><body><h1>Acme</h1>{script_tag}</body></html>"

        async def page(request: web.Request) -> web.Response:
            return web.Response(text=html, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", page)
        server = await aiohttp_server(app)
        return str(server.make_url("/"))

    return serve


async def test_a_russian_browser_sees_the_widget_in_russian_and_the_bot_knows_it(client, db, new_page):  # noqa: F811
    page = await new_page(locale="ru-RU")
    await page.goto(str(client.make_url("/")))
    await page.get_by_role("button", name="Открыть чат").click()
    panel = page.get_by_role("dialog", name="Напишите нам")
    await expect(panel).to_be_visible()
    await expect(panel.locator(".kindling-state")).to_have_text("Отвечаем прямо здесь")
    await expect(panel.locator(".kindling-intro")).to_have_text(re.compile("^Здравствуйте!"))
    box = panel.get_by_role("textbox", name="Сообщение")
    await expect(box).to_have_attribute("placeholder", "Напишите сообщение…")
    await expect(panel.get_by_role("button", name="Отправить")).to_be_visible()
    [lead] = await rows(db, Lead)
    assert lead.locale == "ru-RU"  # the hello's locale is the widget's language, so the bot's messages match it


async def test_data_attributes_on_the_script_tag_customise_the_widget(client, db, new_page, customer_site):  # noqa: F811
    page = await new_page(locale="ru-RU")
    script = (
        f'<script src="{client.make_url("/widget.js")}" data-title="Acme help" data-subtitle="Ask about plans"'
        ' data-color="#0a7" data-position="bottom-left" data-lang="zh" async></script>'
    )
    await page.goto(await customer_site(script))
    launcher = page.get_by_role("button", name="打开聊天")  # data-lang wins over the browser's Russian
    await expect(launcher).to_have_css("background-color", "rgb(0, 170, 119)")
    box = await launcher.bounding_box()
    assert box is not None and box["x"] < 100  # bottom-left, not the default bottom-right
    await launcher.click()
    panel = page.get_by_role("dialog", name="Acme help")
    await expect(panel.locator(".kindling-title")).to_contain_text("Acme help")
    await expect(panel.locator(".kindling-intro")).to_have_text("Ask about plans")
    await expect(panel.locator(".kindling-header")).to_have_css("background-color", "rgb(0, 170, 119)")
    await expect(panel.get_by_role("textbox", name="消息")).to_have_attribute("placeholder", "输入消息…")
    await expect(panel.locator(".kindling-state")).to_have_text("我们就在这里回复")
    [lead] = await rows(db, Lead)
    assert lead.locale == "zh"


async def test_the_prechat_form_names_the_lead_and_its_email_is_claimed_with_consent(
    make_client,
    settings,
    db,
    new_page,  # noqa: F811
):
    widget = WidgetSettings(prechat=("name", "email", "consent"), consent_text="Send me Acme news")
    client = await make_client(settings.with_(widget=widget))
    page = await new_page(locale="en-US")
    await page.goto(str(client.make_url("/")))
    await page.get_by_role("button", name=re.compile("^Open chat")).click()
    panel = page.get_by_role("dialog", name="Chat with us")
    await expect(panel.get_by_role("textbox", name="Message")).to_be_hidden()  # the form comes first
    await expect(panel.locator(".kindling-state")).to_have_text(ONLINE)
    form = panel.locator(".kindling-prechat")
    name, email = form.get_by_label("Your name"), form.get_by_label("Your email")
    start, error = form.get_by_role("button", name="Start the chat"), form.get_by_role("alert")

    await name.fill("Max Turner")
    await email.fill("not an email")
    await start.click()
    await expect(error).to_have_text("Please enter a valid email address.")  # the widget's own check
    await email.fill("max@exa..mple.com")  # looks like one; the server knows better
    await start.click()
    await expect(error).to_have_text("Please enter a valid email address.")
    await expect(start).to_be_enabled()
    [lead] = await rows(db, Lead)
    assert (lead.first_name, lead.email, lead.email_consent_at) == (None, None, None)  # nothing stored wrongly

    await email.fill("Max@Example.com")
    await form.get_by_label("Send me Acme news").check()
    await start.click()
    await say(panel, "Hello!")  # the chat is there once the server took the form
    await expect(panel.locator(".kindling-from-visitor .kindling-bubble")).to_have_text("Hello!")
    [lead] = await rows(db, Lead)
    assert (lead.first_name, lead.last_name, lead.email) == ("Max", "Turner", "max@example.com")
    assert lead.email_consent_at is not None and lead.email_consent_source == "widget"

    await page.reload()  # asked once
    await page.get_by_role("button", name=re.compile("^Open chat")).click()
    await expect(panel.get_by_role("textbox", name="Message")).to_be_visible()
    await expect(panel.get_by_label("Your name")).to_have_count(0)


async def test_the_demos_pricing_page_raises_the_score_and_starts_the_pricing_flow(
    make_client,
    settings,
    db,
    new_page,  # noqa: F811
    tmp_path,
):
    shipped = (ROOT / "templates" / "flows" / "pricing-not-ready.j2").read_text()
    client = await make_client(
        settings.with_(templates=templates_with(tmp_path / "templates", {"pricing-not-ready": shipped}))
    )
    page = await new_page(locale="en-US")
    await page.goto(str(client.make_url("/")))
    tour = page.get_by_role("complementary", name="Guided tour")
    await expect(tour.get_by_role("heading")).to_have_text("Say hi")
    await tour.get_by_role("button", name="Next").click()
    await expect(tour.get_by_role("heading")).to_have_text("Look at pricing")
    # The widget knows its visitor once its hello is answered; a page left before that starts a new visitor.
    await page.wait_for_function("() => localStorage.getItem('kindling.visitor') !== null")
    await page.get_by_role("navigation").get_by_role("link", name="Pricing").click()

    await expect(page).to_have_url(re.compile(r"/pricing\?"))
    await expect(page.get_by_role("heading", name="Simple pricing")).to_be_visible()
    await expect(tour.get_by_role("heading")).to_have_text("Leave your email")  # that step is done
    await page.get_by_role("button", name=re.compile("^Open chat")).click()
    await expect(page.locator(".kindling-state")).to_have_text(ONLINE)  # the hello (and its page view) is stored
    [lead] = await rows(db, Lead)
    views = [event.payload["path"] for event in await rows(db, Event, Event.type == "page_view")]
    [points] = await rows(db, PointsEntry, PointsEntry.lead_id == lead.id)
    assert (points.rule, points.points) == ("pricing page", 10) and lead.score == 10
    [enrollment] = await rows(db, Enrollment)
    assert (enrollment.flow_slug, enrollment.lead_id, enrollment.status) == ("pricing-not-ready", lead.id, "active")
    assert views == ["/", "/pricing"]
