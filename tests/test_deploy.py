"""The shipped deployment works: `kindling serve` behind Caddy with the very files in deploy/, over https.

Caddy (Debian's package; `make test` installs it) runs deploy/Caddyfile with KINDLING_DOMAIN=localhost:<port>,
for which it issues the certificate from its own local CA; the test trusts that CA alone (from Caddy's data
folder under tmp_path) and checks what visitors, operators and Telegram do, all through the proxy: the demo
page, /widget.js, the widget's WebSocket over wss, the console login, a Telegram webhook update, and login
throttling per visitor address (deploy/kindling.env.example trusts Caddy's X-Forwarded-For). Both servers
are real processes on free loopback ports; nothing is left on the machine (Caddy's HOME, data and config
folders are under tmp_path, its admin API on a free port).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from test_two_instances import Server

from conftest import PASSWORD, ROOT, shipped_templates
from fake_telegram import TOKEN, FakeTelegram

DEPLOY = ROOT / "deploy"
KINDLING = (sys.executable, "-m", "bot")
START_TIMEOUT = 60.0  # seconds for a server to come up on a busy machine
TELEGRAM_SECRET = "deploy-test-telegram-secret"
CHAT = 5550001

pytestmark = pytest.mark.slow  # two servers and a TLS handshake per browser: some seconds


@dataclass
class Site:
    """Kindling behind Caddy: its https address and an SSL context that trusts only Caddy's local CA."""

    url: str
    tls: ssl.SSLContext
    servers: list[Server]

    def logs(self) -> str:
        return logs(self.servers)

    def browser(self, address: str = "127.0.0.1") -> aiohttp.ClientSession:
        """A browser of its own (cookies, TLS) connecting from a loopback address."""
        connector = aiohttp.TCPConnector(ssl=self.tls, family=socket.AF_INET, local_addr=(address, 0))
        return aiohttp.ClientSession(base_url=self.url, connector=connector)


def logs(servers: list[Server]) -> str:
    """The end of each server's log, for a failure message."""
    return "\n".join(f"--- {s.name} (exit {s.process.returncode}) ---\n{s.log[-5000:]}" for s in servers)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shipped_env() -> dict[str, str]:
    """The settings in deploy/kindling.env.example (NAME=value lines, as systemd's EnvironmentFile= reads them)."""
    lines = (DEPLOY / "kindling.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def base_env(tmp_path: Path) -> dict[str, str]:
    """This machine's environment without KINDLING_ settings of its own, in a HOME under tmp_path."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {name: value for name, value in os.environ.items() if not name.startswith("KINDLING_")}
    return {
        **env,
        "HOME": str(home),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }


async def wait_for(check: Callable[[], object], what: str, servers: list[Server]) -> None:
    """Poll `check` (sync or async) until it is true; fail with the servers' logs if one exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        exited = [server for server in servers if server.process.returncode is not None]
        if exited or time.monotonic() > deadline:
            pytest.fail(f"waiting for {what}: {'a server exited' if exited else 'timed out'}\n{logs(servers)}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def site(tmp_path: Path, database_url: str, fake_telegram: FakeTelegram) -> AsyncIterator[Site]:
    """`kindling serve` configured as deploy/ says, with Caddy running deploy/Caddyfile in front of it."""
    caddy = shutil.which("caddy")
    if caddy is None:
        pytest.fail("the deployment test needs Caddy: `make caddy` (apt-get install caddy)", pytrace=False)
    kindling_port, https_port = free_port(), free_port()
    url = f"https://localhost:{https_port}"
    env = {
        **base_env(tmp_path),
        **shipped_env(),
        "KINDLING_CONFIG": str(ROOT / "config.toml"),
        "KINDLING_TEMPLATES": str(shipped_templates(tmp_path / "templates")),
        "KINDLING_DATABASE_URL": database_url,
        "KINDLING_PORT": str(kindling_port),
        "KINDLING_PUBLIC_URL": url,
        "KINDLING_TELEGRAM_TOKEN": TOKEN,
        "KINDLING_TELEGRAM_SECRET": TELEGRAM_SECRET,
        "KINDLING_TELEGRAM_API_URL": fake_telegram.url,
    }
    await add_admin(env)
    servers = [await Server.launch("kindling", *KINDLING, "serve", env=env, cwd=ROOT)]
    caddy_env = {
        **base_env(tmp_path),
        "KINDLING_DOMAIN": f"localhost:{https_port}",
        "KINDLING_UPSTREAM": f"127.0.0.1:{kindling_port}",
        "KINDLING_HTTP_PORT": str(free_port()),
        "KINDLING_CADDY_ADMIN": f"127.0.0.1:{free_port()}",
    }
    caddyfile = str(DEPLOY / "Caddyfile")
    servers.append(
        await Server.launch(
            "caddy", caddy, "run", "--config", caddyfile, "--adapter", "caddyfile", env=caddy_env, cwd=tmp_path
        )
    )
    try:
        await wait_for(lambda: f"Running on http://127.0.0.1:{kindling_port}" in servers[0].log, "kindling", servers)
        root = tmp_path / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        await wait_for(root.exists, "Caddy's local CA", servers)
        site = Site(url, ssl.create_default_context(cafile=str(root)), servers)
        await wait_for(lambda: _healthy(site), "https://localhost/healthz through Caddy", servers)
        yield site
    finally:
        for server in reversed(servers):
            await server.stop()


async def add_admin(env: dict[str, str]) -> None:
    """`kindling operator add ann --role admin --password-stdin`, as the admin does on the server."""
    pipe = asyncio.subprocess.PIPE
    args = ("operator", "add", "ann", "--role", "admin", "--password-stdin")
    added = await asyncio.create_subprocess_exec(
        *KINDLING, *args, cwd=ROOT, env=env, stdin=pipe, stdout=pipe, stderr=pipe
    )
    out, err = await added.communicate(PASSWORD.encode())
    assert added.returncode == 0 and b"added admin ann" in out, err.decode()


async def _healthy(site: Site) -> bool:
    async with site.browser() as browser:
        try:
            return (await browser.get("/healthz")).status == 200
        except (aiohttp.ClientError, ssl.SSLError):
            return False


async def test_the_demo_page_and_the_widget_are_served_over_https(site: Site):
    async with site.browser() as browser:
        page = await browser.get("/")
        assert page.status == 200 and '<script src="/widget.js"' in await page.text()
        assert page.url.scheme == "https"
        widget = await browser.get("/widget.js")
        assert widget.status == 200 and "WebSocket" in await widget.text()
        plain = await browser.get(site.url.replace("https://", "http://"))
        assert (
            plain.status == 400
        )  # Caddy speaks only TLS on the https port ("Client sent an HTTP request to an HTTPS server")


async def test_a_visitor_chats_over_wss_and_the_bot_answers(site: Site):
    async with site.browser() as browser, browser.ws_connect("/chat/ws", origin=site.url) as ws:
        await ws.send_json(
            {
                "type": "hello",
                "visitor": None,
                "token": None,
                "since": 0,
                "view": {"id": str(uuid.uuid4()), "url": f"{site.url}/", "referrer": "", "title": "Kindling"},
                "locale": "en-US",
                "timezone": "Europe/Berlin",
            }
        )
        assert (await ws.receive_json(timeout=10))["type"] == "welcome"
        message_id = str(uuid.uuid4())
        await ws.send_json({"type": "message", "id": message_id, "text": "Hi, do you ship to Canada?"})
        frames = [await ws.receive_json(timeout=10)]
        while not (frames[-1]["type"] == "message" and frames[-1]["from"] == "bot"):
            frames.append(await ws.receive_json(timeout=10))
        assert any(frame["type"] == "ack" and frame["id"] == message_id for frame in frames)
        assert frames[-1]["text"].startswith("Thanks! A person from our team will reply here")  # a question


async def test_an_admin_logs_in_to_the_console_over_https(site: Site):
    async with site.browser() as browser:
        answer = await _log_in(browser, "ann", PASSWORD)
        assert answer.status == 303, site.logs()
        cookie = answer.cookies["kindling_session"]
        assert cookie["secure"] and cookie["httponly"]  # the public URL is https, so the cookie is https-only
        queue = await browser.get("/console/queue")
        assert queue.status == 200 and '<span class="operator">ann</span>' in await queue.text()


async def test_telegram_updates_come_through_the_proxy_and_are_answered(site: Site, fake_telegram: FakeTelegram):
    [webhook] = fake_telegram.called("setWebhook")
    assert webhook["url"] == f"{site.url}/webhooks/telegram" and webhook["secret_token"] == TELEGRAM_SECRET
    update = json.loads((ROOT / "tests" / "payloads" / "telegram" / "message_text.json").read_text())
    update["message"]["date"] = int(time.time())
    async with site.browser() as browser:
        headers = {"X-Telegram-Bot-Api-Secret-Token": TELEGRAM_SECRET}
        answer = await browser.post("/webhooks/telegram", json=update, headers=headers)
        assert answer.status == 200, site.logs()
        forged = await browser.post("/webhooks/telegram", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "x"})
        assert forged.status == 403
    await wait_for(lambda: fake_telegram.texts(CHAT), "the bot's answer in Telegram", site.servers)
    assert "A person from our team will reply here" in fake_telegram.texts(CHAT)[0]  # a question


async def test_behind_caddy_failed_logins_throttle_the_visitors_own_address(site: Site):
    for guess in range(5):  # each for another name, so only the address reaches its limit
        async with site.browser("127.0.0.2") as guesser:
            assert (await _log_in(guesser, f"guess{guess}", "wrong password")).status == 401
    async with site.browser("127.0.0.2") as guesser:
        throttled = await _log_in(guesser, "ann", PASSWORD)
        assert throttled.status == 429 and "Too many login attempts" in await throttled.text()
    async with site.browser("127.0.0.3") as someone_else:  # through the same proxy, from another address
        assert (await _log_in(someone_else, "ann", PASSWORD)).status == 303


async def _log_in(browser: aiohttp.ClientSession, name: str, password: str) -> aiohttp.ClientResponse:
    """Submit the console's login form as a browser does (its CSRF token and cookie first)."""
    form = await (await browser.get("/console/login")).text()
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
    data = {"csrf_token": token, "name": name, "password": password, "next": ""}
    return await browser.post("/console/login", data=data, allow_redirects=False)
