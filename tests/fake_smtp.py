"""A real SMTP relay for tests: aiosmtpd on a free localhost port, on the test's own event loop.

It records every message it accepts (`relay.messages`, parsed with the standard library's `email`), counts
the connections made to it, and answers what a test asks for:

    relay.answer("RCPT", "550 5.1.1 user unknown")     # the next RCPT gets that reply (times=N for more)
    relay.answer("MAIL", "421 4.7.0 try again later")  # 421 closes the connection after answering, like a relay
    relay.answer("DATA", DROP)                          # the whole message arrives, then the connection drops
    relay.close_connections()                           # close idle connections, as a relay's timeout does
    await relay.stop(); await relay.start()             # the relay down, then back on the same port

Use the `fake_smtp` fixture; `relay.url` is what KINDLING_SMTP_URL would be.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

DROP = "drop"  # an answer that closes the connection instead of replying


@dataclass(frozen=True)
class Received:
    """One message the relay accepted: the envelope, the parsed message, when it arrived (loop time), and its
    bytes as they came (CRLF line ends)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    at: float
    data: bytes = b""


class _Server(SMTP):
    """aiosmtpd's SMTP server, telling the relay about each connection."""

    def __init__(self, relay: FakeRelay) -> None:
        super().__init__(relay, hostname="relay.test", enable_SMTPUTF8=True, loop=asyncio.get_running_loop())
        self.relay = relay

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.relay.connections += 1
        self.relay.open.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.relay.open.discard(self)
        super().connection_lost(error)


class FakeRelay:
    """The relay: an aiosmtpd handler with recorded messages and scripted answers."""

    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.connections = 0
        self.open: set[_Server] = set()
        self.port = 0  # the first start takes a free port; a restart takes the same one again
        self._answers: dict[str, deque[str]] = defaultdict(deque)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen (again) on the relay's port."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Server(self), "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection: the relay is down."""
        if self._server is not None:
            self._server.close()
            self.close_connections()
            await self._server.wait_closed()
            self._server = None

    def close_connections(self) -> None:
        """Close every open connection, as a relay does with idle ones."""
        for server in list(self.open):
            if server.transport is not None:
                server.transport.close()

    def answer(self, stage: str, reply: str, times: int = 1) -> None:
        """Answer the next `times` MAIL, RCPT or DATA commands with `reply` (or DROP the connection)."""
        self._answers[stage].extend([reply] * times)

    def message_ids(self) -> list[str]:
        return [received.message["Message-ID"] for received in self.messages]

    def _scripted(self, stage: str, server: SMTP) -> str | None:
        if not self._answers[stage]:
            return None
        reply = self._answers[stage].popleft()
        if reply == DROP:
            server.transport.close()  # at once: the reply below is never written
            return "451 never sent"
        if reply.startswith("421"):
            asyncio.get_running_loop().call_soon(server.transport.close)  # after the reply is written
        return reply

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list):
        if (reply := self._scripted("MAIL", server)) is not None:
            return reply
        envelope.mail_from, envelope.mail_options = address, [*envelope.mail_options, *options]
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list):
        if (reply := self._scripted("RCPT", server)) is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if (reply := self._scripted("DATA", server)) is not None:
            return reply
        data = envelope.original_content or b""
        raw = data.replace(b"\r\n", b"\n")  # as a mailbox stores it
        message = email.message_from_bytes(raw, policy=email.policy.default)
        at = asyncio.get_running_loop().time()
        self.messages.append(Received(envelope.mail_from or "", tuple(envelope.rcpt_tos), message, at, data))
        return "250 2.0.0 queued"


@pytest.fixture
async def fake_smtp() -> AsyncIterator[FakeRelay]:
    """A running relay; stopped after the test."""
    relay = FakeRelay()
    await relay.start()
    yield relay
    await relay.stop()
