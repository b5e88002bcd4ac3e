"""Every flow the library knows, with its running version and lint problems: the console and the API list them."""

from __future__ import annotations

from dataclasses import dataclass

from flows.library import FlowLibrary
from flows.spec import FlowSpec, Problem


@dataclass(frozen=True)
class FlowRow:
    """One flow file: the running version (if any) and the problems of the file."""

    slug: str
    spec: FlowSpec | None
    problems: tuple[Problem, ...]


def flow_rows(library: FlowLibrary) -> list[FlowRow]:
    """Every flow the library knows, loaded or failing lint, by slug."""
    slugs = sorted(set(library.flows) | set(library.problems))
    return [FlowRow(slug, library.flows.get(slug), tuple(library.problems.get(slug, ()))) for slug in slugs]
