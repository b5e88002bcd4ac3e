"""Canned replies (`templates/_replies/*.j2`) rendered with the lead for the operator's reply box."""

from __future__ import annotations

from storage.models import Delivery

from conftest import rows, services_of
from test_console_queue import app, operator, warm  # noqa: F401  (the app fixture)

BROKEN = "{# Broken one #}\nHi {{ lead.frist_name }}!\n"


async def replies(app, lead_id: int):  # type: ignore[no-untyped-def]  # noqa: F811
    answer = await app.get(f"/console/leads/{lead_id}/replies", headers={"Accept": "application/json"})
    return answer.status, await answer.json()


async def test_the_replies_render_with_the_lead_and_the_operator(app, db, add_operator):  # noqa: F811
    await operator(app, add_operator, "ann")
    await warm(app, name="Max")
    lead_id = (await services_of(app).handoffs.queue())[0]["lead_id"]

    status, found = await replies(app, lead_id)
    assert status == 200
    assert [(r["name"], r["title"]) for r in found] == [
        ("book-a-call", "Book a call: the booking link"),
        ("contact", "Ask for email: to send details"),
        ("pricing", "Pricing: the plans in three lines"),
        ("thanks", "Thanks: close the conversation warmly"),
    ]
    texts = {r["name"]: r["text"] for r in found}
    assert texts["pricing"].startswith("Hi Max! Acme has three plans")
    assert texts["book-a-call"] == (
        "Max, happy to talk! Pick a time that suits you here: https://example.com/book (a 20-minute call, no slides)."
    )
    assert "it reaches ann and the team" in texts["thanks"]
    assert texts["contact"] == "What's the best email to send you the details, Max?"


async def test_a_broken_reply_is_reported_with_its_file_and_never_sent(app, db, add_operator):  # noqa: F811
    (services_of(app).settings.templates / "_replies" / "broken.j2").write_text(BROKEN)
    await operator(app, add_operator, "ann")
    await warm(app, name="Max")
    lead_id = (await services_of(app).handoffs.queue())[0]["lead_id"]
    sent_before = len(await rows(db, Delivery))

    status, found = await replies(app, lead_id)
    [broken] = [r for r in found if r["name"] == "broken"]
    assert status == 200 and broken["title"] == "Broken one" and broken["text"] is None
    assert broken["error"] == "_replies/broken.j2: 'dict object' has no attribute 'frist_name'"
    assert [r["name"] for r in found if r.get("text")] == ["book-a-call", "contact", "pricing", "thanks"]
    assert len(await rows(db, Delivery)) == sent_before  # rendering sends nothing


async def test_only_roles_that_reply_get_the_replies(app, db, add_operator):  # noqa: F811
    await warm(app, name="Max")
    lead_id = (await services_of(app).handoffs.queue())[0]["lead_id"]
    assert (await replies(app, lead_id))[0] == 401
    await operator(app, add_operator, "mia", "marketer")
    assert (await replies(app, lead_id))[0] == 403


async def test_an_unknown_lead_has_no_replies(app, add_operator):  # noqa: F811
    await operator(app, add_operator, "ann")
    assert (await replies(app, 424242))[0] == 404
