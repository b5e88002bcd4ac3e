"""Delivery: what Kindling sends out, and the contract channels send through.

Owns the channel contract for sending (`channel.py`), the outbox dispatcher (`dispatcher.py`), live updates
to whoever watches on any instance (`hub.py`) and signed webhooks to CRMs (`outgoing.py`). May import
bot.config, bot.web, flows and storage; it never imports a channel adapter (they are handed in).
"""
