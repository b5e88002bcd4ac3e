"""Channel adapters: webchat, telegram, webhook, email (registry: bot.channels.registry); continue-in-a-messenger links.

The contract they implement lives below them (bot.intake.inbound for what comes in, bot.delivery.channel for
sending), so the parts that use a channel never import one. May import bot.services, bot.config, bot.web,
bot.intake, bot.delivery, bot.handoff, bot.mail and storage; only bot.app imports it.
"""
