"""Flows edited in the console: drafts, publishing, the history of running versions, and keeping files in step.

The flow files stay the running truth on each instance (`FlowLibrary` reads them); the database holds how
they changed. Publishing records a revision (the new text, the version it replaced, who) and then writes the
file; every instance, at its reload tick, writes a revision published elsewhere into its own file when that
file is still at the version the revision replaced (`Sync`). A file edited on disk is recorded as a revision by
"file on disk" the first time an instance loads it, and is not copied elsewhere: deploy files to every instance
as before. Nothing overwrites a change it did not see: publishing over a file that changed since the draft began
(on disk, or published from another instance and not written here yet) is refused as a `Conflict`.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import delete, func
from sqlalchemy import text as sql
from sqlalchemy.exc import DBAPIError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from flows.library import FlowLibrary
from flows.lint import check_text
from flows.spec import FlowError, FlowSpec, Problem, flow_version
from flows.whatsapp_rules import WhatsAppTemplate
from storage.db import UNAVAILABLE, Sessions, transaction
from storage.models import AuditEntry, FlowDraft, FlowRevision

log = logging.getLogger(__name__)
ON_DISK = "file on disk"  # the author of a version first seen in the file
SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MAX_SOURCE = 200_000  # characters of one flow's text: far above any real flow, far below a memory problem


class Conflict(Exception):
    """The flow changed since the draft began: its file's text now (None: no file), and who changed it."""

    def __init__(self, text: str | None, by: str) -> None:
        super().__init__(f"the flow changed since this draft began ({by})")
        self.text, self.by = text, by

    @property
    def version(self) -> str | None:
        return None if self.text is None else flow_version(self.text)


@dataclass(frozen=True)
class Checks:
    """What lint needs besides the text: the stages and the channels' rules (as `kindling lint` uses them)."""

    stages: tuple[str, ...]
    whatsapp: Mapping[str, tuple[WhatsAppTemplate, ...]] | None = None
    messenger: bool = False


def flow_path(library: FlowLibrary, slug: str) -> Path:
    """The file of a flow by its slug (checked: a slug is a file name, never a path)."""
    if not SLUG.match(slug):
        raise ValueError(f"flow name {slug!r}: use lowercase letters, digits, dashes and underscores")
    return library.root / "flows" / f"{slug}.j2"


def file_text(library: FlowLibrary, slug: str) -> str | None:
    """The flow file's text now, or None when there is no such file."""
    try:
        return flow_path(library, slug).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def version_of(text: str | None) -> str | None:
    return None if text is None else flow_version(text)


def lint(library: FlowLibrary, slug: str, text: str, checks: Checks) -> tuple[FlowSpec | None, list[Problem]]:
    """Every problem `kindling lint` would find in this text as the flow `slug`, in line order; the flow if none."""
    path = flow_path(library, slug)
    if len(text) > MAX_SOURCE:
        return None, [Problem(str(path), 1, f"the flow is {len(text):,} characters; at most {MAX_SOURCE:,}")]
    return check_text(path, text, library.root, checks.stages, checks.whatsapp, checks.messenger)


def diff(before: str | None, after: str, before_name: str = "running", after_name: str = "draft") -> str:
    """A unified diff of two texts of a flow, as `git diff` shows one."""
    lines = difflib.unified_diff(
        (before or "").splitlines(keepends=True), after.splitlines(keepends=True), before_name, after_name
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def write_file(path: Path, text: str) -> None:
    """Replace the file at once (written beside it, then renamed): a reader never sees half a flow."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


async def latest(session: AsyncSession, slug: str) -> FlowRevision | None:
    """The newest revision of a flow."""
    query = select(FlowRevision).where(FlowRevision.flow_slug == slug).order_by(col(FlowRevision.id).desc()).limit(1)
    return (await session.exec(query)).first()


async def history(sessions: Sessions, slug: str, limit: int = 50) -> list[FlowRevision]:
    """A flow's revisions, newest first."""
    async with sessions() as session:
        query = (
            select(FlowRevision)
            .where(FlowRevision.flow_slug == slug)
            .order_by(col(FlowRevision.id).desc())
            .limit(limit)
        )
        return list((await session.exec(query)).all())


async def revision(sessions: Sessions, slug: str, revision_id: int) -> FlowRevision | None:
    async with sessions() as session:
        found = await session.get(FlowRevision, revision_id)
        return found if found is not None and found.flow_slug == slug else None


async def get_draft(sessions: Sessions, slug: str, operator_id: int) -> FlowDraft | None:
    async with sessions() as session:
        query = select(FlowDraft).where(FlowDraft.flow_slug == slug, FlowDraft.operator_id == operator_id)
        return (await session.exec(query)).first()


async def save_draft(
    sessions: Sessions, slug: str, operator_id: int, author: str, text: str, base: str | None, now: datetime
) -> FlowDraft:
    """Keep one person's edit of a flow (one draft per person and flow; the last save wins). Starting a draft is a
    line in the audit log; saving it again as they type is not."""

    async def save(session: AsyncSession) -> FlowDraft:
        query = select(FlowDraft).where(FlowDraft.flow_slug == slug, FlowDraft.operator_id == operator_id)
        draft = (await session.exec(query)).first()
        if draft is None:
            draft = FlowDraft(flow_slug=slug, operator_id=operator_id, source=text, base=base, updated_at=now)
            await audit(session, now, author, "flow.draft", slug, base=base)
        else:
            draft.source, draft.base, draft.updated_at = text, base, now
        session.add(draft)
        await session.flush()
        return draft

    return await transaction(sessions, save)


async def drop_draft(sessions: Sessions, slug: str, operator_id: int) -> None:
    async def drop(session: AsyncSession) -> None:
        await session.exec(delete(FlowDraft).where(FlowDraft.flow_slug == slug, FlowDraft.operator_id == operator_id))

    await transaction(sessions, drop)


async def audit(session: AsyncSession, now: datetime, actor: str, action: str, subject: str, **detail: object) -> None:
    """One line of the audit log, in the caller's transaction."""
    session.add(AuditEntry(at=now, actor=actor, action=action, subject=subject, detail=detail))


async def publish(
    sessions: Sessions,
    library: FlowLibrary,
    slug: str,
    text: str,
    base: str | None,
    author: str,
    now: datetime,
    checks: Checks,
    operator_id: int | None = None,
    action: str = "publish",
) -> FlowRevision:
    """Make `text` the running version of flow `slug` on every instance; `base`: the version it was edited from.

    Raises FlowError when it fails lint (nothing is written), Conflict when the flow changed since `base`
    (the file here, or a version published on another instance and not yet written here). Records the
    revision and the audit line and drops the author's draft in one transaction, then writes the file and
    reloads: an instance that dies in between, or whose write fails, writes it at its next tick (`Sync`).
    """
    _, problems = await asyncio.to_thread(lint, library, slug, text, checks)
    if problems:
        raise FlowError(problems)
    path = flow_path(library, slug)
    on_disk = file_text(library, slug)
    if version_of(on_disk) != base:
        raise Conflict(on_disk, ON_DISK if on_disk is not None else "the file was removed")
    version = flow_version(text)

    async def record(session: AsyncSession) -> FlowRevision:
        if session.bind.dialect.name == "postgresql":  # two publishes of one flow at once: the second sees the first
            await session.exec(sql("SELECT pg_advisory_xact_lock(hashtext(:key))").bindparams(key=f"flow:{slug}"))
        newest = await latest(session, slug)
        if newest is not None and newest.action != "file" and newest.version != base and newest.base == base:
            raise Conflict(newest.source, f"{newest.author}, {newest.created_at:%Y-%m-%d %H:%M} UTC")
        if newest is None and on_disk is not None:  # the version it replaces, so that one can be rolled back to
            session.add(FlowRevision(flow_slug=slug, version=base, source=on_disk, action="file", author=ON_DISK,
                                     created_at=now))  # fmt: skip
        row = FlowRevision(
            flow_slug=slug, version=version, base=base, source=text, action=action, author=author, created_at=now
        )
        session.add(row)
        await audit(session, now, author, f"flow.{action}", slug, version=version, base=base)
        if operator_id is not None:  # published: the author's draft is done
            mine = (FlowDraft.flow_slug == slug, FlowDraft.operator_id == operator_id)
            await session.exec(delete(FlowDraft).where(*mine))
        await session.flush()
        return row

    row = await transaction(sessions, record)
    await asyncio.to_thread(write_file, path, text)
    await asyncio.to_thread(library.reload)
    log.info("flow %s version %s published by %s (was %s)", slug, version, author, base)
    return row


@dataclass
class Sync:
    """One instance's part in keeping its flow files and the revisions in step (run at the reload tick)."""

    sessions: Sessions
    library: FlowLibrary
    now: Callable[[], datetime]  # the app's clock
    seen: int = 0  # the newest revision id looked at
    recorded: dict[str, str] = field(default_factory=dict)  # slug: the loaded version known to have a revision

    async def tick(self) -> None:
        """Write what other instances published, reload the files, record versions first seen on disk.

        Files are reloaded even when the database cannot be reached: an edit on disk still runs.
        """
        try:
            await self.write_published()
        except (*UNAVAILABLE, DBAPIError, OSError) as exc:
            log.warning("flows published on other instances not looked for: %s", exc)
        await asyncio.to_thread(self.library.reload)
        try:
            await self.record_loaded()
        except (*UNAVAILABLE, DBAPIError, OSError) as exc:
            log.warning("flow versions seen on disk not recorded yet: %s", exc)

    async def write_published(self) -> int:
        """Write into this instance's files the newest published revision of each flow whose file is still at
        the version it replaced; how many were written."""
        async with self.sessions() as session:
            newest = (await session.exec(select(func.max(FlowRevision.id)))).one()
            if newest is None or newest <= self.seen:
                return 0
            heads = (
                select(func.max(FlowRevision.id))
                .where(FlowRevision.id > self.seen)
                .group_by(FlowRevision.flow_slug)
                .scalar_subquery()
            )
            rows = (await session.exec(select(FlowRevision).where(col(FlowRevision.id).in_(heads)))).all()
        written = 0
        for row in rows:
            if row.action == "file":
                continue
            on_disk = file_text(self.library, row.flow_slug)
            if version_of(on_disk) == row.version:
                continue
            if version_of(on_disk) != row.base:
                log.warning(
                    "flow %s: version %s was published by %s, but this instance's file is at %s, not %s: kept the file",
                    row.flow_slug, row.version, row.author, version_of(on_disk), row.base,
                )  # fmt: skip
                continue
            await asyncio.to_thread(write_file, flow_path(self.library, row.flow_slug), row.source)
            log.info("flow %s version %s (published by %s) written to its file", row.flow_slug, row.version, row.author)
            written += 1
        self.seen = newest
        return written

    async def record_loaded(self) -> int:
        """Record each loaded flow version no revision knows yet (edited on disk); how many."""
        fresh = {slug: spec for slug, spec in self.library.flows.items() if self.recorded.get(slug) != spec.version}
        if not fresh:
            return 0

        async def record(session: AsyncSession) -> int:
            count = 0
            for slug, spec in fresh.items():
                newest = await latest(session, slug)
                if newest is not None and newest.version == spec.version:
                    continue
                base = newest.version if newest is not None else None
                session.add(
                    FlowRevision(
                        flow_slug=slug, version=spec.version, base=base, source=spec.source, action="file",
                        author=ON_DISK, created_at=self.now(),
                    )
                )  # fmt: skip
                count += 1
            return count

        count = await transaction(self.sessions, record)
        self.recorded.update({slug: spec.version for slug, spec in fresh.items()})
        return count
