"""The pipeline board in a real browser: a card dragged to another column moves the lead, live on another board."""

from __future__ import annotations

import re
from datetime import timedelta

from playwright.async_api import Page, expect

from conftest import API_KEY, PASSWORD
from test_browser import browser, new_page  # noqa: F401  (fixtures)
from test_pipeline import add_leads


async def open_board(page: Page, url: str, name: str) -> None:
    """Log in on the way to the board and wait for its live socket."""
    await page.goto(url)
    await page.get_by_label("Name").fill(name)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_title("Pipeline · Kindling")
    await expect(page.locator("body")).to_have_attribute("data-live", "on")


def card_in(page: Page, stage: str, lead_id: int):  # type: ignore[no-untyped-def]
    return page.locator(f'[data-column="{stage}"] .card[data-lead="{lead_id}"]')


def count_of(page: Page, stage: str):  # type: ignore[no-untyped-def]
    return page.locator(f'[data-column="{stage}"] [data-count]')


async def test_a_dragged_card_moves_the_lead_and_another_board_sees_it_move(
    make_client,
    settings,
    add_operator,
    db,
    clock,
    new_page,  # noqa: F811
):
    app = await make_client(settings)
    max_id, fay_id = await add_leads(
        db,
        clock,
        {"stage": "lead", "first_name": "Max", "first_touch": {"source": "google"}, "in_stage": timedelta(hours=3)},
        {"stage": "lead", "first_name": "Fay", "in_stage": timedelta(hours=1)},
    )
    await add_operator("ann", "operator")
    await add_operator("bob", "operator")
    url = str(app.make_url("/console/pipeline"))
    ann, bob = await new_page(), await new_page()
    await open_board(ann, url, "ann")
    await open_board(bob, url, "bob")
    await expect(count_of(ann, "lead")).to_have_text("2")
    await expect(ann.locator('[data-column="lead"] [data-median]')).to_have_text("2 h")

    clock.advance(timedelta(minutes=5))
    await ann.locator(f'.card[data-lead="{max_id}"]').drag_to(ann.locator('[data-column="sql"]'))
    await expect(card_in(ann, "sql", max_id)).to_be_visible()
    await expect(count_of(ann, "sql")).to_have_text("1")
    await expect(count_of(ann, "lead")).to_have_text("1")

    # Bob's board, without a reload.
    await expect(card_in(bob, "sql", max_id)).to_be_visible()
    await expect(card_in(bob, "lead", max_id)).to_have_count(0)
    await expect(count_of(bob, "sql")).to_have_text("1")
    await expect(count_of(bob, "lead")).to_have_text("1")

    # Bob moves Fay with the keyboard: the card's stage list and Move; Ann sees it.
    fay = card_in(bob, "lead", fay_id)
    await fay.get_by_label("Stage of Fay").select_option("mql")
    await fay.get_by_role("button", name="Move").click()
    await expect(card_in(bob, "mql", fay_id)).to_be_visible()
    await expect(card_in(ann, "mql", fay_id)).to_be_visible()
    await expect(count_of(ann, "lead")).to_have_text("0")

    # The stage change is on the lead, with the operator's name.
    await card_in(ann, "sql", max_id).get_by_role("link", name="Max").click()
    change = ann.locator("tr", has_text="moved by ann on the pipeline board").first  # the lead's stages: from, to, why
    await expect(change.locator("td")).to_have_text([re.compile("2026"), "lead", "sql", re.compile("^moved by ann")])


async def test_a_marketer_sees_a_lead_from_beyond_the_first_page_move_in_and_more_cards_without_a_reload(
    make_client,
    settings,
    add_operator,
    db,
    clock,
    new_page,  # noqa: F811
):
    app = await make_client(settings)
    ids = await add_leads(db, clock, *({"stage": "sql", "ago": timedelta(minutes=n)} for n in range(53)))
    await add_operator("mia", "marketer")
    board = await new_page()
    await open_board(board, str(app.make_url("/console/pipeline")), "mia")
    cards = board.locator('[data-column="sql"] .card')
    await expect(cards).to_have_count(50)
    await expect(count_of(board, "sql")).to_have_text("53")

    # A lead beyond the first page moves (the API here): its card comes to its new column, counts follow.
    patch = await app.patch(
        f"/api/leads/{ids[-1]}", json={"stage": "customer"}, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert patch.status == 200
    await expect(card_in(board, "customer", ids[-1])).to_be_visible()
    await expect(count_of(board, "customer")).to_have_text("1")
    await expect(count_of(board, "sql")).to_have_text("52")

    await board.locator('[data-column="sql"]').get_by_role("link", name="More").click()
    await expect(cards).to_have_count(52)
    await expect(cards.last).to_have_attribute("data-lead", str(ids[-2]))  # the oldest activity last
    await expect(board.get_by_role("link", name="More")).to_have_count(0)
    await expect(board).to_have_url(str(app.make_url("/console/pipeline")))  # no page load

    # Marketers read the board: no dragging, no Move.
    await expect(board.locator('.card[draggable="true"]')).to_have_count(0)
    await expect(board.get_by_role("button", name="Move")).to_have_count(0)
