"""Console accounts as an admin and operators meet them: the CLI, logging in and out, CSRF, throttling, roles."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from datetime import timedelta

import aiohttp
import pytest
from argon2 import PasswordHasher
from sqlalchemy import update
from yarl import URL

from bot.config import ConsoleSettings
from bot.console.roles import allowed
from storage.models import Operator, OperatorSession

from conftest import PASSWORD, ROOT, rows


async def csrf_of(client, path: str = "/console/login") -> str:  # type: ignore[no-untyped-def]
    """The CSRF token in the forms of a console page."""
    page = await (await client.get(path)).text()
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


async def log_in(client, name: str, password: str = PASSWORD, next_url: str = ""):  # type: ignore[no-untyped-def]
    """Submit the login form as a browser would; returns the answer (not following redirects)."""
    form = {"csrf_token": await csrf_of(client), "name": name, "password": password, "next": next_url}
    return await client.post("/console/login", data=form, allow_redirects=False)


async def test_an_admin_manages_operators_from_the_command_line(run_kindling):
    status, out, _ = await run_kindling("operator", "add", "ann", "--role", "admin", "--password-stdin", stdin=PASSWORD)
    assert status == 0 and "added admin ann" in out
    args = ("operator", "add", "bob", "--role", "operator", "--telegram-id", "4242", "--password-stdin")
    assert (await run_kindling(*args, stdin=PASSWORD + "\n"))[0] == 0

    status, _, err = await run_kindling(
        "operator", "add", "Ann", "--role", "marketer", "--password-stdin", stdin=PASSWORD
    )
    assert status == 1 and "an operator named 'Ann' already exists" in err
    status, _, err = await run_kindling(
        "operator", "add", "cy", "--role", "operator", "--password-stdin", stdin="short"
    )
    assert status == 1 and "at least 8 characters" in err
    with pytest.raises(SystemExit) as refused:
        await run_kindling("operator", "add", "cy", "--role", "boss", "--password-stdin", stdin=PASSWORD)
    assert refused.value.code == 2

    status, out, _ = await run_kindling("operator", "list")
    assert status == 0 and re.search(r"ann\s+admin", out) and re.search(r"bob\s+operator.*telegram 4242", out)
    assert "cy" not in out

    assert (await run_kindling("operator", "remove", "bob"))[0] == 0
    status, _, err = await run_kindling("operator", "remove", "bob")
    assert status == 1 and "no operator named 'bob'" in err
    assert "bob" not in (await run_kindling("operator", "list"))[1]
    assert "removed" in (await run_kindling("operator", "list", "--all"))[1]


async def test_the_installed_command_adds_an_operator(database_url):
    env = {**os.environ, "KINDLING_DATABASE_URL": database_url, "KINDLING_CONFIG": str(ROOT / "config.toml")}
    command = [sys.executable, "-m", "bot", "operator", "add", "ann", "--role", "admin", "--password-stdin"]
    done = await asyncio.to_thread(subprocess.run, command, input=PASSWORD, capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "added admin ann" in done.stdout, done.stderr


async def test_passwords_are_stored_as_argon2id_hashes(add_operator, db):
    await add_operator("ann", "admin")
    [ann] = await rows(db, Operator)
    assert ann.password_hash.startswith("$argon2id$") and PASSWORD not in ann.password_hash


async def test_an_operator_logs_in_and_lands_where_they_were_going(client, add_operator):
    await add_operator("ann", "operator")
    sent_away = await client.get("/console/leads?q=ann", allow_redirects=False)
    login_url = URL(sent_away.headers["Location"])
    assert sent_away.status == 303 and login_url.path == "/console/login"
    assert login_url.query["next"] == "/console/leads?q=ann"

    answer = await log_in(client, "ann", next_url="/console/leads?q=ann")
    assert answer.status == 303 and answer.headers["Location"] == "/console/leads?q=ann"
    cookie = answer.cookies["kindling_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/console"
    page = await client.get("/console/leads?q=ann")
    assert page.status == 200 and '<span class="operator">ann</span>' in await page.text()


async def test_a_wrong_password_or_unknown_name_does_not_log_in(client, add_operator, db):
    await add_operator("ann", "operator")
    for name, password in (("ann", "wrong password"), ("nobody", PASSWORD)):
        answer = await log_in(client, name, password)
        assert answer.status == 401 and "Wrong name or password." in await answer.text()
        assert "kindling_session" not in answer.cookies
    assert await rows(db, OperatorSession) == []


async def test_an_offsite_next_address_is_ignored(client, add_operator):
    await add_operator("ann", "operator")
    answer = await log_in(client, "ann", next_url="//evil.example/console")
    assert answer.headers["Location"] == "/console"  # the front door, which knows where each role works


async def test_logging_out_ends_the_session_for_good(client, add_operator, aiohttp_client, db):
    await add_operator("ann", "operator")
    token = (await log_in(client, "ann")).cookies["kindling_session"].value
    answer = await client.post("/console/logout", data={"csrf_token": await csrf_of(client, "/console/leads")})
    assert answer.status == 200 and "Log in to the console" in await answer.text()
    assert await rows(db, OperatorSession) == []

    # Someone who kept the old cookie gets nothing with it.
    client.session.cookie_jar.update_cookies({"kindling_session": token})
    replay = await client.get("/console/leads", allow_redirects=False)
    assert replay.status == 303 and replay.headers["Location"].startswith("/console/login")


async def test_a_session_expires_after_the_configured_hours(client, add_operator, clock):
    await add_operator("ann", "operator")
    await log_in(client, "ann")
    clock.advance(timedelta(hours=11, minutes=59))
    assert (await client.get("/console/leads")).status == 200
    clock.advance(timedelta(minutes=1))
    expired = await client.get("/console/leads", allow_redirects=False)
    assert expired.status == 303 and expired.headers["Location"].startswith("/console/login")
    as_script = await client.get("/console/leads", headers={"Accept": "application/json"})
    assert as_script.status == 401 and await as_script.json() == {"error": "log in to the console first"}


async def test_a_state_change_without_the_csrf_token_is_refused_and_changes_nothing(client, add_operator, db):
    await add_operator("ann", "operator")
    await log_in(client, "ann")
    token = await csrf_of(client, "/console/leads")
    for form, headers in (({}, {}), ({"csrf_token": "forged"}, {}), ({}, {"X-CSRF-Token": "forged"})):
        refused = await client.post("/console/logout", data=form, headers=headers)
        assert refused.status == 403 and "CSRF token missing or wrong" in await refused.text()
    assert len(await rows(db, OperatorSession)) == 1
    assert (await client.get("/console/leads")).status == 200

    by_header = await client.post("/console/logout", headers={"X-CSRF-Token": token}, allow_redirects=False)
    assert by_header.status == 303 and await rows(db, OperatorSession) == []


async def test_the_login_form_itself_needs_its_csrf_token(client, add_operator, db):
    await add_operator("ann", "operator")
    await client.get("/console/login")
    forged = await client.post("/console/login", data={"name": "ann", "password": PASSWORD}, allow_redirects=False)
    assert forged.status == 403 and "CSRF token missing or wrong" in await forged.text()
    assert await rows(db, OperatorSession) == []


async def test_repeated_failed_logins_are_throttled_until_the_window_passes(client, add_operator, clock):
    await add_operator("ann", "operator")
    for _ in range(5):
        assert (await log_in(client, "ann", "guess-guess")).status == 401
    throttled = await log_in(client, "ann")  # even the right password waits
    assert throttled.status == 429 and throttled.headers["Retry-After"] == "60"
    assert "Too many login attempts, try again in 60 s." in await throttled.text()

    clock.advance(timedelta(seconds=45))
    assert "try again in 15 s" in await (await log_in(client, "ann")).text()
    clock.advance(timedelta(seconds=15))
    assert (await log_in(client, "ann")).status == 303


async def test_guessing_one_accounts_password_from_many_addresses_is_throttled(client, add_operator):
    await add_operator("ann", "operator")
    await add_operator("bob", "operator")

    async def from_address(last_octet: int, name: str, password: str):  # type: ignore[no-untyped-def]
        """Log in from the loopback address 127.0.0.N, in a browser of its own."""
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{last_octet}", 0))
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address, as the test client keeps them
        async with aiohttp.ClientSession(base_url=client.make_url("/"), connector=connector, cookie_jar=jar) as browser:
            answer = await log_in(browser, name, password)
            return answer.status, answer.headers.get("Retry-After")

    for octet in range(2, 7):  # five guesses, each from a new address: no address reaches its own limit
        assert await from_address(octet, "ann", "guess-guess") == (401, None)
    assert await from_address(7, "ANN ", PASSWORD) == (429, "60")  # the name is what is being guessed
    assert await from_address(7, "bob", PASSWORD) == (303, None)  # that address itself is not locked out


async def test_a_removed_operator_is_logged_out_and_cannot_log_in(client, add_operator, run_kindling):
    await add_operator("bob", "operator")
    await log_in(client, "bob")
    assert (await run_kindling("operator", "remove", "bob"))[0] == 0
    assert (await client.get("/console/leads", allow_redirects=False)).status == 303
    assert (await log_in(client, "bob")).status == 401


@pytest.mark.parametrize(
    ("role", "flows", "nav"),
    [
        ("operator", 403, ["Queue", "Leads"]),
        ("marketer", 200, ["Leads", "Flows"]),
        ("admin", 200, ["Queue", "Leads", "Flows"]),
    ],
)
async def test_each_role_sees_only_its_pages(client, add_operator, role, flows, nav):
    await add_operator("ann", role)
    await log_in(client, "ann")
    answer = await client.get("/console/flows")
    assert answer.status == flows
    if flows == 403:
        assert f"Your role ({role}) does not allow this." in await answer.text()
    page = await (await client.get("/console/leads")).text()
    assert re.findall(r'<a href="/console/(?:queue|leads|flows)">(\w+)</a>', page) == nav


def test_a_route_that_declares_no_permission_is_for_admins_only():
    settings = ConsoleSettings()
    assert [role for role in ("operator", "marketer", "admin") if allowed(role, None, settings)] == ["admin"]
    assert not allowed("marketer", "conversations.read", settings)
    assert allowed("marketer", "conversations.read", ConsoleSettings(marketers_read_conversations=True))
    assert not allowed("operator", "flows.edit", settings) and not allowed("operator", "data.export", settings)


async def test_an_old_password_hash_is_upgraded_at_the_next_login(client, add_operator, db):
    await add_operator("ann", "operator")
    weak = PasswordHasher(time_cost=1, memory_cost=8192).hash(PASSWORD)  # older, weaker settings
    async with db() as session, session.begin():
        await session.exec(update(Operator).values(password_hash=weak))
    assert PasswordHasher().check_needs_rehash((await rows(db, Operator))[0].password_hash)
    assert (await log_in(client, "ann")).status == 303
    [ann] = await rows(db, Operator)
    assert not PasswordHasher().check_needs_rehash(ann.password_hash)
    assert PasswordHasher().verify(ann.password_hash, PASSWORD)


async def test_cookies_are_secure_when_the_console_is_served_over_https(make_client, settings):
    client = await make_client(settings.with_(public_url="https://kindling.example"))
    form = await client.get("/console/login")
    assert form.cookies["kindling_csrf"]["secure"]


async def test_a_websocket_from_another_site_is_refused(client, add_operator):
    await add_operator("ann", "operator")
    await log_in(client, "ann")
    headers = {"Origin": "https://evil.example", "Upgrade": "websocket", "Connection": "Upgrade"}
    refused = await client.get("/console/leads", headers=headers)
    assert refused.status == 403 and "other sites" in (await refused.json())["error"]
