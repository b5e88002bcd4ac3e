"""Every stage change, published on the hub once its transaction commits: the pipeline board moves the card.

Stage changes are made in many places (stage rules at intake, flow actions, a won handoff, the API, the
board), all through `flows.reactions.set_stage`, which adds a `stage_changed` event. Rather than teach each
caller to publish, this watches the ORM: `stage_changed` events flushed in a session are kept in the session
and published on `PIPELINE` after the commit (dropped on a rollback, so a retried transaction publishes once).
The frame is small: `{"type": "stage", "lead": ID, "from": STAGE, "to": STAGE}`.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from bot.delivery.hub import Hub
from storage.db import Sessions
from storage.models import Event

PIPELINE = "pipeline"
_MOVES = "pipeline_moves"  # session.info key: frames waiting for the commit
_HUBS: weakref.WeakKeyDictionary[Engine, Hub] = weakref.WeakKeyDictionary()  # one app's engine -> its hub


def publish_stage_changes(sessions: Sessions, hub: Hub) -> None:
    """Publish the stage changes committed through `sessions` on `hub` (one app's database and hub)."""
    _HUBS[sessions.kw["bind"].sync_engine] = hub
    if not event.contains(Session, "after_flush", _flushed):
        event.listen(Session, "after_flush", _flushed)
        event.listen(Session, "after_commit", _committed)
        event.listen(Session, "after_rollback", _rolled_back)


def stage_frame(lead_id: int, before: str | None, after: str) -> dict[str, Any]:
    """What the board hears of one stage change."""
    return {"type": "stage", "lead": lead_id, "from": before, "to": after}


def _flushed(session: Session, _context: Any) -> None:
    if session.bind not in _HUBS:
        return
    for row in session.new:
        if isinstance(row, Event) and row.type == "stage_changed":
            frame = stage_frame(row.lead_id, row.payload.get("from"), row.payload["to"])
            session.info.setdefault(_MOVES, []).append(frame)


def _committed(session: Session) -> None:
    frames = session.info.pop(_MOVES, [])
    hub = _HUBS.get(session.bind) if frames else None
    for frame in frames if hub is not None else ():
        hub.publish(PIPELINE, frame)


def _rolled_back(session: Session) -> None:
    session.info.pop(_MOVES, None)
