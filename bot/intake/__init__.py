"""Intake: what people send becomes leads, conversations, events and the bot's replies.

Owns the normalized inbound every channel hands over (`inbound.py`), the inbox that stores it before its
answer (`inbox.py`), group-committed intake (`intake.py`) with its read-ahead (`readahead.py`), contacts
found in text (`contacts.py`), warm signals (`warm.py`) and the bot's own messages and replies
(`messages.py`, `replies.py`). May import bot.config, flows and storage; never a channel, the hub or handoff.
"""
