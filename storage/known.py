"""What a transaction has read ahead: lookups answered from memory instead of one query each.

Intake stores a batch of inbounds in one transaction (group commit). Before the first one, it reads what
all of them will look up (their dedup keys, identities, leads, conversations, enrollments, open handoffs,
nurture messages to credit, suppressed identities) with a few set-based queries and keeps the answers
here, in `session.info`. The lookups in storage/ and flows/ answer from here when it covers what they ask,
and the writes in the same transaction keep it current; anything not covered is read from the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Conversation, Enrollment, Event, Handoff, Lead

KEY = "kindling.known"


@dataclass
class Known:
    """Answers read ahead for one transaction; a key missing from a dict means "not read ahead, ask"."""

    events: dict[str, Event | None] = field(default_factory=dict)  # by dedup key; None: not stored
    identities: dict[tuple[str, str], int | None] = field(default_factory=dict)  # (kind, value): lead id
    leads: dict[int, Lead] = field(default_factory=dict)  # held here: the session keeps unchanged rows weakly
    conversations: dict[tuple[str, str], Conversation | None] = field(default_factory=dict)  # (channel, id)
    enrollments: dict[int, list[Enrollment]] = field(default_factory=dict)  # lead id: all, oldest first
    handoffs: dict[int, Handoff | None] = field(default_factory=dict)  # lead id: its open handoff
    creditable: dict[int, bool] = field(default_factory=dict)  # lead id: a nurture message sent lately
    suppressed: dict[str, str | None] = field(default_factory=dict)  # suppression hash: kind, None: not erased

    def forget(self, *lead_ids: int) -> None:
        """Leads merged in this transaction: what was read about them is asked again."""
        for lead_id in lead_ids:
            self.enrollments.pop(lead_id, None)
            self.handoffs.pop(lead_id, None)
            self.creditable.pop(lead_id, None)


def known(session: AsyncSession) -> Known | None:
    """What this session's transaction read ahead, if anything."""
    return session.info.get(KEY)


def keep(session: AsyncSession, answers: Known | None) -> None:
    """Answer this session's lookups from `answers` (None: from the database) until the session closes."""
    if answers is None:
        session.info.pop(KEY, None)
    else:
        session.info[KEY] = answers
