"""`kindling lint` and `kindling preview`: what marketers run on their flow files."""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

from bot.config import Settings
from bot.intake.messages import MessageError, SystemMessages
from bot.mail.compose import Composer, Letter
from flows.answers import answer_files, read_answers
from flows.clock import SystemClock
from flows.engine import context as lead_context_for
from flows.lint import check_flow, flow_files, lint_paths, templates_root_of
from flows.locales import Locales, available
from flows.preview import preview, preview_text
from flows.reach import EmailPolicy
from flows.render import Rendered
from flows.samples import sample_event, sample_lead
from flows.simulate import happenings, simulate
from flows.spec import FlowSpec
from flows.whatsapp_rules import by_name
from storage.db import create_engine, sessionmaker
from storage.leads import get_lead


def lint(settings: Settings, files: list[Path]) -> int:
    """Print `file:line: message` for every problem; 1 if there was any.

    Without files: every flow and every quick answers file (`_answers/*.toml`) of the templates folder."""
    answers = [path for path in files if path.suffix == ".toml"]
    targets = [path for path in files if path.suffix != ".toml"] if files else flow_files(settings.templates)
    meta = settings.meta
    whatsapp = by_name(meta.whatsapp_templates) if meta.whatsapp_templates or not meta.whatsapp_missing() else None
    messenger = not meta.messenger_missing()  # steps that may go there: their quick replies checked
    problems: list = lint_paths(
        targets, None if files else settings.templates, settings.stages.order, whatsapp, messenger
    )
    if not files:  # and the answers and the bot's own texts: a broken one stops start-up, a missing translation warns
        answers = answer_files(settings.templates)
        try:
            for warning in SystemMessages(settings.templates, settings.default_locale).check():
                print(f"warning: {warning}", file=sys.stderr)
        except MessageError as exc:
            problems.append(exc)
    for path in answers:
        problems.extend(read_answers(path, path.parent.parent, settings.handoff.buttons)[1])  # <templates>/_answers/
    for problem in problems:
        print(problem)
    checked = f"{len(targets)} flow file(s)" + (f" and {len(answers)} answers file(s)" if answers else "")
    print(f"{checked} checked, {len(problems)} problem(s)", file=sys.stderr)
    return 1 if problems else 0


async def preview_flow(
    settings: Settings, slug: str, step: str | None, lead_id: int | None, sample: Path | None, locale: str | None = None
) -> int:
    """Print each step as the lead would see it, with when it would go out."""
    spec = _load_flow(settings, slug)
    if spec is None:
        return 1
    if step is not None and step not in spec.step_names:
        print(f"flow {slug!r} has no step {step!r} (steps: {', '.join(spec.step_names)})", file=sys.stderr)
        return 1
    now = SystemClock().now()
    try:
        lead = await _lead(settings, lead_id, now) if lead_id is not None else sample_lead(_read_sample(sample))
    except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:  # JSON errors are ValueErrors
        print(f"sample lead {sample}: {exc}", file=sys.stderr)
        return 2
    language = _language(settings, spec, lead, locale)
    ctx = {"lead": lead, "event": sample_event(spec.trigger), "now": now,
           "flow": {"slug": spec.slug, "name": spec.name}, "step": {"name": step or ""}}  # fmt: skip
    composer = Composer(settings.templates, SystemMessages(settings.templates, settings.default_locale))

    def html(rendered: Rendered) -> str:  # the email layout as sent; each lead's unsubscribe link has its own token
        unsubscribe = f"{settings.public_url or 'https://kindling.example'}/email/unsubscribe/TOKEN"
        letter = Letter(sender="", to="", subject=rendered.subject or spec.name, now=now, key="preview",
                        unsubscribe_url=unsubscribe, locale=language)  # fmt: skip
        return composer.html(letter, rendered.text)

    print(preview_text(preview(spec, ctx, now, step, locale=language), lead.get("timezone"), html=html))
    return 0


def _language(settings: Settings, spec: FlowSpec, lead: dict, locale: str | None) -> str:
    """The language the lead gets, as the server picks it: `--locale` (which becomes its locale) or its own."""
    if locale:
        lead["locale"] = locale
    root = templates_root_of(spec.path)
    return Locales(available(root), settings.default_locale).of(lead.get("locale"))


def _load_flow(settings: Settings, flow: str) -> FlowSpec | None:
    """The flow by slug or by file (`templates/flows/x.j2`), or None after printing why it cannot be used, once."""
    given = Path(flow)
    if given.suffix == ".j2" or given.parent != Path("."):
        path, root = given, templates_root_of(given)
    else:
        path, root = settings.templates / "flows" / f"{flow}.j2", settings.templates
    spec, problems = check_flow(path, root, settings.stages.order) if path.is_file() else (None, [])
    for problem in problems:
        print(problem, file=sys.stderr)
    if spec is None:
        print(f"no usable flow {flow!r} in {path.parent}", file=sys.stderr)
    return spec


async def _lead(settings: Settings, lead_id: int, now) -> dict:  # type: ignore[no-untyped-def]
    database = create_engine(settings.database_url)
    try:
        async with sessionmaker(database)() as session:
            return lead_context_for(await get_lead(session, lead_id), None, now)["lead"]
    finally:
        await database.dispose()


def _read_sample(path: Path | None) -> dict | None:
    """A sample lead from a JSON or TOML file of lead fields."""
    if path is None:
        return None
    text = path.read_text(encoding="utf-8")
    return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)


def simulate_flow(
    settings: Settings, slug: str, days: int, events: Path | None, sample: Path | None, locale: str | None = None
) -> int:
    """Print the timeline a hypothetical lead would get; touches no database and sends nothing."""
    spec = _load_flow(settings, slug)
    if spec is None:
        return 1
    now = SystemClock().now()
    try:
        overrides = _read_sample(sample) or {}
        consent = overrides.pop("email_consent", True)  # not a lead field: whether the made-up lead gave consent
        if spec.trigger.stage and "stage" not in overrides:  # a stage or stuck flow's lead is in that stage
            overrides["stage"] = spec.trigger.stage
        lead = sample_lead(overrides)
        timeline = happenings(json.loads(events.read_text(encoding="utf-8")) if events else [], now)
    except (OSError, ValueError, tomllib.TOMLDecodeError, AttributeError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    ctx = {"lead": lead, "event": sample_event(spec.trigger), "now": now,
           "flow": {"slug": spec.slug, "name": spec.name}, "step": {"name": ""}}  # fmt: skip
    print(f"{spec.name}: a lead in {lead.get('timezone') or settings.policy.default_timezone}, enrolled now")
    email = EmailPolicy(settings.email.disabled() is None, settings.email.require_consent)
    language = _language(settings, spec, lead, locale)
    lines = simulate(
        spec, ctx, now, days, timeline, settings.policy, settings.stages, email, consent is not False, language
    )
    print("\n".join(lines))
    return 0
