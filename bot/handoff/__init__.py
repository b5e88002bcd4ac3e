"""Handoff to humans: the operators' queue, claims and replies (`handoffs.py`), and announcing handoffs (`notify.py`).

Flows decide when a lead is warm (flows.handoff); this package runs what follows. May import bot.delivery
(to send and publish), bot.intake (the bot's messages to the lead), flows and storage; never a channel,
the API or the console, which call it.
"""
