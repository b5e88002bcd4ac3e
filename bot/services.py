"""What channels and views share: settings, database sessions, clock, intake, dispatcher, hub, handoffs, webhooks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from bot.config import Settings
from bot.delivery.dispatcher import Dispatcher
from bot.delivery.hub import INBOX, Hub, message_frame
from bot.delivery.outgoing import WebhookSender
from bot.handoff.handoffs import Handoffs
from bot.handoff.notify import Notifier
from bot.intake.inbox import Inbox
from bot.intake.intake import Intake, Received
from bot.metrics import Metrics
from bot.scoring.refit import Refit
from bot.scoring.rescore import Rescorer
from flows.clock import Clock
from flows.engine import Engine
from flows.library import FlowLibrary
from flows.publishing import Sync
from flows.runner import Runner
from flows.sweeps import Sweeps
from storage.db import Checkpoints, Sessions

log = logging.getLogger(__name__)


@dataclass
class Services:
    """The running app's parts, built once by `create_app` and handed to channels."""

    settings: Settings
    sessions: Sessions
    clock: Clock
    intake: Intake
    dispatcher: Dispatcher
    hub: Hub
    library: FlowLibrary
    engine: Engine
    runner: Runner
    sweeps: Sweeps
    handoffs: Handoffs
    notifier: Notifier
    webhooks: WebhookSender
    secret_key: bytes = b""
    metrics: Metrics = field(default_factory=Metrics)
    tasks: set[asyncio.Task] = field(default_factory=set)
    receiver: asyncio.Server | None = None  # the SMTP receiver while it listens (KINDLING_EMAIL_INBOUND)
    running: bool = True  # False once the app shuts down: ticking jobs stop at their next batch
    inbox: Inbox = field(init=False)  # inbounds stored before their answer, taken in right after
    checkpoints: Checkpoints = field(init=False)  # SQLite: the write-ahead log moved into the file, beside writers
    flow_sync: Sync = field(init=False)  # flow files and the revisions published in the console, kept in step
    refit: Refit = field(init=False)  # learned scoring fitted again on a schedule (scoring.refit), by one instance
    rescorer: Rescorer = field(init=False)  # a lead's learned likelihood, recomputed right after it acts

    def __post_init__(self) -> None:
        self.checkpoints = Checkpoints(self.sessions)
        self.flow_sync = Sync(self.sessions, self.library, self.clock.now)
        self.refit = Refit(self.sessions, self.clock, self.settings.refit, self.settings.database_url)
        self.rescorer = Rescorer(self.sessions, self.clock, self.settings.database_url, self.spawn)
        self.inbox = Inbox(
            self.settings.database_url, self.sessions, self.clock, self.intake, self.after_commit, self.spawn
        )

    def after_commit(self, received: Received) -> None:
        """Show the message live, send the replies and announce a handoff, without holding up the HTTP answer."""
        if not received.duplicate:
            self.rescorer.acted(received.lead_id)
        if received.message is not None:
            self.hub.publish(received.message.conversation_id, message_frame(received.message))
            if received.message.direction == "in":
                self.metrics.inbound.inc()
            if received.handed:
                self.hub.publish(INBOX, {"type": "activity", "conversation_id": received.message.conversation_id})
        if self.dispatcher.queue(received.delivery_ids):
            self.spawn(self.dispatcher.send_queued())
        if received.handoff_id is not None:
            self.spawn(self.notifier.announce(received.handoff_id))
        for handoff_id in received.won_handoff_ids:
            self.spawn(self.notifier.changed("closed", handoff_id))

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run work in the background; shutdown waits for it (see `drain`)."""
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background work failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for background work (tests call this instead of sleeping)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)


SERVICES = web.AppKey("services", Services)
