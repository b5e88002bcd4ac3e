"""Telegram (placeholder until the adapter lands)."""

from __future__ import annotations


class TelegramChannel:
    name = "telegram"

    def __init__(self, services) -> None:  # type: ignore[no-untyped-def]
        self.services = services

    @staticmethod
    def enabled(services) -> str | None:  # type: ignore[no-untyped-def]
        return None if services.settings.telegram_token else "KINDLING_TELEGRAM_TOKEN is not set"
