"""Email: what is written into mail (signed reply addresses and unsubscribe links) and read back out of it.

May import `bot.config`, `bot.web`, `bot.services` (for the unsubscribe routes), flows and storage; the email
channel (`bot/channels/email.py`) and the routes that take replies and unsubscribes import it.
"""
