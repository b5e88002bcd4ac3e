"""Learned scoring fitted again on a schedule (`scoring.refit`), by one instance at a time, in a process of its own.

The app ticks `Refit.run` every few minutes; the database says whether a fit is due: the last one (any
instance's, or a `kindling score fit` by hand) is older than `scoring.refit`. One instance claims it with a row
in `setting`, so two instances never fit at once, and runs `kindling score fit` as a child process: reading the
history and fitting take minutes and hundreds of megabytes on a large database, and the server keeps answering
meanwhile. A refused fit keeps the accepted model there was (the fit itself sees to that); its verdict is logged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from flows.clock import Clock
from storage.db import Sessions, transaction
from storage.models import ScoringModel, Setting

log = logging.getLogger(__name__)
CLAIM = "scoring.refit_claimed_at"  # the setting row: when an instance last took a scheduled fit
CHECK_SECONDS = 600.0  # how often the app asks whether a fit is due
LOG_TAIL = 2000  # characters of a failed fit's output kept in the log


@dataclass
class Refit:
    """One instance's part in the scheduled fits."""

    sessions: Sessions
    clock: Clock
    every: timedelta | None
    database_url: str

    async def run(self) -> bool:
        """Fit now if one is due and this instance gets it; whether it ran (accepted or not)."""
        if self.every is None or not await transaction(self.sessions, self._claim):
            return False
        log.info("learned scoring: fitting again (scoring.refit = %s)", self.every)
        code, output = await self._fit()
        if code == 0:
            log.info("learned scoring: a new model is accepted\n%s", output[-LOG_TAIL:])
        elif code == 1:
            log.info("learned scoring: the new fit was refused; the model there was stays\n%s", output[-LOG_TAIL:])
        else:
            log.error("learned scoring: `kindling score fit` failed (exit %s)\n%s", code, output[-LOG_TAIL:])
        return True

    async def _claim(self, session: AsyncSession) -> bool:
        """Whether a fit is due, and if so take it: the claim row moves to now (the loser of a race retries and
        finds it taken)."""
        now = self.clock.now()
        claim = await session.get(Setting, CLAIM, with_for_update=True)
        last_fit = (await session.exec(select(func.max(ScoringModel.created_at)))).one()
        last = max(
            [moment for moment in (last_fit, _moment(claim.value) if claim else None) if moment is not None],
            default=None,
        )
        if last is not None and now - last < self.every:
            return False
        if claim is None:
            session.add(Setting(key=CLAIM, value=now.isoformat()))
        else:
            claim.value = now.isoformat()
            session.add(claim)
        await session.flush()  # a second instance inserting the same key at once loses here, and retries
        return True

    async def _fit(self) -> tuple[int | None, str]:
        """`kindling score fit` on this database, as a child process; its exit status and output."""
        env = {**os.environ, "KINDLING_DATABASE_URL": self.database_url}
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "score", "fit",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await child.communicate()
        return child.returncode, output.decode("utf-8", "replace")


def _moment(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
