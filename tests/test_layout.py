"""The architecture, read from the source with `ast`: parts import one way, and every file sits in its room.

A node of the graph is a package (bot/intake/, flows/, storage/migrations/...), except that each module at
bot/'s root is a node of its own: those join the parts (bot/__init__.py says why each one stays there).
Every import counts, type-only (`if TYPE_CHECKING:`) and function-level ones too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("bot", "flows", "storage")
MIGRATIONS = "storage.migrations.versions"
# bot/'s root: the entry points and the modules that join the parts; a new file belongs in a package.
BOT_ROOT = {"__init__", "__main__", "app", "config", "services", "metrics", "views"}


def modules() -> dict[str, Path]:
    """Every first-party module by dotted name (a package by its own name)."""
    found = {}
    for top in FIRST_PARTY:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The first-party modules `name` imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.split(".")[0] in FIRST_PARTY)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join([*base, node.module] if node.module else base)
            if source.split(".")[0] in FIRST_PARTY:
                for alias in node.names:
                    yield f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source


def stdlib_imports(path: Path) -> set[str]:
    """The modules a file names in plain `import x` statements."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def module_graph() -> dict[str, set[str]]:
    """Module -> the first-party modules it imports."""
    known = modules()
    return {name: set(imports(name, path, known)) - {name} for name, path in known.items()}


def node(name: str, known: dict[str, Path]) -> str:
    """The graph node a module belongs to: its package, or itself at bot/'s root."""
    if known[name].name == "__init__.py" or (name.startswith("bot.") and name.count(".") == 1):
        return name
    return name.rpartition(".")[0]


def package_graph() -> dict[str, set[str]]:
    """Package -> the packages it imports."""
    known, graph = modules(), {}
    for name, targets in module_graph().items():
        graph.setdefault(node(name, known), set()).update(node(target, known) for target in targets if target in known)
    return {source: targets - {source} for source, targets in graph.items()}


def circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in the graph, or None."""
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        return exc.args[1]
    return None


def test_no_package_imports_a_package_that_imports_it_back():
    assert circle(package_graph()) is None


def test_no_module_imports_a_module_that_imports_it_back():
    """Pass a narrow protocol instead (flows.handoff.EngineParts, bot.channels.telegram_operators.BotLine)."""
    assert circle(module_graph()) is None


def test_dependencies_point_one_way_bot_flows_storage():
    wrong = {
        (name, target)
        for name, targets in module_graph().items()
        for target in targets
        if (name.startswith("storage") and target.split(".")[0] in ("bot", "flows"))
        or (name.startswith("flows") and target.startswith("bot"))
    }
    assert wrong == set()


def test_migrations_import_no_application_code():
    """A migration means forever what it meant when written: it copies the constants it needs."""
    wrong = {
        (name, target)
        for name, targets in module_graph().items()
        if name.startswith(MIGRATIONS + ".")
        for target in targets
    }
    assert wrong == set()


def test_bot_root_holds_only_the_modules_that_join_the_parts():
    loose = {path.stem for path in (ROOT / "bot").glob("*.py")} - BOT_ROOT
    assert loose == set(), "put each module in the package of its part (bot/cli/ for commands)"


def test_command_line_modules_live_in_bot_cli():
    parsers = {name for name, path in modules().items() if "argparse" in stdlib_imports(path)}
    assert {name for name in parsers if not name.startswith("bot.cli")} == set()


def test_every_bot_package_says_what_it_owns_and_may_import():
    packages = (ROOT / "bot").rglob("__init__.py")
    undocumented = [str(p.relative_to(ROOT)) for p in packages if not ast.get_docstring(ast.parse(p.read_text()))]
    assert undocumented == []
