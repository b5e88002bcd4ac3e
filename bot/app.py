"""The app factory: builds Kindling's aiohttp application from settings; no I/O until it starts."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from sqlalchemy.exc import IntegrityError

from bot import api, views
from bot.api.auth import guard as api_guard
from bot.channels.registry import CHANNELS
from bot.config import Settings
from bot.console.mount import mount_console
from bot.delivery.dispatcher import Dispatcher
from bot.delivery.hub import Hub, PostgresHub
from bot.delivery.outgoing import WebhookSender
from bot.handoff.handoffs import Handoffs
from bot.handoff.notify import Notifier
from bot.intake.intake import Intake
from bot.intake.messages import SystemMessages
from bot.mail import providers, unsubscribe
from bot.mail.digest import DIGEST_SECONDS, send_digests
from bot.mail.receive import start_receiver
from bot.scoring.refit import CHECK_SECONDS as REFIT_CHECK_SECONDS
from bot.services import SERVICES, Services
from bot.web.middlewares import errors
from flows.answers import load_answers
from flows.clock import Clock, SystemClock
from flows.engine import Engine
from flows.library import FlowLibrary
from flows.outgoing import Subscriptions
from flows.reach import EmailPolicy
from flows.runner import Runner
from flows.scheduler import start_ticks
from flows.sweeps import Sweeps
from storage.db import Checkpoints, create_engine, is_sqlite, sessionmaker
from storage.models import Setting

log = logging.getLogger(__name__)
TICK_SECONDS = 1.0
FLOW_RELOAD_SECONDS = 2.0
SWEEP_SECONDS = 30.0
HANDOFF_SECONDS = 5.0
WEBHOOK_SECONDS = 2.0
INBOX_SECONDS = 5.0
STEP_BATCH = 200
SEND_BATCH = 300  # 10 s of Telegram's overall budget, one message per lead (see Dispatcher.dispatch_due)


def create_app(settings: Settings, clock: Clock | None = None, ticks: bool = True) -> web.Application:
    """A ready-to-run application; `ticks=False` leaves the periodic dispatcher to the caller (tests)."""
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[errors, api_guard])
    database = create_engine(settings.database_url)
    sessions = sessionmaker(database)
    clock = clock or SystemClock()
    messages = SystemMessages(settings.templates, settings.default_locale)
    channels: dict = {}
    hub = PostgresHub(settings.database_url, sessions) if not is_sqlite(settings.database_url) else Hub()
    library = FlowLibrary(settings.templates, settings.stages.order)
    webhooks = Subscriptions({e.name: e.events for e in settings.webhook_endpoints.values()}, settings.public_url)
    email = EmailPolicy(settings.email.disabled() is None, settings.email.require_consent)
    engine = Engine(
        library,
        settings.stages,
        channels,
        scoring=settings.scoring,
        handoff=settings.handoff,
        webhooks=webhooks,
        email=email,
        locales=messages.locales,
    )
    dispatcher = Dispatcher(sessions, channels, hub, clock, settings.policy, settings.outbox_lease, email)
    notifier = Notifier(sessions, clock, hub, dispatcher, messages, settings.handoff)
    services = Services(
        settings=settings,
        sessions=sessions,
        clock=clock,
        intake=Intake(sessions, settings, messages, clock, engine),
        dispatcher=dispatcher,
        hub=hub,
        library=library,
        engine=engine,
        runner=Runner(sessions, engine, settings.scoring, clock),
        sweeps=Sweeps(sessions, engine, clock, settings.policy.default_timezone),
        handoffs=Handoffs(sessions, clock, engine, hub, dispatcher, notifier),
        notifier=notifier,
        webhooks=WebhookSender(sessions, clock, settings.webhook_endpoints),
    )
    services.webhooks.spawn = services.spawn  # the sends a commit kicks off are background work too
    app[SERVICES] = services
    for name, adapter in CHANNELS.items():
        reason = adapter.enabled(services)
        if reason:
            log.info("channel %s is disabled: %s", name, reason)
            continue
        channels[name] = adapter(services)
        channels[name].routes(app)
    providers.routes(app, services)  # email replies and bounces from hosted providers' webhooks
    views.routes(app)
    unsubscribe.routes(app)  # even with email off: links in email already sent keep working
    api.routes(app)
    mount_console(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        for warning in messages.check():  # a missing translation: its English text is sent
            log.warning("system message %s", warning)
        # Quick answers and small talk: a broken file stops start-up, as a broken system message does.
        services.intake.answers = load_answers(settings.templates, settings.answers, settings.handoff.buttons)
        library.load()  # a flow that fails lint is logged and left out; the rest run
        services.secret_key = services.intake.secret_key = await shared_secret_key(settings, sessions)
        await hub.start()
        for channel in channels.values():
            await channel.start()
        await services.webhooks.start()
        await services.inbox.start()  # takes in what a previous run left
        # Replies and bounces by SMTP (KINDLING_EMAIL_INBOUND).
        services.receiver = receiver = await start_receiver(services)
        if notifier.room is None:
            log.info("telegram operators' group is disabled: %s", _no_room_reason(settings))
        scheduler = start_ticks(_jobs(services)) if ticks else None
        yield
        services.running = False  # jobs still going stop at their next batch
        if receiver is not None:
            receiver.close()
            await receiver.wait_closed()
        if scheduler is not None:
            scheduler.shutdown(wait=False)
        await services.drain()
        await hub.stop()
        for channel in channels.values():
            await channel.stop()
        await services.webhooks.stop()
        await services.inbox.stop()
        await services.checkpoints.close()
        await database.dispose()

    app.cleanup_ctx.append(lifecycle)
    return app


def _jobs(services: Services) -> list:
    """What the scheduler ticks: edited flows, due steps, the outbox and the leases of its sends in flight, stuck
    leads, handoffs, webhooks, the inbox, missed widget messages by email, (SQLite) checkpoints, and learned
    scoring's scheduled fits."""

    async def run_steps() -> None:
        await _while_full(lambda: services.runner.run_due(STEP_BATCH), STEP_BATCH)

    async def dispatch() -> None:
        # A lead's next message is claimed only after its last one went out: waiting for the next tick
        # between batches would leave its chat idle for up to a tick, every batch. So claim again at once
        # (while the last sends of the batch before are in flight), for as long as anything is due and the
        # app is not shutting down.
        await services.dispatcher.dispatch_backlog(SEND_BATCH, lambda: services.running)

    async def email_missed() -> None:
        await send_digests(services, services.clock.now())

    return [
        (services.flow_sync.tick, FLOW_RELOAD_SECONDS),  # and versions published on other instances
        (run_steps, TICK_SECONDS),
        (dispatch, TICK_SECONDS),
        (services.dispatcher.renew_leases, services.settings.outbox_lease.total_seconds() / 3),
        (services.sweeps.run, SWEEP_SECONDS),
        (services.notifier.tick, HANDOFF_SECONDS),
        (services.webhooks.send_due, WEBHOOK_SECONDS),
        (services.inbox.sweep, INBOX_SECONDS),
        (email_missed, DIGEST_SECONDS),
        (services.checkpoints.run, Checkpoints.SECONDS),
        (services.refit.run, REFIT_CHECK_SECONDS),
    ]


async def _while_full(batch: Callable[[], Awaitable[int]], size: int) -> None:
    """Run batches while they come back full, for up to a tick, so a backlog is not capped at one per tick."""
    deadline = asyncio.get_running_loop().time() + TICK_SECONDS
    while await batch() == size:
        if asyncio.get_running_loop().time() > deadline:
            break


def _no_room_reason(settings: Settings) -> str:
    if settings.operators_chat is None:
        return "KINDLING_OPERATORS_CHAT is not set"
    return "the telegram channel is disabled (KINDLING_TELEGRAM_TOKEN is not set)"


async def shared_secret_key(settings: Settings, sessions) -> bytes:  # type: ignore[no-untyped-def]
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
