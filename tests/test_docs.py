"""Docs that cannot drift: every setting, environment variable, command and route is in the README."""

from __future__ import annotations

import argparse
import re
import tomllib

from bot.app import create_app
from bot.cli import parser
from bot.config import load_settings

from conftest import ROOT

README = (ROOT / "README.md").read_text()


def _keys(table: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and key not in ("stages.rules",):
            keys += _keys(value, key + ".")
        else:
            keys.append(key)
    return keys


def test_every_setting_in_config_toml_is_documented():
    shipped = tomllib.loads((ROOT / "config.toml").read_text())
    missing = [key for key in _keys(shipped) if f"`{key}`" not in README]
    assert missing == []


def test_every_environment_variable_is_documented():
    source = "".join(path.read_text() for path in (ROOT / "bot").rglob("*.py"))
    names = set(re.findall(r"KINDLING_[A-Z_]+[A-Z]", source)) - {"KINDLING_WEBHOOK_SECRET_"}
    assert names, "found no environment variables: the pattern is wrong"
    assert sorted(name for name in names if name not in README) == []


def test_every_command_is_documented():
    def commands(p: argparse.ArgumentParser, prefix: str) -> list[str]:
        found = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += commands(sub, f"{prefix} {name}") or [f"{prefix} {name}"]
        return found

    every = commands(parser(), "kindling")
    assert "kindling lead show" in every
    assert [command for command in every if f"`{command}" not in README] == []


def test_every_route_is_documented(settings):
    settings = settings.with_(telegram_token="1:x", webhook_sources={"acme": object()})
    app = create_app(settings)
    routes = {route.resource.canonical for route in app.router.routes() if route.method != "HEAD"}
    assert "/webhooks/telegram" in routes
    assert sorted(route for route in routes if f"`{_method_of(app, route)} {route}`" not in README) == []


def _method_of(app, path: str) -> str:
    return next(r.method for r in app.router.routes() if r.resource.canonical == path and r.method != "HEAD")


def test_the_shipped_config_loads():
    settings = load_settings(ROOT / "config.toml", env={})
    assert settings.port == 8080 and settings.stages.order[-1] == "customer"
    assert {rule.name for rule in settings.scoring.rules} >= {"pricing page", "phone shared"}
