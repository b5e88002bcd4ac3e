"""What a Messenger or Instagram notification says: messages and button presses, referrals, delivery reports.

Each entry holds `messaging` events (or, in the newer form, `changes` with the event as `value`), each from one
person: their Page-scoped id (PSID) on Messenger, Instagram-scoped id (IGSID) on Instagram, a verified
identity ("messenger", psid) or ("instagram", igsid). Meta gives no name; none is fetched. How each reads:

- `message`: its text; a tapped quick reply is a button press (its payload, which Kindling sets to the
  button's label, is the value), except the phone and email quick replies, whose payload is the address:
  a message, so the address is a claim as if typed; `attachments` (image, video, audio, file, location,
  fallback (a shared link), Instagram's story_mention, share, reels...) a note in the text, kept in the
  properties; a reply to an Instagram story says so. `is_echo` (the Page's own message, sent by the bot or
  by a person from the Page's inbox) is not the lead speaking: ignored. Deleted and unsupported ones too.
- `postback` (a postback button, Get Started, the persistent menu): a button press with its payload; with a
  `referral` (a new thread opened from an `m.me` link or an ad) a `start`, like Telegram's `/start`.
- `referral` (`messaging_referrals`: an `m.me/<page>?ref=...` link or an ad opened an existing thread): a
  `start`. A `ref` in Kindling's deep-link form (`v-<visitor link>_s-<source>_m-<medium>_c-<campaign>`)
  carries the source and, signed, the web visitor, who stays one lead; an ad (`source` ADS) is the touch
  `messenger_ad` / `instagram_ad` with its title as campaign and its id as content.
- `delivery` (mids, watermark) and `read` (watermark; Instagram's `messaging_seen`: one mid): reports on the
  Page's messages, applied in bot/channels/meta.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.channels.continuation import parse_payload
from bot.channels.meta import Status, Watermark, dicts, from_timestamp, obj, text_of
from bot.intake.contacts import normalize_email, normalize_phone
from bot.intake.inbound import Inbound, Touch

MAX_TEXT = 4096
FIELDS = (
    "messages",
    "messaging_postbacks",
    "messaging_referrals",
    "message_deliveries",
    "message_reads",
    "messaging_seen",
)
Visitor = Callable[[str], "str | None"]  # the visitor id in a signed visitor link, or None


@dataclass
class Notification:
    """What a notification holds: inbounds to store, reports to apply, and what was ignored (and why)."""

    inbounds: list[Inbound] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    watermarks: list[Watermark] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


def read_notification(channel: str, entries: list[Any], now: datetime, visitor: Visitor) -> Notification:
    """Every event of every entry (`messaging`, or `changes` of the messaging fields)."""
    read = Notification()
    for entry in dicts(entries):
        events = dicts(entry.get("messaging"))
        changes = dicts(entry.get("changes"))
        events += [obj(change.get("value")) for change in changes if change.get("field") in FIELDS]
        for event in events:
            read_event(channel, event, now, visitor, read)
    return read


def read_event(channel: str, event: dict[str, Any], now: datetime, visitor: Visitor, into: Notification) -> None:
    """One event into `into`: an inbound, a report, or a reason it was ignored."""
    sender = text_of(obj(event.get("sender")).get("id"))
    if not sender:
        into.ignored.append("an event without a sender id")
        return
    if "delivery" in event or "read" in event:
        _reports(sender, event, now, into)
        return
    fields = _fields(channel, sender, event, visitor)
    if isinstance(fields, str):
        into.ignored.append(fields)
        return
    identities = ((channel, sender), *fields.pop("extra", ()))
    text = fields.get("text")
    into.inbounds.append(
        Inbound(
            channel=channel,
            external_id=sender,
            identities=identities,
            at=now,
            **{**fields, "text": text[:MAX_TEXT] if isinstance(text, str) else None},
        )
    )


def _fields(channel: str, sender: str, event: dict[str, Any], visitor: Visitor) -> dict[str, Any] | str:
    """The inbound's fields (kind, dedup_key, text, properties, touch, extra identities), or why it is ignored."""
    if isinstance(event.get("message"), dict):
        return _message(channel, sender, event, visitor)
    if isinstance(event.get("postback"), dict):
        return _postback(channel, sender, event, visitor)
    if isinstance(event.get("referral"), dict):
        touch, extra = _referral(channel, event["referral"], visitor)
        key = f"{channel}:referral:{sender}:{event.get('timestamp')}"
        return {"kind": "start", "dedup_key": key, "touch": touch, "extra": extra, "properties": _ref(event)}
    kinds = sorted(set(event) - {"sender", "recipient", "timestamp"})
    return f"an event Kindling does not read ({', '.join(kinds) or 'empty'})"


def _message(channel: str, sender: str, event: dict[str, Any], visitor: Visitor) -> dict[str, Any] | str:
    message = event["message"]
    mid = text_of(message.get("mid"))
    if message.get("is_echo"):
        return "an echo of the Page's own message"
    if not mid:
        return "a message without an id"
    if message.get("is_deleted"):
        return "a message the person deleted"
    touch, extra = _referral(channel, message.get("referral") or event.get("referral"), visitor)
    base = {"dedup_key": f"{channel}:{mid}", "touch": touch, "extra": extra}
    text = text_of(message.get("text"))
    payload = text_of(obj(message.get("quick_reply")).get("payload"))
    if payload and not _an_address(payload):  # a quick reply Kindling sent: its payload is the button's label
        return {**base, "kind": "button", "text": text or payload, "properties": {"value": payload, "mid": mid}}
    notes, kept = _attachments(message.get("attachments"))
    story = obj(obj(message.get("reply_to")).get("story"))
    if story:
        notes.insert(0, "(a reply to your story)")
        kept.append({"type": "story_reply", **{k: story.get(k) for k in ("id", "url") if story.get(k)}})
    said = " ".join([*notes, text]).strip()
    if message.get("is_unsupported") or not said:
        return {**base, "kind": "unsupported", "text": None, "properties": {"mid": mid}}
    properties: dict[str, Any] = {"mid": mid, **({"attachments": kept} if kept else {})}
    return {**base, "kind": "message", "text": said, "properties": properties}


def _postback(channel: str, sender: str, event: dict[str, Any], visitor: Visitor) -> dict[str, Any]:
    postback = event["postback"]
    title, payload = text_of(postback.get("title")), text_of(postback.get("payload"))
    mid = text_of(postback.get("mid"))
    key = f"{channel}:{mid}" if mid else f"{channel}:postback:{sender}:{event.get('timestamp')}"
    properties = {"value": payload or title, "title": title, **({"mid": mid} if mid else {})}
    if isinstance(postback.get("referral"), dict):  # a new thread opened from a link or an ad: a start
        touch, extra = _referral(channel, postback["referral"], visitor)
        properties |= _ref(postback)
        return {"kind": "start", "dedup_key": key, "touch": touch, "extra": extra, "properties": properties}
    return {"kind": "button", "dedup_key": key, "text": title or payload, "properties": properties}


def _reports(sender: str, event: dict[str, Any], now: datetime, into: Notification) -> None:
    """`delivery` (mids and a watermark) and `read` (a watermark; Instagram: one mid)."""
    for state, report in (("delivered", obj(event.get("delivery"))), ("read", obj(event.get("read")))):
        if not report:
            continue
        at = from_timestamp(event.get("timestamp") or report.get("watermark"), now)
        mids = [mid for mid in report.get("mids") or [] if isinstance(mid, str)]
        mids += [report["mid"]] if isinstance(report.get("mid"), str) else []
        into.statuses += [Status(mid, state, at) for mid in mids]
        if report.get("watermark") is not None:
            into.watermarks.append(Watermark(sender, state, from_timestamp(report["watermark"], now)))


ATTACHMENT_NOTES = {
    "image": "an image",
    "video": "a video",
    "audio": "an audio message",
    "file": "a file",
    "sticker": "a sticker",
    "story_mention": "a mention of you in their story",
    "share": "a shared post",
    "ig_reel": "a reel",
    "reel": "a reel",
    "ig_post": "a post",
    "post": "a post",
}


def _attachments(value: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """Each attachment as a note for the transcript, and what is kept of it."""
    notes, kept = [], []
    for attachment in dicts(value):
        kind, payload = text_of(attachment.get("type")) or "attachment", obj(attachment.get("payload"))
        item = {"type": kind, **{k: payload[k] for k in ("url", "title", "sticker_id") if payload.get(k)}}
        if kind == "location":
            spot = obj(payload.get("coordinates"))
            item |= {k: spot[k] for k in ("lat", "long") if k in spot}
            where = text_of(attachment.get("title")) or f"{spot.get('lat')}, {spot.get('long')}"
            notes.append(f"(a location: {where})")
        elif kind == "fallback":  # a shared link Messenger has no type for
            link = text_of(payload.get("url")) or text_of(attachment.get("url"))
            item |= {k: v for k, v in (("url", link), ("title", text_of(attachment.get("title")))) if v}
            notes.append(f"(a link: {text_of(attachment.get('title')) or link or 'unsupported'})")
        else:
            notes.append(f"({ATTACHMENT_NOTES.get(kind, kind)})")
        kept.append(item)
    return notes, kept


def _referral(channel: str, referral: Any, visitor: Visitor) -> tuple[Touch | None, tuple]:
    """The touch (and the web visitor, when the ref carries our signed link) of an `m.me` link or an ad."""
    if not isinstance(referral, dict):
        return None, ()
    ref = text_of(referral.get("ref"))
    link, utm = parse_payload(ref) if ref else (None, None)
    visitor_id = visitor(link) if link else None
    extra = (("visitor", visitor_id),) if visitor_id else ()
    if text_of(referral.get("source")).upper() == "ADS":
        ad = obj(referral.get("ads_context_data"))
        found = {
            "source": f"{channel}_ad",
            "medium": "paid_social",
            "campaign": text_of(ad.get("ad_title"))[:200] or None,
            "content": text_of(referral.get("ad_id")) or None,
        }
    elif utm is None and ref:  # a ref of someone else's making: kept as the campaign
        found = {"source": f"{channel}_link", "medium": "referral", "campaign": ref[:200]}
    else:
        found = {"source": f"{channel}_link", "medium": "referral"}
    if utm is not None:  # the deep link's own source, medium and campaign win
        found |= utm.as_dict()
    return Touch(**found), extra


def _ref(holder: dict[str, Any]) -> dict[str, Any]:
    """A referral's details for the event: ref, source, type, ad id."""
    referral = obj(holder.get("referral"))
    kept = {key: referral[key] for key in ("ref", "source", "type", "ad_id") if isinstance(referral.get(key), str)}
    return {"referral": kept}


def _an_address(payload: str) -> bool:
    """Whether a quick reply's payload is the person's phone or email (Meta's user_phone_number / user_email)."""
    return normalize_email(payload) is not None or (payload.startswith("+") and normalize_phone(payload) is not None)
