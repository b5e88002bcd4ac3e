"""The flows in a templates folder, kept current while running: a broken edit never replaces a good version."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from flows.flowfile import spec_from_text
from flows.lint import check_flow, flow_files
from flows.locales import available
from flows.render import flow_environment
from flows.spec import FlowError, FlowSpec, Problem
from flows.stages import DEFAULT_ORDER

log = logging.getLogger(__name__)
Stamp = tuple[int, int]
Linted = tuple[FlowSpec | None, list[Problem]]
# What lint found in a flow file, by the file and the state of everything lint reads (see `_check`): several
# libraries of one process over one folder (app starts: each test of the suite starts one) lint an unchanged
# file once. A flow's spec holds nothing of the library that read it, so libraries can share it.
_LINTED: dict[tuple, Linted] = {}
_LINTED_LIMIT = 512  # past it the memo starts over (flows edited all day stay bounded)


class FlowLibrary:
    """Loads `templates/flows/*.j2`; `reload()` picks up new, changed and removed files by mtime and size."""

    def __init__(self, templates_root: Path, stages: tuple[str, ...] = DEFAULT_ORDER) -> None:
        self.root = Path(templates_root)
        self.stages = stages
        self.flows: dict[str, FlowSpec] = {}
        self.problems: dict[str, list[Problem]] = {}
        self._versions: dict[tuple[str, str], FlowSpec] = {}
        self._stamps: dict[Path, Stamp] = {}

    def load(self) -> list[Problem]:
        """Read every flow from scratch; returns the problems of the files that failed lint."""
        self.flows.clear()
        self.problems.clear()
        self._stamps.clear()
        return self.reload()

    def reload(self) -> list[Problem]:
        """Re-read what changed since the last look; returns problems found this time (also logged)."""
        stamps = self._scan()
        partials_changed = self._partials(stamps) != self._partials(self._stamps)
        if partials_changed:
            flow_environment(self.root).cache.clear()  # Jinja's own check is mtime only, too coarse on some disks
        found: list[Problem] = []
        changed = [
            path for path in flow_files(self.root) if partials_changed or stamps.get(path) != self._stamps.get(path)
        ]
        around = self._around(stamps) if changed else ()
        for path in changed:
            found.extend(self._check(path, around))
        for path in set(self._stamps) - set(stamps):
            self._forget(path)
        self._stamps = stamps
        return found

    def get(self, slug: str, version: str | None = None) -> FlowSpec | None:
        """The current flow by slug, or a specific version seen since start (enrollments are pinned)."""
        if version is None:
            return self.flows.get(slug)
        return self._versions.get((slug, version))

    def pinned(self, slug: str, version: str, source: str) -> FlowSpec | None:
        """A version from its stored text (after a restart the file may have moved on); None if it no longer parses."""
        spec = self.get(slug, version)
        if spec is None:
            try:
                spec = spec_from_text(self.root / "flows" / f"{slug}.j2", source, self.root, self.stages)
            except FlowError as exc:
                log.error("flow %s version %s cannot be read back: %s", slug, version, exc)
                return None
            self._versions[(slug, version)] = spec
        return spec

    def _around(self, stamps: dict[Path, Stamp]) -> tuple:
        """What lint reads besides a flow file: the stages, the languages, every other template's text."""
        texts = hashlib.sha256()
        for path in sorted(self._partials(stamps)):
            try:
                texts.update(b"%s\0%s\0" % (bytes(path), path.read_bytes()))
            except OSError:
                continue
        return (self.stages, available(self.root), texts.digest())

    def _check(self, path: Path, around: tuple) -> list[Problem]:
        """Lint one flow file, or take what lint found in the same text with the same `around` before."""
        try:
            state = (path, hashlib.sha256(path.read_bytes()).digest(), around)
        except OSError:
            state = None  # lint says it cannot be read
        linted = _LINTED.get(state) if state is not None else None
        if linted is None:
            linted = check_flow(path, self.root, self.stages)
            if len(_LINTED) >= _LINTED_LIMIT:
                _LINTED.clear()
            if state is not None:
                _LINTED[state] = linted
        spec, problems = linted[0], list(linted[1])
        slug = path.stem
        if problems:
            self.problems[slug] = problems
            kept = f"keeping version {self.flows[slug].version}" if slug in self.flows else "not loaded"
            for problem in problems:
                log.warning("flow %s fails lint (%s): %s", slug, kept, problem)
            return problems
        assert spec is not None
        self.problems.pop(slug, None)
        if slug not in self.flows or self.flows[slug].version != spec.version:
            log.info("flow %s loaded, version %s", slug, spec.version)
        self.flows[slug] = spec
        self._versions[(slug, spec.version)] = spec
        return []

    def _forget(self, path: Path) -> None:
        """A removed flow enrolls no one new; its versions stay for leads already in it."""
        if not self._is_flow(path):
            return
        if self.flows.pop(path.stem, None) is not None:
            log.info("flow %s removed", path.stem)
        self.problems.pop(path.stem, None)

    def _scan(self) -> dict[Path, Stamp]:
        """mtime and size of every template file (flows and the partials they may use)."""
        stamps: dict[Path, Stamp] = {}
        for path in self.root.rglob("*.j2"):
            try:
                stat = path.stat()
            except OSError:
                continue
            stamps[path] = (stat.st_mtime_ns, stat.st_size)
        return stamps

    def _is_flow(self, path: Path) -> bool:
        return path.parent == self.root / "flows" and not path.name.startswith("_")

    def _partials(self, stamps: dict[Path, Stamp]) -> dict[Path, Stamp]:
        return {path: stamp for path, stamp in stamps.items() if not self._is_flow(path)}
