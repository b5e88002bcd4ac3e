"""The operator console at /console: accounts, login, roles, lead and flow pages (mounted by `mount.py`).

May import bot.services, bot.config, bot.web, bot.delivery, bot.handoff, bot.reports, flows and storage;
only bot.app (mounting it) and bot.cli (operator accounts) import it.
"""
