"""A lead's learned likelihood, recomputed right after it acts (while what it does still counts).

An accepted model scores what a lead did before its cut-off (`scoring.window` after it arrived; see
docs/leads.md). `kindling score fit` rescoring everyone covers the rest; in between, a lead still inside its window
that writes, clicks or views a page is rescored here, after the intake's commit, from its own history (a handful of
small reads on one connection) with the model the database holds. The model is looked up at most once a
`MODEL_SECONDS`, so a fit on another instance is used here within that. A lead that acts again while it is being
rescored is rescored once more afterwards; nothing is queued beyond that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from sqlalchemy import update

from flows.clock import Clock
from flows.learned import explain_lead
from storage.db import UNAVAILABLE, Sessions, transaction
from storage.learned import accepted_model
from storage.models import Lead, ScoringModel

log = logging.getLogger(__name__)
JUST_COMMITTED = timedelta(seconds=1)
MODEL_SECONDS = 60.0  # how long the accepted model read from the database is used before it is read again


class Rescorer:
    """Rescoring of leads that act, for one app."""

    def __init__(
        self, sessions: Sessions, clock: Clock, database_url: str, spawn: Callable[[Coroutine[Any, Any, Any]], None]
    ) -> None:
        self.sessions, self.clock, self.url, self.spawn = sessions, clock, database_url, spawn
        self._model: ScoringModel | None = None
        self._read_at: float | None = None  # the event loop's time of the last look at the model
        self._busy: dict[int, bool] = {}  # lead id -> acted again while being rescored
        self._reading = asyncio.Lock()

    def acted(self, lead_id: int) -> None:
        """The lead did something that was just committed: rescore it in the background, if a model scores leads."""
        if self._read_at is not None and self._model is None and not self._stale():
            return  # no accepted model (looked lately): nothing to do, not even a task
        if lead_id in self._busy:
            self._busy[lead_id] = True
            return
        self._busy[lead_id] = False
        self.spawn(self._rescore(lead_id))

    async def _rescore(self, lead_id: int) -> None:
        try:
            while True:
                await self.rescore(lead_id)
                if not self._busy.get(lead_id):
                    return
                self._busy[lead_id] = False
        except (*UNAVAILABLE, OSError) as exc:  # the next fit rescores it anyway
            log.warning("lead %s not rescored: %s", lead_id, exc)
        finally:
            self._busy.pop(lead_id, None)

    async def rescore(self, lead_id: int) -> int | None:
        """Recompute one lead's likelihood now if it is still inside its window; the new likelihood, or None."""
        model = await self.model()
        if model is None:
            return None
        now = self.clock.now()
        async with self.sessions() as session:
            lead = await session.get(Lead, lead_id)
            if lead is None or lead.merged_into_id is not None:
                return None
            if now - lead.created_at >= timedelta(seconds=model.window_seconds) and lead.likelihood_model == model.id:
                return None  # past its cut-off: what it does now does not count, and its likelihood is this model's
            connection = await session.connection()
            # The history counts what happened before its `now`: a second on, what was just committed (stamped
            # with this same clock, perhaps this very instant) is in.
            seen = now + JUST_COMMITTED
            explained = await explain_lead(self.url, model, lead_id, seen, limit=0, connection=connection)
        if explained is None:
            return None

        async def save(session: Any) -> None:
            values = {"likelihood": explained.likelihood, "likelihood_model": model.id}
            await session.exec(update(Lead).where(Lead.id == lead_id).values(**values))

        await transaction(self.sessions, save)
        return explained.likelihood

    async def model(self) -> ScoringModel | None:
        """The accepted model, read again once a MODEL_SECONDS (one read at a time: a burst of new leads at start-up
        waits for the same one)."""
        async with self._reading:
            if self._stale():
                self._model = await accepted_model(self.sessions)
                self._read_at = asyncio.get_running_loop().time()
        return self._model

    def _stale(self) -> bool:
        return self._read_at is None or asyncio.get_running_loop().time() - self._read_at >= MODEL_SECONDS
