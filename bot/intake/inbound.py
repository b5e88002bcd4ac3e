"""What a person did on a channel, normalized: the inbound every channel adapter hands to intake."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Touch:
    """Where a lead came from on one visit: source/UTM, referrer, landing page."""

    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    term: str | None = None
    content: str | None = None
    referrer: str | None = None
    landing: str | None = None

    def as_dict(self) -> dict[str, str]:
        """Only the fields that are known."""
        return {key: value for key, value in self.__dict__.items() if value}


@dataclass(frozen=True)
class Profile:
    """What a channel tells us about the person."""

    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    phone: str | None = None
    locale: str | None = None
    timezone: str | None = None


@dataclass(frozen=True)
class Inbound:
    """One thing a person did on a channel, normalized; flows and handoff never see raw payloads.

    `kind` is an event type: message, page_view, button, contact_shared, custom, start.
    `identities` are (kind, value) keys naming the person, the first one the channel's own; all of them are
    verified (the channel or the site's backend vouches for them), so they merge leads. A channel puts an
    email or phone there only when it proves the address is the sender's own (Telegram's contact button).
    An email or phone in `text` is a claim, and not even that when `properties` say the text is someone
    else's (see `own_words`).
    """

    channel: str
    external_id: str
    kind: str
    dedup_key: str | None
    identities: tuple[tuple[str, str], ...]
    at: datetime
    text: str | None = None
    name: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    profile: Profile = Profile()
    touch: Touch | None = None
    client_id: str | None = None
    lead_id: int | None = None


OTHERS_WORDS = frozenset({"forwarded", "contact_card"})  # properties of a text that is not the sender's own


def own_words(inbound: Inbound) -> bool:
    """Whether the text is the sender's own: not forwarded, not someone else's contact card."""
    return OTHERS_WORDS.isdisjoint(inbound.properties)


def inbound_to_json(inbound: Inbound) -> dict[str, Any]:
    """An inbound as JSON (for the inbox table); `inbound_from_json` reads it back."""
    data = dict(vars(inbound))  # not dataclasses.asdict: it deep-copies everything, several times slower
    data["at"] = inbound.at.isoformat()
    data["profile"] = dict(vars(inbound.profile))
    data["touch"] = dict(vars(inbound.touch)) if inbound.touch is not None else None
    return data


def inbound_from_json(data: dict[str, Any]) -> Inbound:
    """The inbound `inbound_to_json` wrote."""
    touch = data.get("touch")
    return Inbound(
        **{
            **data,
            "identities": tuple((kind, value) for kind, value in data["identities"]),
            "at": datetime.fromisoformat(data["at"]),
            "profile": Profile(**data.get("profile") or {}),
            "touch": Touch(**touch) if touch else None,
        }
    )
