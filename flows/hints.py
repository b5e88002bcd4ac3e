""" "Did you mean": the closest known `lead.` / `event.` field for a misspelt one in a flow."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

from jinja2 import nodes

from flows.samples import BLANK_EVENT, SAMPLE_LEAD
from flows.spec import Problem

FIELDS = {"lead": tuple(SAMPLE_LEAD), "event": tuple(BLANK_EVENT)}
_NO_ATTRIBUTE = re.compile(r"has no attribute '([^']+)'")


def field_hints(trees: Iterable[nodes.Node]) -> dict[str, str]:
    """For each unknown field read off `lead` or `event`: what to write instead (`frist_name` -> the closest)."""
    hints: dict[str, str] = {}
    for tree in trees:
        for node in [tree, *tree.find_all((nodes.Getattr, nodes.Getitem))]:  # find_all skips the tree itself
            if not isinstance(node, nodes.Getattr | nodes.Getitem):
                continue
            base, name = node.node, _field_name(node)
            if not isinstance(base, nodes.Name) or base.name not in FIELDS or name is None:
                continue
            known = FIELDS[base.name]
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                hint = f"did you mean `{base.name}.{close[0]}`?" if close else f"{base.name} has {', '.join(known)}"
                hints.setdefault(name, hint)
    return hints


def with_hint(problem: Problem, hints: dict[str, str]) -> Problem:
    """The problem, with a "did you mean" added when it is about an unknown field."""
    match = _NO_ATTRIBUTE.search(problem.message)
    hint = hints.get(match.group(1)) if match else None
    return Problem(problem.file, problem.line, f"{problem.message}: {hint}") if hint else problem


def _field_name(node: nodes.Getattr | nodes.Getitem) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    return node.arg.value if isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str) else None
