"""`kindling operator add|list|remove`: console accounts from the command line."""

from __future__ import annotations

import argparse
import getpass
import sys

from bot.config import Settings
from bot.console.accounts import AccountError, create_account, remove_account
from bot.console.roles import ROLES
from flows.clock import SystemClock
from storage.db import database
from storage.operators import OperatorExists, OperatorNotFound, list_operators


class PasswordError(ValueError):
    """The password could not be read, or the two entries differ."""


class NoTerminal(PasswordError):
    """There is no terminal to ask for the password on (a script, cron, a container)."""


def read_password(from_stdin: bool) -> str:
    """The new password: one line of standard input, or prompted twice without echo."""
    if from_stdin:
        line = sys.stdin.readline()
        if not line:
            raise PasswordError("no password on standard input")
        return line.rstrip("\r\n")
    try:
        first = getpass.getpass("Password: ")
        again = getpass.getpass("Password again: ")
    except EOFError:  # no terminal, and getpass's fallback found standard input empty
        raise NoTerminal("no terminal to ask for the password on: pipe it in with --password-stdin") from None
    if again != first:
        raise PasswordError("the passwords do not match")
    return first


async def add(settings: Settings, name: str, role: str, telegram_id: int | None, password_stdin: bool) -> int:
    """Create an operator; exit status 1 with a message when it cannot be done, 2 when it was asked wrongly."""
    try:
        password = read_password(password_stdin)
        telegram = None if telegram_id is None else str(telegram_id)
        async with database(settings.database_url) as sessions:
            operator = await create_account(sessions, name, role, password, telegram, SystemClock().now())
    except (AccountError, OperatorExists, PasswordError) as exc:
        print(f"operator add: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, NoTerminal) else 1
    print(f"added {operator.role} {operator.name} (id {operator.id}); they can log in at /console/login")
    return 0


async def show_all(settings: Settings, include_removed: bool) -> int:
    """Print the operators, one a line."""
    async with database(settings.database_url) as sessions, sessions() as session:
        operators = await list_operators(session, include_removed)
    if not operators:
        print("no operators yet: add one with `kindling operator add NAME --role admin`")
    for operator in operators:
        telegram = f"  telegram {operator.telegram_user_id}" if operator.telegram_user_id else ""
        removed = f"  removed {operator.removed_at:%Y-%m-%d %H:%M}" if operator.removed_at else ""
        print(f"{operator.name:<24} {operator.role:<9} added {operator.created_at:%Y-%m-%d}{telegram}{removed}")
    return 0


async def remove(settings: Settings, name: str) -> int:
    """Remove an operator and log them out everywhere."""
    try:
        async with database(settings.database_url) as sessions:
            operator = await remove_account(sessions, name, SystemClock().now())
    except OperatorNotFound as exc:
        print(f"operator remove: {exc}", file=sys.stderr)
        return 1
    print(f"removed {operator.name}; their console sessions have ended")
    return 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """`kindling operator add|list|remove`."""
    operator = commands.add_parser("operator", help="console accounts")
    actions = operator.add_subparsers(dest="operator_command", required=True)
    add = actions.add_parser("add", help="add a console account (the password is asked twice)")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES, help="what they may do in the console")
    add.add_argument("--telegram-id", type=int, help="their Telegram user id, for the operators' group")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    listing = actions.add_parser("list", help="the console accounts")
    listing.add_argument("--all", action="store_true", help="removed accounts too")
    remove = actions.add_parser("remove", help="remove an account and end its console sessions")
    remove.add_argument("name")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    """Run `kindling operator add|list|remove`."""
    if args.operator_command == "add":
        return await add(settings, args.name, args.role, args.telegram_id, args.password_stdin)
    if args.operator_command == "list":
        return await show_all(settings, args.all)
    return await remove(settings, args.name)
