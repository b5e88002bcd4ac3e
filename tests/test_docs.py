"""Docs that cannot drift: settings, environment variables, commands and routes match docs/ both ways."""

from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

import pytest

from bot.app import create_app
from bot.cli import parser as cli_parser  # the one place the docs tests reach for the command line
from bot.config import EmailSettings, MetaSettings, load_settings, setting_keys, settings_from

from conftest import ROOT

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
CONFIGURATION = DOCS / "configuration.md"
CLI = DOCS / "cli.md"
ROUTE_PAGES = [DOCS / "api.md", DOCS / "channels.md", DOCS / "console.md"]
CODE = [ROOT / "bot", ROOT / "flows", ROOT / "storage"]
SAMPLE = "sample"  # the name given to `<name>` tables when the loader is asked which keys it reads
SEPARATOR = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
CELL = re.compile(r"(?<!\\)\|")
ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def prose(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of a Markdown file, leaving out fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(text(path).split("\n"), start=1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def tables(path: Path) -> list[list[list[str]]]:
    """Every table of a Markdown file: rows of cells, the header first, the separator left out."""
    found, lines = [], prose(path)
    for index, (_, line) in enumerate(lines):
        previous = lines[index - 1][1] if index else ""
        if line.startswith("|") and not previous.startswith("|"):
            rows = []
            for _, row in lines[index:]:
                if not row.startswith("|"):
                    break
                rows.append(cells(row))
            found.append([rows[0], *rows[2:]])
    return found


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in CELL.split(row.strip().strip("|"))]


def first_code(cell: str) -> str | None:
    match = re.match(r"`([^`]+)`", cell)
    return match.group(1).replace("\\|", "|") if match else None


# Settings


def loader_keys() -> set[str]:
    """Every key the settings loader reads, with `<name>` and `<stage>` where the name is the user's."""
    data = tomllib.loads(text(ROOT / "config.toml"))
    data.setdefault("channels", {}).setdefault("webhook", {})["sources"] = {SAMPLE: {}}
    data.setdefault("webhooks", {})["outgoing"] = {SAMPLE: {"url": "https://crm.example.com/hooks"}}
    env = {"KINDLING_OUTGOING_SECRET_SAMPLE": "x", "KINDLING_WEBHOOK_SECRET_SAMPLE": "x"}
    keys = set()
    for key in setting_keys(data, env):
        key = key.replace(f".{SAMPLE}.", ".<name>.")
        keys.add(re.sub(r"^stages\.rules\.[^.]+$", "stages.rules.<stage>", key))
    return keys


def documented_settings() -> dict[str, str]:
    """Each key in configuration.md's tables, with its documented default."""
    documented = {}
    for table in tables(CONFIGURATION):
        if table[0][0] == "key":
            for row in table[1:]:
                documented[first_code(row[0]) or row[0]] = row[1]
    return documented


def test_every_setting_is_documented():
    documented = documented_settings()
    assert "server.port" in documented
    assert sorted(loader_keys() - set(documented)) == []


def test_every_documented_setting_exists():
    assert sorted(set(documented_settings()) - loader_keys()) == []


def test_documented_defaults_are_the_defaults():
    wrong = []
    for key, default in documented_settings().items():
        value = first_code(default)
        if value is None or "<" in key or "[]" in key:
            continue
        *sections, name = key.split(".")
        data: dict = tomllib.loads(f"{name} = {value}")
        for section in reversed(sections):
            data = {section: data}
        if settings_from(data, env={}) != settings_from({}, env={}):
            wrong.append(f"{key} = {value}")
    assert wrong == []


def test_the_shipped_config_loads():
    settings = load_settings(ROOT / "config.toml", env={})
    assert settings.port == 8080 and settings.stages.order[-1] == "customer"
    assert {rule.name for rule in settings.scoring.rules} >= {"pricing page", "phone shared"}


# Environment variables


def code_variables() -> set[str]:
    """KINDLING_* names the code reads; one ending in `_` is a prefix (`KINDLING_WEBHOOK_SECRET_<SOURCE>`)."""
    source = "".join(text(path) for folder in CODE for path in folder.rglob("*.py"))
    return set(re.findall(r"KINDLING_[A-Z_]*[A-Z_]", source))


def test_every_environment_variable_is_documented():
    names = code_variables()
    assert "KINDLING_PORT" in names, "found no environment variables: the pattern is wrong"
    documented = text(CONFIGURATION)
    assert sorted(name for name in names if f"`{name}" not in documented) == []


def test_every_documented_environment_variable_exists():
    known = code_variables() | set(re.findall(r"KINDLING_[A-Z_]*[A-Z]", text(ROOT / "tests" / "conftest.py")))
    prefixes = tuple(name for name in known if name.endswith("_"))
    unknown = set()
    for page in PAGES:
        for name in re.findall(r"KINDLING_[A-Z_]*[A-Z_]", text(page)):
            if name not in known and not name.startswith(prefixes):
                unknown.add(f"{page.name}: {name}")
    assert sorted(unknown) == []


# Commands


def commands(parser: argparse.ArgumentParser, path: str = "kindling") -> dict[str, set[str]]:
    """Every command (`kindling lead show`) with its options (`--format`)."""
    found: dict[str, set[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= commands(sub, f"{path} {name}")
    if not found and path != "kindling":
        found[path] = option_strings(parser)
    return found


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings if option not in ("-h", "--help")}


def documented_commands() -> dict[str, str]:
    """The command column of cli.md's table: `kindling lead show ID [--format ...]` -> its whole first cell."""
    rows = [row for table in tables(CLI) if table[0][0] == "command" for row in table[1:]]
    return {first_code(row[0]) or row[0]: row[0] for row in rows}


def test_every_command_and_option_is_documented():
    every = commands(cli_parser())
    assert "kindling lead show" in every
    documented = documented_commands()
    missing = []
    for command, options in every.items():
        rows = " ".join(usage for usage in documented if usage == command or usage.startswith(command + " "))
        missing += [command] if not rows else [f"{command} {option}" for option in options if option not in rows]
    assert missing == []
    assert sorted(option for option in option_strings(cli_parser()) if f"`{option}" not in text(CLI)) == []


def test_every_documented_command_and_option_exists():
    every = commands(cli_parser())
    unknown = []
    for usage in documented_commands():
        words = usage.split()
        command = next((c for c in sorted(every, key=len, reverse=True) if words[: len(c.split())] == c.split()), None)
        if command is None:
            unknown.append(usage)
        else:
            unknown += [f"{command} {o}" for o in re.findall(r"--[a-z-]+", usage) if o not in every[command]]
    assert unknown == []


# Routes


@pytest.fixture
def routes(settings) -> set[tuple[str, str]]:
    """Every route of an app with every channel on: (method, path)."""
    email = EmailSettings(mailgun_signing_key="key", postmark_inbound_auth="user:pass")
    meta = MetaSettings(
        app_secret="x", verify_token="x", whatsapp_token="x", whatsapp_phone_id="1", messenger_page_token="x"
    )
    settings = settings.with_(telegram_token="1:x", webhook_sources={"acme": object()}, email=email, meta=meta)
    app = create_app(settings)
    found = {(route.method, route.resource.canonical) for route in app.router.routes() if route.method != "HEAD"}
    assert ("POST", "/webhooks/telegram") in found
    return found


def test_every_route_is_documented(routes):
    documented = "".join(text(page) for page in ROUTE_PAGES)
    assert sorted(f"{method} {path}" for method, path in routes if f"`{method} {path}`" not in documented) == []


def test_every_documented_route_exists(routes):
    patterns = {(method, re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(path))) for method, path in routes}
    unknown = set()
    for page in PAGES:
        for method, path in ROUTE.findall(text(page)):
            if not any(re.fullmatch(p, path) and m == method for m, p in patterns):
                unknown.add(f"{page.name}: {method} {path}")
    assert sorted(unknown) == []


# Markdown


def test_every_table_row_has_the_headers_cells():
    ragged = [
        f"{page.name}: {row[0]} has {len(row)} cells, the header {len(table[0])}"
        for page in PAGES
        for table in tables(page)
        for row in table
        if len(row) != len(table[0])
    ]
    assert ragged == []


def test_no_table_is_broken_by_a_blank_line():
    broken = []
    for page in PAGES:
        lines = prose(page)
        for index, (number, line) in enumerate(lines):
            previous = lines[index - 1][1] if index else ""
            following = lines[index + 1][1] if index + 1 < len(lines) else ""
            if line.startswith("|") and not previous.startswith("|") and not SEPARATOR.match(following):
                broken.append(f"{page.name}:{number}: a table row without a header above it")
    assert broken == []


def test_relative_links_lead_to_files_and_headings():
    dead = []
    for page in PAGES:
        for number, line in prose(page):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+:", target):
                    continue
                file, _, anchor = target.partition("#")
                path = (page.parent / file).resolve() if file else page
                if not path.exists():
                    dead.append(f"{page.name}:{number}: {target}")
                elif anchor and path.suffix == ".md" and anchor not in headings(path):
                    dead.append(f"{page.name}:{number}: {target} (no such heading)")
    assert dead == []


def headings(path: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings."""
    titles = [line.lstrip("#").strip() for _, line in prose(path) if line.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-") for title in titles}
