"""What a WhatsApp `messages` change says: its messages as inbounds, its statuses as delivery reports.

Every message makes an inbound keyed by its `wamid` (`whatsapp:<wamid>`), from the sender's `wa_id`, which
is their phone number: a verified identity ("whatsapp", wa_id) and ("phone", +wa_id), with the profile name
from the change's `contacts`. How each type reads:

- `text`: a message; `interactive` (`button_reply`, `list_reply`) and `button` (a template's quick reply):
  a button press, its title as the value;
- `contacts`: a contact card, a claim of its phone and email as if typed (or, when it is the sender's own
  number, that number); `location`: a message naming the place; media (`image`, `document`, `audio`,
  `video`, `sticker`): a message holding the caption, the media kept in its properties; `order`: a message
  listing the items;
- `reaction`: an event, not a message; anything else (`unsupported`, `unknown`, `system`, types Meta adds
  later): kept as an `unsupported` event and otherwise ignored;
- `referral` (the person came from a click-to-WhatsApp ad): the touch, so a new lead's first touch is the ad.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.channels.meta import Status, dicts, from_timestamp, obj, text_of
from bot.intake.contacts import normalize_email, normalize_phone
from bot.intake.inbound import Inbound, Profile, Touch
from bot.intake.intake import IMPLIED
from flows.channel_consent import WHATSAPP_CONSENT
from flows.optout import normalize

MEDIA = ("image", "document", "audio", "video", "sticker")
STATES = ("sent", "delivered", "read", "failed")
MAX_TEXT = 4096


@dataclass
class Change:
    """What one change holds: inbounds to store, statuses to apply, and what was ignored (and why)."""

    inbounds: list[Inbound] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Buttons:
    """Button labels that give (`consent`) or withdraw (`stop`) WhatsApp marketing consent when pressed."""

    consent: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()

    def consent_of(self, label: str) -> bool | None:
        """True for a consent button, False for a stop one, else None."""
        said = normalize(label)
        if said in {normalize(each) for each in self.consent}:
            return True
        if said in {normalize(each) for each in self.stop}:
            return False
        return None


def read_change(value: dict[str, Any], now: datetime, buttons: Buttons = Buttons()) -> Change:
    """The inbounds and statuses of one `messages` change's `value`."""
    change = Change()
    names = _profile_names(value.get("contacts"))
    for message in dicts(value.get("messages")):
        inbound = read_message(message, names, now, buttons)
        if inbound is None:
            change.ignored.append("a message without a sender or id")
        else:
            change.inbounds.append(inbound)
    for status in dicts(value.get("statuses")):
        read = read_status(status, now)
        if read is not None:
            change.statuses.append(read)
    return change


def read_message(
    message: dict[str, Any], names: dict[str, str], now: datetime, buttons: Buttons = Buttons()
) -> Inbound | None:
    """One message as an inbound; None without a sender or an id."""
    sender, wamid, kind = message.get("from"), message.get("id"), message.get("type")
    if not isinstance(sender, str) or not sender.isdigit() or not isinstance(wamid, str) or not wamid:
        return None
    reader = READERS.get(kind, _unsupported) if isinstance(kind, str) else _unsupported
    fields = reader(message, sender)
    phone = normalize_phone(f"+{sender}")
    identities = (("whatsapp", sender), *((("phone", phone),) if phone else ()))
    name = names.get(sender, "")
    first, _, last = name.partition(" ")
    fields.setdefault("kind", "message")
    if kind != "contacts" or "contact_card" not in fields.get("properties", {}):  # not their own card: not shared
        fields["properties"] = {**fields.get("properties", {}), IMPLIED: "phone"}
    if fields["kind"] == "button" and (consent := buttons.consent_of(fields.get("text") or "")) is not None:
        fields["properties"] = {**fields["properties"], WHATSAPP_CONSENT: consent}
    text = fields.get("text")
    return Inbound(
        channel="whatsapp",
        external_id=sender,
        dedup_key=f"whatsapp:{wamid}",
        identities=identities,
        at=now,
        profile=Profile(first_name=first or None, last_name=last or None, phone=phone),
        touch=_referral(message.get("referral")),
        **{**fields, "text": text[:MAX_TEXT] if isinstance(text, str) else None},
    )


def read_status(status: dict[str, Any], now: datetime) -> Status | None:
    """One status as a delivery report; None for one we do not act on (`sent`: we know that already)."""
    wamid, state = status.get("id"), status.get("status")
    if not isinstance(wamid, str) or state not in STATES or state == "sent":
        return None
    errors = dicts(status.get("errors"))
    error = errors[0] if errors else {}
    detail = obj(error.get("error_data")).get("details") if isinstance(error.get("error_data"), dict) else None
    text = " ".join(str(part) for part in (error.get("code"), error.get("title"), detail) if part) or None
    code = error.get("code") if type(error.get("code")) is int else None
    return Status(wamid, state, from_timestamp(status.get("timestamp"), now), text, code)


def _text(message: dict[str, Any], sender: str) -> dict[str, Any]:
    return {"text": text_of(obj(message.get("text")).get("body"))}


def _interactive(message: dict[str, Any], sender: str) -> dict[str, Any]:
    interactive = obj(message.get("interactive"))
    reply = interactive.get(interactive.get("type")) if isinstance(interactive.get("type"), str) else None
    if not isinstance(reply, dict):
        return _unsupported(message, sender)
    title = text_of(reply.get("title")) or text_of(reply.get("id"))
    return {"kind": "button", "text": title, "properties": {"value": title, "id": text_of(reply.get("id"))}}


def _button(message: dict[str, Any], sender: str) -> dict[str, Any]:
    button = obj(message.get("button"))
    title = text_of(button.get("text")) or text_of(button.get("payload"))
    return {"kind": "button", "text": title, "properties": {"value": title, "payload": text_of(button.get("payload"))}}


def _contacts(message: dict[str, Any], sender: str) -> dict[str, Any]:
    """A card of the sender's own number says that number; anyone else's is a claim of what it holds."""
    cards = dicts(message.get("contacts"))
    phones = [phone for card in cards for phone in dicts(card.get("phones"))]
    if any(phone.get("wa_id") == sender for phone in phones):
        return {"text": f"+{sender}", "properties": {"contact_card": "own"}}
    numbers = [normalize_phone(text_of(phone.get("phone"))) for phone in phones]
    emails = [normalize_email(text_of(email.get("email"))) for card in cards for email in dicts(card.get("emails"))]
    names = [text_of(obj(card.get("name")).get("formatted_name")) for card in cards]
    said = [*filter(None, names), *filter(None, numbers), *filter(None, emails)]
    kept = [{"name": name, "phones": [n for n in numbers if n], "emails": [e for e in emails if e]} for name in names]
    return {"text": " ".join(said) or "(a contact card)", "properties": {"contacts": kept}}


def _location(message: dict[str, Any], sender: str) -> dict[str, Any]:
    place = obj(message.get("location"))
    where = ", ".join(text_of(place.get(key)) for key in ("name", "address") if text_of(place.get(key)))
    spot = {key: place.get(key) for key in ("latitude", "longitude", "name", "address", "url") if place.get(key)}
    return {"text": f"(location: {where or 'a pin on the map'})", "properties": {"location": spot}}


def _media(message: dict[str, Any], sender: str) -> dict[str, Any]:
    kind = message["type"]
    media = obj(message.get(kind))
    caption = text_of(media.get("caption"))
    kept = {key: media.get(key) for key in ("id", "mime_type", "filename", "caption") if media.get(key)}
    filename = text_of(media.get("filename"))
    note = f"({'an' if kind[0] in 'aeiou' else 'a'} {kind}{': ' + filename if filename else ''})"
    return {"text": f"{note} {caption}".strip(), "properties": {"media": {"type": kind, **kept}}}


def _reaction(message: dict[str, Any], sender: str) -> dict[str, Any]:
    reaction = obj(message.get("reaction"))
    kept = {"message_id": text_of(reaction.get("message_id")), "emoji": text_of(reaction.get("emoji"))}
    return {"kind": "reaction", "text": kept["emoji"] or None, "properties": {"reaction": kept}}


def _order(message: dict[str, Any], sender: str) -> dict[str, Any]:
    order = obj(message.get("order"))
    items = [
        {key: item.get(key) for key in ("product_retailer_id", "quantity", "item_price", "currency")}
        for item in dicts(order.get("product_items"))
    ]
    listed = ", ".join(f"{item.get('quantity') or 1} x {item.get('product_retailer_id')}" for item in items)
    text = f"(an order: {listed})" + (f" {text_of(order.get('text'))}" if order.get("text") else "")
    return {"text": text, "properties": {"order": {"catalog_id": text_of(order.get("catalog_id")), "items": items}}}


def _unsupported(message: dict[str, Any], sender: str) -> dict[str, Any]:
    errors = [{key: error.get(key) for key in ("code", "title")} for error in dicts(message.get("errors"))]
    return {"kind": "unsupported", "text": None, "properties": {"type": text_of(message.get("type")), "errors": errors}}


READERS = {
    "text": _text,
    "interactive": _interactive,
    "button": _button,
    "contacts": _contacts,
    "location": _location,
    "reaction": _reaction,
    "order": _order,
    **dict.fromkeys(MEDIA, _media),
}


def _referral(referral: Any) -> Touch | None:
    """A click-to-WhatsApp ad as a touch: source `whatsapp_ad` (or the ad's type), campaign the headline."""
    if not isinstance(referral, dict):
        return None
    source_type = text_of(referral.get("source_type")) or "ad"
    return Touch(
        source=f"whatsapp_{source_type}",
        medium="paid_social" if source_type == "ad" else "social",
        campaign=text_of(referral.get("headline"))[:200] or None,
        content=text_of(referral.get("source_id")) or None,
        term=text_of(referral.get("ctwa_clid"))[:200] or None,
        landing=text_of(referral.get("source_url"))[:500] or None,
    )


def _profile_names(contacts: Any) -> dict[str, str]:
    return {
        contact["wa_id"]: text_of(obj(contact.get("profile")).get("name"))
        for contact in dicts(contacts)
        if isinstance(contact.get("wa_id"), str)
    }
