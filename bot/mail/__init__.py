"""Email: what is written into mail (signed reply addresses and unsubscribe links) and read back out of it.

May import `bot.config`, `bot.web`, flows and storage; the email channel (`bot/channels/email.py`) and the
routes that take replies and unsubscribes import it. The inbound side (receive, replies, providers, bounces)
hands what it reads to the inbox as a channel does, so it also imports `bot.intake` and `bot.services`.
"""
