"""What Messenger and Instagram allow a flow step's buttons: quick replies, at most 13, of 20 characters.

Meta's docs (developers.facebook.com, Messenger Platform > Send messages > Quick replies; Instagram
Messaging > Quick replies): "A maximum of 13 quick replies are supported"; a title has a "20 character
limit" (Instagram: "up to 20 characters before being truncated"; quick replies there "only support plain
text"). Postback buttons (a button template) allow only 3, which is why Kindling sends step buttons as quick
replies on both. Buttons that do not fit go as a list under the text, which lint warns about.
"""

from __future__ import annotations

MAX_QUICK_REPLIES = 13
MAX_TITLE_CHARS = 20
CHANNELS = ("messenger", "instagram")


def quick_reply_problem(buttons: tuple[str, ...] | list[str]) -> str | None:
    """Why these buttons cannot be Messenger/Instagram quick replies (they then go as text), or None."""
    if len(buttons) > MAX_QUICK_REPLIES:
        return (
            f"Messenger and Instagram show at most {MAX_QUICK_REPLIES} quick replies (this step has "
            f"{len(buttons)}): they would go as a list in the text"
        )
    long = [label for label in buttons if len(label) > MAX_TITLE_CHARS]
    if long:
        return (
            f"Messenger and Instagram quick replies take {MAX_TITLE_CHARS} characters; {long[0]!r} is longer: "
            "they would go as a list in the text"
        )
    return None


def may_go_there(channels: tuple[str, ...]) -> bool:
    """Whether a step with these channels (none: the engine's choice) may go to Messenger or Instagram."""
    return not channels or any(channel in CHANNELS for channel in channels)
