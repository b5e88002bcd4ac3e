"""Editing a lead on its console page: name, email, phone, tags and a note, each change an event."""

from __future__ import annotations

import html

from storage.models import Event, Lead

from conftest import API_KEY, rows
from test_console_queue import operator, post

FORM = {"first_name": "", "last_name": "", "email": "", "phone": "", "tags": "", "note": ""}


async def new_lead(client, **lead: str) -> int:  # type: ignore[no-untyped-def]
    """A lead made through the events API, as the site's backend would."""
    answer = await client.post(
        "/api/events", json={"type": "signup", "lead": lead}, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert answer.status == 201, await answer.text()
    return (await answer.json())["lead_id"]


async def edit(client, lead_id: int, csrf: str, **fields: str):  # type: ignore[no-untyped-def]
    return await post(client, f"/console/leads/{lead_id}/edit", csrf, **fields)


async def lead_of(db, lead_id: int) -> Lead:  # type: ignore[no-untyped-def]
    [lead] = await rows(db, Lead, Lead.id == lead_id)
    return lead


async def test_an_operator_edits_every_field_and_each_change_is_an_event(client, db, add_operator):
    lead_id = await new_lead(client, email="max@example.com")
    csrf = await operator(client, add_operator, "ann")
    page = await (await client.get(f"/console/leads/{lead_id}")).text()
    assert f'action="/console/leads/{lead_id}/edit"' in page and 'value="max@example.com"' in page

    form = {**FORM, "first_name": " Max ", "last_name": "Turner", "email": "Max.Turner@Example.COM"}
    form |= {"phone": "+44 20 7946 0958", "tags": "vip, call-back vip", "note": "Wants a demo on Friday.\nBudget 5k."}
    answer = await edit(client, lead_id, csrf, **form)
    assert answer.status == 303 and answer.headers["Location"] == f"/console/leads/{lead_id}"

    lead = await lead_of(db, lead_id)
    assert (lead.first_name, lead.last_name, lead.email) == ("Max", "Turner", "max.turner@example.com")
    assert (lead.phone, lead.tags, lead.note) == (
        "+442079460958",
        ["vip", "call-back"],
        "Wants a demo on Friday.\nBudget 5k.",
    )
    [edited] = await rows(db, Event, Event.type == "lead_edited")
    assert edited.payload["by"] == "ann" and edited.payload["changes"] == {
        "first_name": {"before": None, "after": "Max"},
        "last_name": {"before": None, "after": "Turner"},
        "email": {"before": "max@example.com", "after": "max.turner@example.com"},
        "phone": {"before": None, "after": "+442079460958"},
        "tags": {"before": [], "after": ["vip", "call-back"]},
        "note": {"before": None, "after": "Wants a demo on Friday.\nBudget 5k."},
    }
    page = html.unescape(await (await client.get(f"/console/leads/{lead_id}")).text())
    assert "<h1>Max Turner <small>" in page and "Wants a demo on Friday." in page
    assert "by ann: first_name - → Max; last_name - → Turner; email max@example.com → max.turner@example.com" in page

    # Saving again unchanged records nothing; clearing a field records it going.
    assert (await edit(client, lead_id, csrf, **{**form, "email": "max.turner@example.com"})).status == 303
    assert len(await rows(db, Event, Event.type == "lead_edited")) == 1
    assert (await edit(client, lead_id, csrf, note="")).status == 303
    assert (await lead_of(db, lead_id)).note is None
    last = (await rows(db, Event, Event.type == "lead_edited"))[-1]
    assert last.payload["changes"] == {"note": {"before": "Wants a demo on Friday.\nBudget 5k.", "after": None}}


async def test_a_bad_email_phone_tag_or_note_gets_the_form_back_and_changes_nothing(client, db, add_operator):
    lead_id = await new_lead(client, first_name="Fay", email="fay@example.com")
    csrf = await operator(client, add_operator, "ann")

    for fields, message in [
        ({"email": "fay@", "first_name": "Faye"}, "“fay@” is not an email address"),
        ({"phone": "12345"}, "“12345” is not a phone number: write it with its country code"),
        ({"tags": "vip, <b>"}, "“<b>” is not a tag"),
        ({"note": "x" * 2001}, "the note is at most 2000 characters"),
        ({"first_name": "F" * 101}, "a name is at most 100 characters"),
    ]:
        answer = await edit(client, lead_id, csrf, **fields)
        text = html.unescape(await answer.text())
        assert answer.status == 400 and message in text, fields
    assert 'value="Faye"' in await (await edit(client, lead_id, csrf, email="fay@", first_name="Faye")).text()

    lead = await lead_of(db, lead_id)
    assert (lead.first_name, lead.email, lead.phone, lead.tags, lead.note) == ("Fay", "fay@example.com", None, [], None)
    assert await rows(db, Event, Event.type == "lead_edited") == []


async def test_marketers_may_not_edit_leads_and_a_form_without_its_token_is_refused(client, db, add_operator):
    lead_id = await new_lead(client, first_name="Fay", email="fay@example.com")
    csrf = await operator(client, add_operator, "mia", "marketer")
    assert "/edit" not in await (await client.get(f"/console/leads/{lead_id}")).text()
    assert (await edit(client, lead_id, csrf, first_name="Mia was here")).status == 403

    await client.post("/console/logout", data={"csrf_token": csrf})
    csrf = await operator(client, add_operator, "ann")
    refused = await client.post(f"/console/leads/{lead_id}/edit", data={"first_name": "X"}, allow_redirects=False)
    assert refused.status == 403
    assert (await edit(client, 424242, csrf, first_name="X")).status == 404
    assert (await lead_of(db, lead_id)).first_name == "Fay"
    assert await rows(db, Event, Event.type == "lead_edited") == []


async def test_an_admin_may_edit_too(client, db, add_operator):
    lead_id = await new_lead(client, first_name="Fay", email="fay@example.com")
    csrf = await operator(client, add_operator, "root", "admin")
    assert (await edit(client, lead_id, csrf, last_name="Lee", tags="vip")).status == 303
    lead = await lead_of(db, lead_id)
    assert (lead.first_name, lead.last_name, lead.tags) == ("Fay", "Lee", ["vip"])
