"""The OpenAPI document at /api/openapi.json: it describes exactly the routes, and the app keeps to it.

The fuzz test starts the real app on a port, lets schemathesis generate requests for every operation
from the document (with an API key), and fails on any 5xx or any answer the document does not allow.
"""

from __future__ import annotations

import asyncio
import itertools

import hypothesis
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Per operation: enough to walk every parameter, few enough to run in well under a minute.
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 10}
METHODS = ("get", "put", "post", "patch", "delete")


async def openapi(client) -> dict:  # type: ignore[no-untyped-def]
    answer = await client.get("/api/openapi.json")  # no key: tools read it first
    assert answer.status == 200
    return await answer.json()


async def test_the_document_lists_exactly_the_api_routes_with_their_scopes(client):
    document = await openapi(client)
    assert document["openapi"].startswith("3.1")
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    views = {
        (route.resource.canonical, route.method): route.handler
        for route in client.server.app.router.routes()
        if route.resource.canonical.startswith("/api/") and route.method != "HEAD"
    }
    assert documented == set(views)
    for (path, method), view in views.items():
        operation = document["paths"][path][method.lower()]
        if getattr(view, "api_public", False):
            assert operation["security"] == [] and "x-scope" not in operation, path
        else:
            assert operation["security"] and operation["x-scope"] == view.api_scope, (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)


async def test_every_operation_with_a_body_documents_the_413_it_answers_to_a_body_too_large(
    client, make_client, settings
):
    document = await openapi(client)
    with_body = [(path, method) for path, item in document["paths"].items() for method, op in item.items()
                 if "requestBody" in op]  # fmt: skip
    assert ("/api/leads/{id}", "patch") in with_body
    assert [
        (path, method) for path, method in with_body if "413" not in document["paths"][path][method]["responses"]
    ] == []

    small = await make_client(settings.with_(max_body_bytes=1024))
    answer = await small.patch("/api/leads/1", json={"add_tags": ["x" * 60] * 40}, headers=AUTH)
    assert answer.status == 413 and (await answer.json())["error"]


async def test_stage_names_come_from_the_config(client):
    document = await openapi(client)
    assert document["components"]["schemas"]["Stage"]["enum"] == ["visitor", "lead", "mql", "sql", "customer"]


async def seed(client) -> None:  # type: ignore[no-untyped-def]
    """A few leads with events, a conversation with messages and a handoff, so lookups by id find rows."""
    for n in range(1, 4):
        lead = {"email": f"seed{n}@example.com", "visitor_id": f"seed-{n}"}
        answer = await client.post("/api/events", json={"type": "signup", "lead": lead}, headers=AUTH)
        assert answer.status == 201
    ws = await client.ws_connect("/chat/ws")
    await ws.send_json({"type": "hello", "visitor": None, "token": None, "since": 0})
    await ws.receive_json()
    await ws.send_json({"type": "message", "id": "7b0e5f7e-4a9e-4f43-9a5b-2a1d6a0c5e11", "text": "talk to a human"})
    while (await ws.receive_json(timeout=5))["type"] != "ack":
        pass
    await ws.close()


def fuzz(schema, base_url: str) -> list[str]:  # type: ignore[no-untyped-def]
    """Run every operation's generated cases against the app (in a thread: schemathesis calls are blocking).

    Valid requests (positive) must get a documented answer; invalid ones (negative) must still get no 5xx.
    """
    failures = []
    for result, mode in itertools.product(schema.get_all_operations(), GenerationMode):
        operation = result.ok()
        try:
            cases(operation, mode, base_url)()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE  # an operation with no input has nothing to get wrong
        except (Exception, BaseExceptionGroup) as exc:  # every failing operation, not just the first
            failures.append(f"{mode} {operation.method.upper()} {operation.path}: {exc}")
    return failures


def cases(operation, mode: GenerationMode, base_url: str):  # type: ignore[no-untyped-def]
    """A Hypothesis test that sends `mode` cases of one operation and checks each answer."""
    checks = CHECKS if mode is GenerationMode.POSITIVE else [not_a_server_error, status_code_conformance]

    @hypothesis.settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @given(case=operation.as_strategy(mode))
    def each(case) -> None:  # type: ignore[no-untyped-def]
        case.call_and_validate(base_url=base_url, headers=AUTH, checks=checks)

    return each


async def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document(client):
    await seed(client)
    schema = schemathesis.openapi.from_dict(await openapi(client))
    base_url = str(client.make_url("")).rstrip("/")
    failures = await asyncio.to_thread(fuzz, schema, base_url)
    assert failures == [], "\n\n".join(failures)
