"""The SMTP relay, reached with aiosmtplib over a few reused connections, and the pacer that keeps to its rate.

`smtp://` connects in the clear and upgrades with STARTTLS when the relay offers it (port 587 by default);
`smtps://` is TLS from the first byte (port 465). User and password come from the URL, percent-decoded.
A connection the relay closed while idle is opened again before anything was sent on it.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import unquote, urlsplit

from aiosmtplib import SMTP, SMTPResponseException, SMTPServerDisconnected

CONNECTIONS = 4  # at once to the relay: one is round-trip bound, a few keep the relay busy
TIMEOUT = 30.0  # seconds for connecting and for each command


class Pacer:
    """Hands out send slots at most `rate` a second, on the event loop's clock (or an injected one)."""

    def __init__(
        self,
        rate: float,
        time: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.interval = 1 / rate
        self.time = time or (lambda: asyncio.get_running_loop().time())
        self.sleep = sleep
        self.next_at = float("-inf")

    async def wait(self) -> None:
        """Return at this caller's slot: slots are `1/rate` apart, no burst on top."""
        now = self.time()
        slot = max(now, self.next_at)
        self.next_at = slot + self.interval  # taken before sleeping, so concurrent callers line up
        if slot > now:
            await self.sleep(slot - now)


class Relay:
    """A small pool of SMTP connections to one relay, paced; `send` is one message to one recipient."""

    def __init__(
        self,
        url: str,
        pacer: Pacer,
        connections: int = CONNECTIONS,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self.pacer = pacer
        self.idle: asyncio.Queue[SMTP] = asyncio.Queue()
        for _ in range(connections):
            self.idle.put_nowait(client(url, tls_context))

    async def send(self, sender: str, recipient: str, message: bytes) -> None:
        """Send over an idle connection; raises aiosmtplib's errors (SMTPRecipientRefused for a RCPT refusal).

        The pacer's slot is taken once a connection is ours and open: a slot taken earlier (while waiting for a
        connection, or connecting) would be spent late, and a queue of late slots reaches the relay as a burst.
        """
        smtp = await self.idle.get()
        try:
            await transfer(smtp, sender, recipient, message, self.pacer.wait)
        except (SMTPServerDisconnected, ConnectionError, TimeoutError, OSError):
            smtp.close()
            raise
        except SMTPResponseException as exc:
            if exc.code == 421:  # the relay is closing this connection
                smtp.close()
            raise
        finally:
            self.idle.put_nowait(smtp)

    async def close(self) -> None:
        """Say QUIT on every open connection."""
        while not self.idle.empty():
            smtp = self.idle.get_nowait()
            if smtp.is_connected:
                try:
                    await smtp.quit()
                except (SMTPResponseException, SMTPServerDisconnected, OSError):
                    smtp.close()


def client(url: str, tls_context: ssl.SSLContext | None = None) -> SMTP:
    """An unconnected aiosmtplib client for `smtp://` (STARTTLS if offered) or `smtps://` (implicit TLS).

    `tls_context` replaces the system's trusted certificates (a benchmark's self-signed relay); None in the app.
    """
    parts = urlsplit(url)
    implicit = parts.scheme == "smtps"
    return SMTP(
        hostname=parts.hostname,
        port=parts.port or (465 if implicit else 587),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        use_tls=implicit,
        start_tls=False if implicit else None,
        tls_context=tls_context,
        timeout=TIMEOUT,
    )


async def transfer(
    smtp: SMTP, sender: str, recipient: str, message: bytes, pace: Callable[[], Awaitable[None]]
) -> None:
    """(Re)connect, wait for a send slot, then MAIL, RCPT, DATA on a connection; a refused step resets the envelope."""
    reused = smtp.is_connected
    if not reused:
        await smtp.connect()
    await pace()
    try:
        await smtp.mail(sender)
    except SMTPServerDisconnected:
        if not reused:
            raise
        smtp.close()  # closed while idle: nothing was sent yet, so open it again
        await smtp.connect()
        await smtp.mail(sender)
    try:
        await smtp.rcpt(recipient)
        await smtp.data(message)  # only a 250 here means the relay took the message
    except SMTPResponseException:
        try:
            await smtp.rset()
        except (SMTPResponseException, SMTPServerDisconnected, OSError):
            smtp.close()
        raise
