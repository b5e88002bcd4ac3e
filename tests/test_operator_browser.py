"""Operator basics in a real browser: new-lead alerts (tab count, notification, chime, mute) and canned replies."""

from __future__ import annotations

import re

from playwright.async_api import Page, expect

from conftest import PASSWORD, services_of, shipped_templates
from test_browser import browser, new_page  # noqa: F401  (fixtures)
from test_console_queue import warm

# Records what our page asks of the browser: each Notification made, each tone played.
RECORD = """
window.__notes = [];
window.__tones = 0;
const Real = window.Notification;
function Recorded(title, options) {
  window.__notes.push({ title: title, body: (options || {}).body });
  return new Real(title, options);
}
Recorded.requestPermission = (callback) => Real.requestPermission(callback);
Object.defineProperty(Recorded, "permission", { get: () => Real.permission });
window.Notification = Recorded;
const oscillator = AudioContext.prototype.createOscillator;
AudioContext.prototype.createOscillator = function () { window.__tones += 1; return oscillator.call(this); };
"""
PRICING = re.compile(r"^Hi Max! Acme has three plans")


async def log_in(page: Page, url: str, name: str) -> None:
    await page.goto(url)
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("body")).to_have_attribute("data-live", "on")  # the inbox, operators' home
    await page.goto(url.rstrip("/") + "/queue")  # these tests take leads from the queue's rows
    await expect(page.locator("body")).to_have_attribute("data-live", "on")


async def test_a_new_warm_lead_counts_in_the_tab_title_notifies_and_chimes_until_muted(
    make_client,
    settings,
    add_operator,
    new_page,  # noqa: F811
):
    app = await make_client(settings)
    await add_operator("ann", "operator")
    console = await new_page()
    await console.add_init_script(RECORD)
    await log_in(console, str(app.make_url("/console")), "ann")
    await expect(console).to_have_title("Queue · Kindling")

    # Permission is asked only when the operator presses the header's button.
    ask = console.get_by_role("button", name="Turn on notifications")
    assert await console.evaluate("() => Notification.permission") == "default"
    await expect(ask).to_be_visible()
    await console.context.grant_permissions(["notifications"], origin=str(app.make_url("/")).rstrip("/"))
    await ask.click()
    await expect(console.get_by_text("Notifications on")).to_be_visible()
    await expect(ask).to_be_hidden()

    await warm(app, name="Max")  # "Can I talk to a human?" in the widget
    await expect(console).to_have_title("(1) Queue · Kindling")
    notes = await console.evaluate("() => window.__notes")
    assert notes == [{"title": "Kindling: Max is waiting", "body": 'wrote "talk to a human"'}]
    assert await console.evaluate("() => window.__tones") == 2

    # Muted: the next lead still counts and notifies, silently; the choice outlives a reload.
    await console.get_by_role("button", name="Sound on").click()
    await expect(console.get_by_role("button", name="Sound off")).to_have_attribute("aria-pressed", "false")
    await warm(app, name="Gus")
    await expect(console).to_have_title("(2) Queue · Kindling")
    assert len(await console.evaluate("() => window.__notes")) == 2
    assert await console.evaluate("() => window.__tones") == 2

    await console.get_by_role("row", name="Max").get_by_role("button", name="Take").click()
    await expect(console.get_by_text("You hold this conversation")).to_be_visible()
    await expect(console).to_have_title(re.compile(r"^\(1\) Max · Kindling$"))  # Gus still waits
    await expect(console.get_by_role("button", name="Sound off")).to_be_visible()
    assert await console.evaluate("() => window.__notes") == []  # those waiting already are not news
    await services_of(app).drain()


async def test_slash_picks_a_canned_reply_rendered_for_the_lead(
    make_client,
    settings,
    add_operator,
    new_page,  # noqa: F811
    tmp_path,
):
    templates = shipped_templates(tmp_path / "templates")
    (templates / "_replies" / "broken.j2").write_text("{# Broken one #}\nHi {{ lead.frist_name }}!\n")
    app = await make_client(settings.with_(templates=templates))
    await add_operator("ann", "operator")
    console = await new_page()
    await log_in(console, str(app.make_url("/console")), "ann")
    await warm(app, name="Max")
    await console.get_by_role("row", name="Max").get_by_role("button", name="Take").click()
    box = console.get_by_label(re.compile("^Reply to"))

    await box.press_sequentially("/pri")
    options = console.get_by_role("listbox", name="Canned replies").get_by_role("option")
    await expect(options).to_have_count(1)
    await expect(options).to_contain_text("/pricing · Pricing: the plans in three lines")
    await box.press("Enter")
    await expect(box).to_have_value(PRICING)
    await expect(options).to_have_count(0)

    await box.fill("")
    await box.press_sequentially("/bro")
    await expect(options).to_contain_text("Broken: _replies/broken.j2: 'dict object' has no attribute 'frist_name'")
    await box.press("Enter")
    await expect(box).to_have_value("/bro")  # a broken one is never inserted
    await expect(console.get_by_role("alert")).to_contain_text("Not inserted: _replies/broken.j2")

    # Edited, then sent as the operator's own words.
    await box.fill("")
    await box.press_sequentially("/")
    await expect(options).to_have_count(5)
    for _ in range(2):  # book-a-call, broken, contact, ...: the third
        await box.press("ArrowDown")
    await box.press("Enter")
    await expect(box).to_have_value("What's the best email to send you the details, Max?")
    await box.press_sequentially(" Or a phone number.")
    await console.get_by_role("button", name="Send").click()
    await expect(console.locator("ol.messages .text").last).to_have_text(
        "What's the best email to send you the details, Max? Or a phone number."
    )
