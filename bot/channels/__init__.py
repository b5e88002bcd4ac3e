"""Channel adapters: webchat, telegram, webhook (the registry is bot.channels.registry)."""
