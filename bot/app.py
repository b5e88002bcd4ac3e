"""The app factory: builds Kindling's aiohttp application from settings; no I/O until it starts."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.exc import IntegrityError

from bot import api, views
from bot.channels import CHANNELS
from bot.config import Settings
from bot.dispatcher import Dispatcher
from bot.hub import Hub
from bot.intake import Intake
from bot.messages import SystemMessages
from bot.middlewares import errors
from bot.services import SERVICES, Services
from flows.clock import Clock, SystemClock
from storage.db import create_engine, sessionmaker
from storage.models import Setting

log = logging.getLogger(__name__)
TICK_SECONDS = 1.0


def create_app(settings: Settings, clock: Clock | None = None, ticks: bool = True) -> web.Application:
    """A ready-to-run application; `ticks=False` leaves the periodic dispatcher to the caller (tests)."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[errors])
    engine = create_engine(settings.database_url)
    sessions = sessionmaker(engine)
    clock = clock or SystemClock()
    messages = SystemMessages(settings.templates)
    channels: dict = {}
    hub = Hub()
    services = Services(
        settings=settings,
        sessions=sessions,
        clock=clock,
        intake=Intake(sessions, settings, messages, clock),
        dispatcher=Dispatcher(sessions, channels, hub, clock),
        hub=hub,
    )
    app[SERVICES] = services
    for name, adapter in CHANNELS.items():
        reason = adapter.enabled(services)
        if reason:
            log.info("channel %s is disabled: %s", name, reason)
            continue
        channels[name] = adapter(services)
        channels[name].routes(app)
    views.routes(app)
    api.routes(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        messages.check()
        services.secret_key = await _secret_key(settings, sessions)
        for channel in channels.values():
            await channel.start()
        scheduler = _start_ticks(services) if ticks else None
        yield
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        await services.drain()
        for channel in channels.values():
            await channel.stop()
        await engine.dispose()

    app.cleanup_ctx.append(lifecycle)
    return app


def _start_ticks(services: Services) -> AsyncIOScheduler:
    # APScheduler only ticks; what is due is decided by the database, so a restart loses nothing.
    scheduler = AsyncIOScheduler()
    scheduler.add_job(
        services.dispatcher.dispatch_due, "interval", seconds=TICK_SECONDS, max_instances=1, coalesce=True
    )
    scheduler.start()
    return scheduler


async def _secret_key(settings: Settings, sessions) -> bytes:  # type: ignore[no-untyped-def]
    """KINDLING_SECRET_KEY, or one generated once and kept in the database for every instance."""
    if settings.secret_key:
        return settings.secret_key.encode()
    for _ in range(2):
        async with sessions() as session:
            row = await session.get(Setting, "secret_key")
            if row is not None:
                return row.value.encode()
            session.add(Setting(key="secret_key", value=secrets.token_hex(32)))
            try:
                await session.commit()
            except IntegrityError:
                continue  # another instance made it first; read theirs
    raise RuntimeError("could not create the secret key")
