"""`kindling whatsapp templates`: the message templates Meta has for the WhatsApp Business Account.

Prints the approved ones as `[[channels.whatsapp.templates]]` tables to paste into config.toml (or as JSON),
with each one's language, category and how many `{{n}}` parameters its body takes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from bot.channels.meta import GraphClient, GraphError
from bot.config import Settings

_PARAMETER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
FIELDS = "name,language,status,category,components"


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add `whatsapp templates` to the command line."""
    whatsapp = commands.add_parser("whatsapp", help="WhatsApp Cloud API: the message templates Meta has")
    actions = whatsapp.add_subparsers(dest="whatsapp_command", required=True)
    templates = actions.add_parser("templates", help="the approved templates, as config.toml tables (or JSON)")
    templates.add_argument("--all", action="store_true", help="also those not approved (pending, rejected, ...)")
    templates.add_argument("--format", choices=("toml", "json"), default="toml")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run `kindling whatsapp templates`."""
    meta = settings.meta
    missing = [name for name, value in (("KINDLING_WHATSAPP_TOKEN", meta.whatsapp_token),
               ("KINDLING_WHATSAPP_BUSINESS_ID", meta.whatsapp_business_id)) if not value]  # fmt: skip
    if missing:
        print(f"whatsapp templates: {' and '.join(missing)} must be set", file=sys.stderr)
        return 2
    graph = GraphClient(meta.graph_api_url, meta.whatsapp_token or "")
    try:
        found = await _all_templates(graph, meta.whatsapp_business_id or "")
    except GraphError as exc:
        print(f"whatsapp templates: {exc}", file=sys.stderr)
        return 1
    finally:
        await graph.close()
    chosen = [summary(t) for t in found if args.all or t.get("status") == "APPROVED"]
    if args.format == "json":
        print(json.dumps(chosen, indent=2, ensure_ascii=False))
    else:
        print("\n".join(toml_table(t) for t in chosen) or "# no approved templates", end="")
    return 0


async def _all_templates(graph: GraphClient, account: str) -> list[dict[str, Any]]:
    """Every page of `/{account}/message_templates`."""
    found: list[dict[str, Any]] = []
    params = {"fields": FIELDS, "limit": "100"}
    for _ in range(100):  # 10,000 templates: more than Meta allows an account
        page = await graph.get(f"{account}/message_templates", params)
        found += [t for t in page.get("data") or [] if isinstance(t, dict)]
        after = ((page.get("paging") or {}).get("cursors") or {}).get("after")
        if not after or not (page.get("paging") or {}).get("next"):
            break
        params = {**params, "after": after}
    return found


def summary(template: dict[str, Any]) -> dict[str, Any]:
    """A template's name, language, category, status and body parameter count."""
    body = next((c for c in template.get("components") or [] if isinstance(c, dict) and c.get("type") == "BODY"), {})
    parameters = len(set(_PARAMETER.findall(str(body.get("text") or ""))))
    return {
        "name": template.get("name"),
        "language": template.get("language"),
        "parameters": parameters,
        "category": str(template.get("category") or "marketing").lower(),
        "status": template.get("status"),
    }


def toml_table(template: dict[str, Any]) -> str:
    """One `[[channels.whatsapp.templates]]` table."""
    return (
        "[[channels.whatsapp.templates]]\n"
        f"name = {json.dumps(template['name'])}\n"
        f"language = {json.dumps(template['language'])}\n"
        f"parameters = {template['parameters']}\n"
        f"category = {json.dumps(template['category'])}\n"
        + (f"# status: {template['status']}\n" if template["status"] != "APPROVED" else "")
        + "\n"
    )
