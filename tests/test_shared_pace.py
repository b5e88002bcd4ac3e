"""Several instances on PostgreSQL share one Telegram budget (30 messages/s overall, about 1/s per chat).

And on either database the budget puts the drip backlog behind everything else.

Each instance reserves a slot per send in the database; these tests read the slots granted, which are
exact, instead of timing the sends. On SQLite Kindling runs as one instance and paces in-process.
"""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import pytest

from bot.channels.telegram import NURTURE_QUEUED, TelegramPacing
from storage.db import create_engine, is_sqlite, sessionmaker
from storage.models import Pace
from storage.pace import SharedPace

from conftest import rows, services_of
from fake_telegram import TOKEN
from test_telegram import CHAT, SECRET, payload, post

OVERALL = 1 / 30


@pytest.fixture
async def instances(database_url):
    """The budgets as two instances see them: two engines (connection pools) on one database."""
    if is_sqlite(database_url):
        pytest.skip("shared budgets need PostgreSQL (set KINDLING_TEST_DATABASE_URL)")
    engines = [create_engine(database_url) for _ in range(2)]
    yield [SharedPace(sessionmaker(engine)) for engine in engines]
    for engine in engines:
        await engine.dispose()


async def test_two_instances_asking_at_once_get_slots_a_thirtieth_of_a_second_apart(instances):
    a, b = instances
    slots = await asyncio.gather(*(pace.reserve("telegram", OVERALL) for pace in [a, b] * 45))

    starts = sorted(slot.start for slot in slots)
    gaps = [later - earlier for earlier, later in zip(starts, starts[1:], strict=False)]
    assert min(gaps) >= timedelta(seconds=OVERALL) - timedelta(microseconds=2)
    assert starts[-1] - starts[0] >= timedelta(seconds=89 * OVERALL) - timedelta(microseconds=100)
    assert sum(slot.wait > 0 for slot in slots) >= 80  # most had to wait for their turn


async def test_a_chat_gets_one_message_a_second_and_other_chats_are_not_held_up(instances, db):
    a, b = instances
    first = [await (a if i % 2 else b).reserve("telegram:42", 1.0) for i in range(4)]
    other = await a.reserve("telegram:43", 1.0)

    assert first[0].wait == 0.0 and all(slot.wait > 0 for slot in first[1:])  # no burst: Telegram's 1/s
    gaps = [later.start - earlier.start for earlier, later in itertools.pairwise(first)]
    assert gaps == [timedelta(seconds=1)] * 3
    assert other.wait == 0.0
    assert sorted(row.key for row in await rows(db, Pace)) == ["telegram:42", "telegram:43"]


async def test_a_message_that_went_out_late_moves_its_chats_next_slot(instances):
    """The overall budget may hold a message past its chat slot: the chat's next one is a second after that."""
    a, b = instances
    first = await a.reserve("telegram:7", 1.0)
    went_out = first.start + timedelta(seconds=2.5)
    await a.push("telegram:7", went_out + timedelta(seconds=1))
    second = await b.reserve("telegram:7", 1.0)
    assert second.start == went_out + timedelta(seconds=1)
    await a.push("telegram:7", first.start)  # never moves a slot back
    assert (await b.reserve("telegram:7", 1.0)).start == second.start + timedelta(seconds=1)


async def test_a_budget_may_allow_a_burst_before_its_rate(instances):
    """The budget is a generic cell rate: with burst 3, three go at once, then one per interval."""
    a, b = instances
    slots = [await (a if i % 2 else b).reserve("burst", 1.0, 3) for i in range(5)]
    assert [slot.wait for slot in slots[:3]] == [0.0, 0.0, 0.0]
    assert slots[3].start - slots[0].reserved_at >= timedelta(seconds=1) - timedelta(milliseconds=1)
    assert slots[4].start - slots[3].start == timedelta(seconds=1)


async def test_on_postgresql_the_bot_takes_its_slots_from_the_shared_budget(make_client, settings, db, fake_telegram):
    if is_sqlite(settings.database_url):
        pytest.skip("shared budgets need PostgreSQL (set KINDLING_TEST_DATABASE_URL)")
    client = await make_client(
        settings.with_(telegram_token=TOKEN, telegram_secret=SECRET, telegram_api_url=fake_telegram.url)
    )
    assert (await post(client, payload("message_text"))).status == 200
    await services_of(client).drain()

    assert fake_telegram.texts(CHAT) == [
        "Thanks, Ann! A person from our team will reply here within 5 minutes."
    ]  # a question
    assert sorted(row.key for row in await rows(db, Pace)) == ["telegram", f"telegram:{CHAT}"]


async def test_an_operator_card_is_not_queued_behind_a_drip_backlog(database_url, db):
    """The overall budget serves first come, first served; a backlog's nurture may hold only a few places."""
    pacing = TelegramPacing(None if is_sqlite(database_url) else SharedPace(db))
    sent: list[str] = []
    going = asyncio.Event()

    async def call(label: str) -> bool:  # the Bot API call the budget lets go
        sent.append(label)
        if len(sent) == 5:
            going.set()
        return True

    def request(label: str, chat: int, nurture: bool):  # type: ignore[no-untyped-def]
        data = {"chat_id": chat, "text": label}
        return pacing.process_request(call, (label,), {}, "sendMessage", data, {"nurture": nurture})

    backlog = [asyncio.create_task(request(f"nurture {i}", CHAT + i, True)) for i in range(40)]
    await going.wait()  # the backlog is being sent, 30 a second
    await request("card", -1001234567890, False)
    await asyncio.gather(*backlog)

    assert len(sent) == 41
    assert sent.index("card") <= 5 + NURTURE_QUEUED + 1  # not 41st: behind only those already queued


async def test_senders_waiting_at_once_share_one_reservation_and_two_instances_stay_within_the_budget(instances):
    """Each instance reserves one slot per waiting sender in one go; together they never exceed the budget."""
    a, b = instances
    slots = await asyncio.gather(*(pace.slot("whatsapp:1", OVERALL) for pace in [a] * 45 + [b] * 45))

    starts = sorted(slot.start for slot in slots)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert min(gaps) >= timedelta(seconds=OVERALL) - timedelta(microseconds=2)  # never two in one interval
    assert starts[-1] - starts[0] >= timedelta(seconds=89 * OVERALL) - timedelta(microseconds=100)
    for mine in (slots[:45], slots[45:]):  # one run of consecutive slots each: one round trip, not 45
        ends = [slot.start for slot in mine]
        assert ends[-1] - ends[0] == timedelta(seconds=44 * OVERALL)
    later = await a.slot("whatsapp:1", OVERALL)  # and the budget goes on after both runs
    assert later.start >= starts[-1] + timedelta(seconds=OVERALL) - timedelta(microseconds=2)
