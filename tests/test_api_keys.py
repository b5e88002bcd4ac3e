"""API keys made with `kindling apikey`: each carries scopes, the API refuses what a key may not do."""

from __future__ import annotations

import re

from bot.api.auth import EVERY_SCOPE, SCOPES

from conftest import API_KEY


async def new_key(run_kindling, name: str, *scopes: str) -> str:
    """`kindling apikey add NAME --scope ...`, which must succeed; the key it printed."""
    arguments = [part for each in scopes for part in ("--scope", each)]
    status, out, err = await run_kindling("apikey", "add", name, *arguments)
    assert status == 0, err
    return out.strip().splitlines()[-1]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


async def a_lead(client) -> int:
    answer = await client.post(
        "/api/events", json={"type": "signup", "lead": {"email": "ana@example.com"}}, headers=bearer(API_KEY)
    )
    return (await answer.json())["lead_id"]


async def test_a_read_only_key_lists_leads_but_may_not_change_them(client, run_kindling):
    lead_id = await a_lead(client)
    key = await new_key(run_kindling, "dashboard", "leads:read")
    assert key.startswith("kdl_") and len(key) > 40

    listed = await client.get("/api/leads", headers=bearer(key))
    assert listed.status == 200
    assert [lead["id"] for lead in (await listed.json())["items"]] == [lead_id]
    also = await client.get("/api/leads", headers={"X-Api-Key": key})
    assert also.status == 200

    refused = await client.patch(f"/api/leads/{lead_id}", json={"stage": "sql"}, headers=bearer(key))
    assert refused.status == 403
    assert "leads:write" in (await refused.json())["error"]
    report = await (await client.get(f"/api/leads/{lead_id}", headers=bearer(key))).json()
    assert report["stage"] == "lead"  # unchanged


async def test_a_revoked_key_is_refused_and_the_list_never_shows_a_key(client, run_kindling):
    key = await new_key(run_kindling, "old-crm", "leads:read", "leads:write")
    assert (await client.get("/api/leads", headers=bearer(key))).status == 200

    status, out, _ = await run_kindling("apikey", "list")
    assert status == 0
    [line] = out.splitlines()
    assert line.startswith("old-crm") and key[:10] in line and "leads:read leads:write" in line
    assert key not in out and "used" in line and "revoked" not in line

    status, out, _ = await run_kindling("apikey", "revoke", "old-crm")
    assert status == 0 and "401" in out
    refused = await client.get("/api/leads", headers=bearer(key))
    assert refused.status == 401 and "revoked" in (await refused.json())["error"]
    _, out, _ = await run_kindling("apikey", "list")
    assert "revoked" in out

    status, _, err = await run_kindling("apikey", "revoke", "old-crm")
    assert status == 1 and "old-crm" in err
    status, _, err = await run_kindling("apikey", "add", "old-crm", "--scope", "leads:read")
    assert status == 1 and "already exists" in err  # a revoked name stays taken: logs stay unambiguous


async def test_an_unknown_scope_is_refused_with_the_list_of_scopes(run_kindling):
    status, out, err = await run_kindling("apikey", "add", "typo", "--scope", "lead:read")
    assert status == 1 and out == ""
    assert "'lead:read'" in err
    assert all(name in err for name in SCOPES)
    status, _, err = await run_kindling("apikey", "add", "two words", "--scope", "leads:read")
    assert status == 1 and "name" in err
    _, out, _ = await run_kindling("apikey", "list")
    assert "no API keys yet" in out


async def test_a_key_with_every_scope(client, run_kindling):
    key = await new_key(run_kindling, "admin", "*")
    lead_id = await a_lead(client)
    changed = await client.patch(f"/api/leads/{lead_id}", json={"add_tags": ["vip"]}, headers=bearer(key))
    assert changed.status == 200 and (await changed.json())["tags"] == ["vip"]
    assert (await client.get("/api/flows", headers=bearer(key))).status == 200


async def test_every_api_route_refuses_a_key_without_its_scope(client, run_kindling):
    """Deny by default: for each route under /api, a key with every other scope gets 403 naming the one it lacks."""
    keys: dict[str, str] = {}
    checked = 0
    for route in client.server.app.router.routes():
        path = route.resource.canonical
        if not path.startswith("/api/") or route.method == "HEAD":
            continue
        if getattr(route.handler, "api_public", False):
            assert path == "/api/openapi.json"
            continue
        needed = getattr(route.handler, "api_scope", EVERY_SCOPE)
        if needed not in keys:
            others = [name for name in SCOPES if name != needed]
            keys[needed] = await new_key(run_kindling, "all-but-" + re.sub(r"[^\w]", "-", needed), *others)
        url = path.replace("{id}", "1").replace("{slug}", "pricing-not-ready")
        answer = await client.request(route.method, url, json={}, headers=bearer(keys[needed]))
        assert answer.status == 403, (route.method, path, answer.status)
        assert needed in (await answer.json())["error"]
        checked += 1
    assert checked >= 10
