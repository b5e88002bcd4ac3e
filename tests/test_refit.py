"""Learned scoring fitted again on a schedule (`scoring.refit`): once a period, by one of two instances, in a process
of its own (`kindling score fit`), keeping the model there was when the new fit is refused."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from storage.learned import accepted_model
from storage.models import Lead, ScoringModel

from conftest import rows, services_of
from test_learned_scoring import lately, made_up, write

WEEK = timedelta(days=7)


async def instances(make_client, settings, clock, every):  # type: ignore[no-untyped-def]
    """Two instances on one database, on the real time: the fit's child process stamps its model with it."""
    clock.advance(datetime.now(UTC) - clock.now())
    weekly = settings.with_(refit=every)
    return await make_client(weekly), await make_client(weekly)


async def test_a_scheduled_fit_runs_once_a_period_by_one_instance_and_rescores_every_lead(
    make_client, settings, clock, db
):
    await write(db, made_up(900, seed=7, now=lately()))
    a, b = await instances(make_client, settings, clock, WEEK)
    ran = await asyncio.gather(services_of(a).refit.run(), services_of(b).refit.run())
    assert sorted(ran) == [False, True]  # both ticked at once: one fitted
    [model] = await rows(db, ScoringModel)
    assert model.accepted, model.verdict
    assert {lead.likelihood_model for lead in await rows(db, Lead)} == {model.id}

    clock.advance(WEEK - timedelta(minutes=10))
    assert not await services_of(a).refit.run() and not await services_of(b).refit.run()  # not due yet
    clock.advance(timedelta(minutes=11))
    assert await services_of(b).refit.run()
    assert [m.accepted for m in await rows(db, ScoringModel)] == [True, True]
    assert (await accepted_model(db)).id == model.id + 1


async def test_a_refused_scheduled_fit_keeps_nothing_new_and_off_means_never(make_client, settings, clock, db):
    await write(db, made_up(900, seed=11, informative=False, now=lately()))  # outcomes unrelated to behaviour
    a, _ = await instances(make_client, settings, clock, WEEK)
    assert await services_of(a).refit.run()
    [model] = await rows(db, ScoringModel)
    assert not model.accepted and "does not beat the rule score" in model.verdict
    assert await accepted_model(db) is None and {lead.likelihood for lead in await rows(db, Lead)} == {None}

    off, _ = await instances(make_client, settings, clock, None)  # the default: only `kindling score fit` by hand
    clock.advance(4 * WEEK)
    assert not await services_of(off).refit.run()
    assert len(await rows(db, ScoringModel)) == 1
