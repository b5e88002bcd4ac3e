"""A visitor's name from what they write: "I'm Max Turner", "my name is Max", "меня зовут Макс", "我叫王伟",
or a bare "Max" answering the greeting's "What's your name?".

Conservative on purpose: a question, a long message or a common word is never taken for a name, and a
name is only ever filled in where the lead has none. A typed name is a claim, like a typed email: it is
recorded as a `name_given` event (the lead's timeline shows it) and an operator can correct it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Conversation, Delivery, Event, Lead

NAME_EVENT = "name_given"
MAX_WORDS = 3  # a bare answer longer than "Anna Maria Lee" is a sentence, not a name
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# "I'm Max" needs a capital (it also opens "I'm interested"); the other ways of saying it do not.
_CAPITALIZED = re.compile(r"(?:^|[\s,.!;:(])(?:i'm|i’m|i am)\s+(.+)", re.IGNORECASE)
_STATED = re.compile(
    r"(?:^|[\s,.!;:(])(?:my name is|my name's|name's|меня зовут|моё имя|мое имя|зовут меня)\s+(.+)", re.IGNORECASE
)
_CJK_STATED = re.compile(rf"(?:我叫|我的名字是|我的名字叫)\s*([{_CJK}]{{1,4}})(?=$|[\s，。,.!！?？、;；])")
_CJK_ALONE = re.compile(rf"^[{_CJK}]{{2,4}}$")
_WORD = re.compile(r"^[^\W\d_](?:[^\W\d_]|['’-](?=[^\W\d_]))*$")
# Words that answer "What's your name?" without being one, or follow "I'm" without starting a name.
_NOT_NAMES = """
    hi hey hello hallo hola yes yeah yep no nope ok okay sure thanks thank you please sorry good great fine
    morning evening afternoon bye help info support sales price prices pricing demo question questions
    interested looking here just not from a an the so very new back ready happy glad curious thinking going
    trying wondering in on at with also still and or but from of to for my me we us it this that what who
    anonymous nobody someone customer client buyer student manager owner
    привет здравствуйте здрасте добрый день вечер утро да нет ок спасибо пожалуйста хорошо помогите цена
    вопрос я мы не
    你好 您好 是 是的 不 不是 谢谢 好的 价格
"""
NOT_NAMES = frozenset(_NOT_NAMES.split())


def stated_name(text: str) -> tuple[str, str | None] | None:
    """(first, last) a message says is the writer's name anywhere in it ("I'm Max Turner"), else None."""
    found = _CJK_STATED.search(text)
    if found:
        return found.group(1), None
    for pattern, capitalized in ((_STATED, False), (_CAPITALIZED, True)):
        for match in pattern.finditer(text):
            name = _leading_name(match.group(1), capitalized)
            if name:
                return name
    return None


def introduction(text: str) -> bool:
    """Whether a message only says who the writer is ("I'm Max Turner", "меня зовут Макс"): nothing for a person."""
    short = len(text.split()) <= MAX_WORDS + 2 and len(text) <= 40
    return short and "?" not in text and "？" not in text and stated_name(text) is not None


def answered_name(text: str, not_names: Iterable[str] = ()) -> tuple[str, str | None] | None:
    """(first, last) when the whole message reads as a name ("Max", "max turner", "王伟"), else None."""
    words = text.strip().rstrip(".!").split()
    if "?" in text or "？" in text or not 0 < len(words) <= MAX_WORDS:
        return None
    if len(words) == 1 and _CJK_ALONE.match(words[0]):
        return (words[0], None) if words[0] not in NOT_NAMES else None
    excluded = {word.casefold() for phrase in not_names for word in phrase.split()} | NOT_NAMES
    if not all(_WORD.match(word) and word.casefold() not in excluded for word in words):
        return None
    first, *rest = [_capital(word) for word in words]
    return first, " ".join(rest) or None


def _leading_name(text: str, capitalized: bool) -> tuple[str, str | None] | None:
    """The one or two name words at the start of `text` ("Max Turner from Acme" -> Max, Turner)."""
    words: list[str] = []
    for raw in text.split()[:2]:
        word = raw.rstrip(",.!;:)")
        if not _WORD.match(word) or word.casefold() in NOT_NAMES or (capitalized and not word[0].isupper()):
            break
        words.append(_capital(word))
        if word != raw:  # punctuation ends the name
            break
    if not words:
        return None
    return words[0], (words[1] if len(words) > 1 else None)


def _capital(word: str) -> str:
    return word[:1].upper() + word[1:]


def take_name(
    session: AsyncSession,
    lead: Lead,
    conversation: Conversation,
    text: str,
    not_names: Iterable[str],
    now: datetime,
) -> Event | None:
    """Fill a nameless lead's name from a message (stated anywhere, or a bare answer right after the bot
    asked for it); the `name_given` event, or None. The question counts once: the next message answers it
    or not."""
    asked = conversation.name_asked
    if asked:  # the conversation is in the session already (intake stored the message in it)
        conversation.name_asked = False
    if lead.first_name:
        return None
    name = stated_name(text) or (answered_name(text, not_names) if asked else None)
    if name is None:
        return None
    lead.first_name, lead.last_name = name[0], lead.last_name or name[1]
    full = " ".join(part for part in name if part)
    payload = {"value": full, "first_name": name[0], "last_name": name[1], "channel": conversation.channel}
    given = Event(lead_id=lead.id, conversation_id=conversation.id, type=NAME_EVENT, payload=payload, at=now)
    session.add(given)
    return given


def note_asked(lead: Lead, conversation: Conversation, replies: list[Delivery]) -> None:
    """Remember that the greeting going out asks a nameless lead for a name (greeting.j2 does when it has none)."""
    greeting = any(delivery.idempotency_key.endswith(":greeting") for delivery in replies)
    if greeting and not lead.first_name:
        conversation.name_asked = True
