"""Jinja expressions (stage rules, `when`, exit conditions) compiled once in a sandbox."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

log = logging.getLogger(__name__)
_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined)

Predicate = Callable[..., bool]


class ExpressionError(ValueError):
    """An expression that does not parse."""


@lru_cache(maxsize=1024)  # stage rules and flows' expressions, compiled again at each start and reload
def compile_predicate(source: str) -> Predicate:
    """Compile `lead.score >= 30` into a function of keyword context returning a bool.

    Evaluation errors (a missing attribute, a sandbox violation) count as false and are logged,
    so one bad rule never breaks intake.
    """
    try:
        expression = _ENV.compile_expression(source, undefined_to_none=False)
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"{source!r}: {exc.message}") from exc

    def predicate(**context: Any) -> bool:
        try:
            return bool(expression(**context))
        except (UndefinedError, SecurityError, TypeError, ValueError, AttributeError) as exc:
            # A lead with no learned likelihood yet has None there: `lead.likelihood >= 60` is false, not news.
            quiet = isinstance(exc, TypeError) and "'NoneType'" in str(exc)
            log.log(logging.DEBUG if quiet else logging.WARNING, "expression %r failed: %s", source, exc)
            return False

    return predicate
