"""Behind a reverse proxy, login throttling counts each visitor's own address, and only trusted proxies say which."""

from __future__ import annotations

from ipaddress import ip_network

import pytest

from bot.config import ConfigError, settings_from

from conftest import PASSWORD
from test_console_auth import csrf_of

LOOPBACK = (ip_network("127.0.0.1/32"), ip_network("::1/128"))  # the test client connects from 127.0.0.1


async def log_in_from(client, forwarded_for: str, name: str, password: str) -> int:  # type: ignore[no-untyped-def]
    """Log in with the `X-Forwarded-For` a proxy would add; the answer's status."""
    form = {"csrf_token": await csrf_of(client), "name": name, "password": password, "next": ""}
    headers = {"X-Forwarded-For": forwarded_for}
    answer = await client.post("/console/login", data=form, headers=headers, allow_redirects=False)
    return answer.status


async def fail_five_logins(client, forwarded_for: str) -> None:  # type: ignore[no-untyped-def]
    """Five wrong logins, each for another name, so only the address reaches its limit."""
    for guess in range(5):
        assert await log_in_from(client, forwarded_for, f"guess{guess}", "wrong password") == 401


async def test_behind_a_trusted_proxy_failed_logins_throttle_the_visitors_own_address(
    make_client, settings, add_operator
):
    client = await make_client(settings.with_(trusted_proxies=LOOPBACK))
    await add_operator("ann", "operator")
    await fail_five_logins(client, "203.0.113.7")
    assert await log_in_from(client, "203.0.113.7", "ann", PASSWORD) == 429
    assert await log_in_from(client, "198.51.100.2", "ann", PASSWORD) == 303  # another visitor, same proxy


async def test_the_right_most_address_no_trusted_proxy_vouches_for_is_counted(make_client, settings, add_operator):
    client = await make_client(settings.with_(trusted_proxies=(*LOOPBACK, ip_network("10.0.0.0/8"))))
    await add_operator("ann", "operator")
    # The visitor forges a first hop each time; a CDN (10.1.2.3) and the proxy append what they saw.
    for guess in range(5):
        assert await log_in_from(client, f"192.0.2.{guess}, 203.0.113.7, 10.1.2.3", f"guess{guess}", "nope") == 401
    assert await log_in_from(client, "192.0.2.99, 203.0.113.7, 10.1.2.3", "ann", PASSWORD) == 429
    assert await log_in_from(client, "198.51.100.2, 10.1.2.3", "ann", PASSWORD) == 303  # another visitor, same CDN


async def test_without_a_trusted_proxy_a_forged_forwarded_address_does_not_dodge_throttling(client, add_operator):
    await add_operator("ann", "operator")
    for guess in range(5):  # a new forged address every time
        assert await log_in_from(client, f"203.0.113.{guess}", f"guess{guess}", "wrong password") == 401
    assert await log_in_from(client, "198.51.100.2", "ann", PASSWORD) == 429  # the real address, 127.0.0.1, is locked


@pytest.mark.parametrize(
    ("data", "env", "problem"),
    [
        ({"server": {"trusted_proxies": ["caddy"]}}, {}, "server.trusted_proxies: 'caddy' is not an address"),
        ({"server": {"trusted_proxies": ["10.0.0.5/8"]}}, {}, "server.trusted_proxies: '10.0.0.5/8' is not"),
        ({}, {"KINDLING_TRUSTED_PROXIES": "127.0.0.1,local host"}, "KINDLING_TRUSTED_PROXIES: 'local host' is not"),
    ],
)
def test_a_trusted_proxy_that_is_no_address_stops_start_up_naming_the_key(data, env, problem):
    with pytest.raises(ConfigError, match=problem):
        settings_from(data, env)


def test_trusted_proxies_come_from_the_environment_comma_separated():
    settings = settings_from(
        {"server": {"trusted_proxies": ["10.0.0.0/8"]}}, {"KINDLING_TRUSTED_PROXIES": "127.0.0.1, ::1"}
    )
    assert settings.trusted_proxies == LOOPBACK
