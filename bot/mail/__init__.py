"""Email: what is written into mail (signed reply addresses and unsubscribe links) and read back out of it,
and the digest of widget messages a visitor missed (`digest`, ticked by bot.app).

May import `bot.config`, `bot.web`, flows and storage; the email channel (`bot/channels/email.py`) and the
routes that take replies and unsubscribes import it. The inbound side (receive, replies, providers, bounces)
and the unsubscribe routes hand what they read to the inbox or the database as a channel does, so they also
import `bot.intake` and `bot.services` (the digest imports `bot.services` too).
"""
