"""Webhook (placeholder)."""

from __future__ import annotations


class WebhookChannel:
    name = "webhook"

    def __init__(self, services) -> None:  # type: ignore[no-untyped-def]
        self.services = services

    @staticmethod
    def enabled(services) -> str | None:  # type: ignore[no-untyped-def]
        return None if services.settings.webhook_sources else "no source has its secret set"
